// The other kernels of model/kernels.h (tests/model/test_kernels.cpp holds the matmul's batch
// invariance in both compute modes) through the public API: each result against a float64 loop
// written here from the header's definition, matmul_group and the column-range/strided form of the
// f32 matmul bitwise, the ISA paths bitwise. K is not a multiple of 16, so a padded chunk is covered.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "model/dtype.h"
#include "model/kernels.h"
#include "model/rope.h"
#include "model/thread_pool.h"
#include "model/weights.h"

namespace zr {
namespace {

std::vector<float> random_vec(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// A Linear weight (rows, cols) of f32 or bf16 and its values as float (what the kernel must see).
struct TestWeight {
  Weight w;
  std::vector<float> values;  // (rows, cols), the bf16 ones already rounded
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
};
TestWeight make_weight(int rows, int cols, DType dt, uint32_t seed) {
  TestWeight t;
  t.values = random_vec(static_cast<size_t>(rows) * cols, seed);
  t.w.dtype = dt;
  t.w.shape = {rows, cols};
  if (dt == DType::bf16) {
    for (auto& v : t.values) t.bf16.push_back(f32_to_bf16(v));
    for (size_t i = 0; i < t.values.size(); ++i) t.values[i] = bf16_to_f32(t.bf16[i]);
    t.w.data = t.bf16.data();
  } else {
    t.f32 = t.values;
    t.w.data = t.f32.data();
  }
  return t;
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

class Kernels : public ::testing::TestWithParam<DType> {};

TEST_P(Kernels, MatmulMatchesFloat64Loop) {
  ThreadPool pool(2);
  for (int K : {5, 16, 37, 100}) {
    const int M = 9, N = 23;
    TestWeight tw = make_weight(N, K, GetParam(), 7 + K);
    auto x = random_vec(static_cast<size_t>(M) * K, 3 + K);
    std::vector<float> y(static_cast<size_t>(M) * N, NAN);
    kernels::matmul(x.data(), M, tw.w, y.data(), &pool);
    for (int m = 0; m < M; ++m) {
      for (int n = 0; n < N; ++n) {
        double ref = 0, mag = 0;
        for (int k = 0; k < K; ++k) {
          ref += double(x[m * K + k]) * tw.values[n * K + k];
          mag += std::abs(double(x[m * K + k]) * tw.values[n * K + k]);
        }
        // f32 accumulation: the error is bounded by a few K * eps of the sum of magnitudes.
        EXPECT_NEAR(y[m * N + n], ref, 4.0 * K * 6e-8 * mag + 1e-30) << "K=" << K << " m=" << m << " n=" << n;
      }
    }
  }
}

TEST_P(Kernels, MatmulRowBitsDoNotDependOnRowCountThreadsOrColumnRange) {
  const int K = 77, N = 50, Mmax = 37;
  TestWeight tw = make_weight(N, K, GetParam(), 11);
  auto x = random_vec(static_cast<size_t>(Mmax) * K, 12);
  ThreadPool pool(2);
  std::vector<float> full(static_cast<size_t>(Mmax) * N);
  kernels::matmul(x.data(), Mmax, tw.w, full.data(), &pool);
  for (int M : {1, 2, 3, 4, 5, 8, 16, 17, 31}) {
    std::vector<float> y(static_cast<size_t>(M) * N);
    kernels::matmul(x.data(), M, tw.w, y.data(), M % 2 ? nullptr : &pool);
    EXPECT_TRUE(same_bits(y.data(), full.data(), y.size())) << "first " << M << " rows";
  }
  for (int r = 0; r < Mmax; r += 5) {  // each row alone, from inside the batch
    std::vector<float> y(N);
    kernels::matmul(x.data() + static_cast<size_t>(r) * K, 1, tw.w, y.data(), &pool);
    EXPECT_TRUE(same_bits(y.data(), full.data() + static_cast<size_t>(r) * N, N)) << "row " << r;
  }
  // Columns in two ranges (a TP shard's way), into a strided y.
  const int ldy = N + 3;
  std::vector<float> y(static_cast<size_t>(Mmax) * ldy);
  kernels::matmul(x.data(), Mmax, K, K, tw.w.data, tw.w.dtype, 0, 19, y.data(), ldy, &pool);
  kernels::matmul(x.data(), Mmax, K, K, tw.w.data, tw.w.dtype, 19, N, y.data(), ldy, nullptr);
  for (int m = 0; m < Mmax; ++m)
    EXPECT_TRUE(same_bits(y.data() + static_cast<size_t>(m) * ldy, full.data() + static_cast<size_t>(m) * N, N))
        << "row " << m;
}

TEST_P(Kernels, MatmulGroupGivesTheBitsOfSeparateMatmuls) {
  const int K = 45, M = 6;
  TestWeight a = make_weight(20, K, GetParam(), 21), b = make_weight(33, K, GetParam(), 22);
  auto x = random_vec(static_cast<size_t>(M) * K, 23);
  ThreadPool pool(2);
  std::vector<float> ya(M * 20), yb(M * 33), ga(M * 20), gb(M * 33);
  kernels::matmul(x.data(), M, a.w, ya.data(), nullptr);
  kernels::matmul(x.data(), M, b.w, yb.data(), nullptr);
  kernels::matmul_group(x.data(), M, 0, {{&a.w, ga.data()}, {&b.w, gb.data()}}, &pool);
  EXPECT_TRUE(same_bits(ya.data(), ga.data(), ya.size()));
  EXPECT_TRUE(same_bits(yb.data(), gb.data(), yb.size()));
}

TEST_P(Kernels, PortableAndAvx512PathsGiveTheSameBits) {
  if (!kernels::using_avx512()) GTEST_SKIP() << "no AVX-512 on this CPU: only the portable path runs";
  const int K = 70, N = 40, M = 13;
  TestWeight tw = make_weight(N, K, GetParam(), 31);
  auto x = random_vec(static_cast<size_t>(M) * K, 32, 4.0f);
  auto run = [&] {
    std::vector<float> out(static_cast<size_t>(M) * N + 3 * K);
    kernels::matmul(x.data(), M, tw.w, out.data(), nullptr);
    float* tail = out.data() + static_cast<size_t>(M) * N;
    kernels::softmax(std::copy(x.begin(), x.begin() + K, tail) - K, K);
    kernels::log_softmax(x.data() + K, K, tail + K);
    kernels::rmsnorm(x.data() + 2 * K, tw.values.data(), K, 1e-5f, tail + 2 * K);
    return out;
  };
  auto fast = run();
  kernels::force_portable(true);
  auto portable = run();
  kernels::force_portable(false);
  EXPECT_TRUE(same_bits(fast.data(), portable.data(), fast.size()));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Kernels, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& p) { return std::string(dtype_name(p.param)); });

TEST(KernelsElementwise, DotMatchesFloat64) {
  for (int n : {1, 15, 16, 17, 250}) {
    auto a = random_vec(n, 40 + n), b = random_vec(n, 41 + n);
    double ref = 0, mag = 0;
    for (int i = 0; i < n; ++i) ref += double(a[i]) * b[i], mag += std::abs(double(a[i]) * b[i]);
    EXPECT_NEAR(kernels::dot(a.data(), b.data(), n), ref, 4.0 * n * 6e-8 * mag + 1e-30) << n;
  }
}

TEST(KernelsElementwise, RmsnormMatchesDefinitionAndWorksInPlace) {
  const int d = 67;
  const float eps = 1e-5f;
  auto x = random_vec(d, 50, 3.0f), w = random_vec(d, 51);
  double ms = 0;
  for (float v : x) ms += double(v) * v;
  const double inv = 1.0 / std::sqrt(ms / d + eps);
  std::vector<float> out(d);
  kernels::rmsnorm(x.data(), w.data(), d, eps, out.data());
  for (int i = 0; i < d; ++i) EXPECT_NEAR(out[i], x[i] * inv * w[i], 1e-6 * std::abs(x[i] * inv * w[i]) + 1e-7) << i;
  kernels::rmsnorm(x.data(), w.data(), d, eps, x.data());
  EXPECT_TRUE(same_bits(x.data(), out.data(), d));
}

// softmax and exp(log_softmax) against a double reference, including values far from 0 (the max
// must be subtracted) and below the exp floor.
TEST(KernelsElementwise, SoftmaxAndLogSoftmaxMatchFloat64) {
  for (float offset : {0.0f, 500.0f, -300.0f}) {
    const int n = 41;
    auto x = random_vec(n, 60, 8.0f);
    for (auto& v : x) v += offset;
    x[3] = offset - 200.0f;  // exp underflows to 0 in f32
    double mx = x[0], sum = 0;
    for (float v : x) mx = std::max(mx, double(v));
    for (float v : x) sum += std::exp(v - mx);
    std::vector<float> p = x, lp(n);
    kernels::softmax(p.data(), n);
    kernels::log_softmax(x.data(), n, lp.data());
    double total = 0;
    for (int i = 0; i < n; ++i) {
      const double ref_p = std::exp(x[i] - mx) / sum, ref_lp = (x[i] - mx) - std::log(sum);
      EXPECT_NEAR(p[i], ref_p, 1e-6 * ref_p + 1e-30) << "offset " << offset << " i " << i;
      EXPECT_NEAR(lp[i], ref_lp, 2e-6 * std::abs(ref_lp) + 2e-6) << "offset " << offset << " i " << i;
      total += p[i];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
    EXPECT_EQ(p[3], 0.0f);
    std::vector<float> in_place = x;
    kernels::log_softmax(in_place.data(), n, in_place.data());
    EXPECT_TRUE(same_bits(in_place.data(), lp.data(), n));
  }
}

TEST(KernelsElementwise, ExpAndSiluMulMatchFloat64) {
  const int n = 37;
  auto x = random_vec(n, 70, 20.0f), up = random_vec(n, 71);
  x[0] = -100.0f;  // below the floor: 0
  std::vector<float> e(n), s(n);
  kernels::exp(x.data(), n, e.data());
  kernels::silu_mul(x.data(), up.data(), n, s.data());
  EXPECT_EQ(e[0], 0.0f);
  for (int i = 1; i < n; ++i) {
    const double ref = std::exp(double(x[i]));
    EXPECT_NEAR(e[i], ref, 3e-7 * ref) << i;  // within 2 ulp
  }
  for (int i = 0; i < n; ++i) {
    const double ref = x[i] / (1.0 + std::exp(-double(x[i]))) * up[i];
    EXPECT_NEAR(s[i], ref, 1e-6 * std::abs(ref) + 1e-30) << i;
  }
}

// rotate_half: element i pairs with i + head_dim / 2 (not i ^ 1, the interleaved convention).
TEST(KernelsRope, RotateHalfMatchesDefinition) {
  const int hd = 16, half = hd / 2;
  auto v = random_vec(hd, 80), c = random_vec(half, 81), s = random_vec(half, 82);
  std::vector<float> out = v;
  kernels::rope_rotate(out.data(), hd, c.data(), s.data());
  for (int i = 0; i < half; ++i) {
    EXPECT_NEAR(out[i], double(v[i]) * c[i] - double(v[i + half]) * s[i], 1e-6) << i;
    EXPECT_NEAR(out[i + half], double(v[i + half]) * c[i] + double(v[i]) * s[i], 1e-6) << i;
  }
}

// With the model's table: position 0 is the identity, norms are kept, and q.k after RoPE depends
// only on the distance between the two positions.
TEST(KernelsRope, TableRotationIsRelative) {
  ModelConfig cfg;
  cfg.head_dim = 32;
  cfg.rope_theta = 10000.0f;
  RopeTable t = make_rope_table(cfg, 64);
  auto q = random_vec(cfg.head_dim, 90), k = random_vec(cfg.head_dim, 91);
  auto rotated = [&](std::vector<float> v, int pos) {
    kernels::rope_rotate(v.data(), cfg.head_dim, t.cos_row(pos), t.sin_row(pos));
    return v;
  };
  EXPECT_TRUE(same_bits(rotated(q, 0).data(), q.data(), q.size()));
  auto norm = [](const std::vector<float>& v) {
    double s = 0;
    for (float x : v) s += double(x) * x;
    return s;
  };
  EXPECT_NEAR(norm(rotated(q, 37)), norm(q), 1e-5 * norm(q));
  auto qk = [&](int m, int n) {
    auto a = rotated(q, m), b = rotated(k, n);
    double s = 0;
    for (int i = 0; i < cfg.head_dim; ++i) s += double(a[i]) * b[i];
    return s;
  };
  for (auto [m, n] : {std::pair{5, 2}, {40, 37}, {63, 60}}) EXPECT_NEAR(qk(m, n), qk(3, 0), 1e-4) << m << "," << n;
  EXPECT_GT(std::abs(qk(5, 2) - qk(9, 2)), 1e-3);  // a different distance gives a different score
}

// Paged attention against plain loops over the documented layouts (keys transposed in a block).
TEST(KernelsAttention, ScoresAndValuesMatchFloat64OverBlocks) {
  const int hd = 20, bs = 16, n = 37, nblk = 3, v_stride = hd;
  auto q = random_vec(hd, 100), p = random_vec(n, 101);
  std::vector<std::vector<float>> kt(nblk, std::vector<float>(hd * bs)), vb(nblk, std::vector<float>(bs * v_stride));
  std::vector<std::vector<double>> key(n, std::vector<double>(hd)), val(n, std::vector<double>(hd));
  std::mt19937 rng(102);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < hd; ++i) {
      key[j][i] = kt[j / bs][i * bs + j % bs] = u(rng);
      val[j][i] = vb[j / bs][(j % bs) * v_stride + i] = u(rng);
    }
  std::vector<const float*> kp, vp;
  for (int b = 0; b < nblk; ++b) kp.push_back(kt[b].data()), vp.push_back(vb[b].data());
  std::vector<float> scores(n), out(hd), split(hd);
  kernels::attention_scores(q.data(), hd, kp.data(), bs, n, 0.25f, scores.data());
  for (int j = 0; j < n; ++j) {
    double ref = 0;
    for (int i = 0; i < hd; ++i) ref += q[i] * key[j][i];
    EXPECT_NEAR(scores[j], ref * 0.25, 1e-5) << j;
  }
  kernels::attention_values(p.data(), vp.data(), bs, v_stride, n, hd, out.data());
  for (int i = 0; i < hd; ++i) {
    double ref = 0;
    for (int j = 0; j < n; ++j) ref += p[j] * val[j][i];
    EXPECT_NEAR(out[i], ref, 1e-5) << i;
  }
  // Positions split into a first block and the rest, continued with accumulate: the same bits.
  kernels::attention_values(p.data(), vp.data(), bs, v_stride, bs, hd, split.data());
  kernels::attention_values(p.data() + bs, vp.data() + 1, bs, v_stride, n - bs, hd, split.data(), true);
  EXPECT_TRUE(same_bits(split.data(), out.data(), hd));
}

}  // namespace
}  // namespace zr
