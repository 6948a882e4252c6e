// The packed matmul (model/kernels_packed.h) in its three formats: every row is bitwise the same
// whatever the batch size M, the thread count, the K blocking (M above one row tile) and the ISA
// path; a group call gives the bits of separate calls; and the result is within the sequential
// summation bound of a double-precision product of the same (rounded) inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "model/kernels_packed.h"
#include "tests/model/matmul_problem.h"

namespace zr {
namespace {

using kernels::Compute;
using kernels::PackFormat;

using testing::make_problem;
using testing::Problem;

struct Mode {
  DType dt;
  Compute c;
};
constexpr Mode kModes[] = {
    {DType::f32, Compute::f32}, {DType::bf16, Compute::f32}, {DType::bf16, Compute::bf16}, {DType::f32, Compute::bf16}};

std::shared_ptr<kernels::PackedMatrix> pack_of(const Problem& p, Mode m) {
  const void* w = m.dt == DType::f32 ? static_cast<const void*>(p.w.data()) : p.wb.data();
  return kernels::pack(w, m.dt, p.N, p.K, m.c);
}

// Rows [row0, row0 + M) of x times the pack; y rows padded past N (ldy) to catch stray writes.
std::vector<float> run(const Problem& p, const kernels::PackedMatrix& pm, int M, ThreadPool* pool, int row0 = 0) {
  const int ldy = p.N + 5;
  std::vector<float> y(static_cast<size_t>(M) * ldy, -7.0f);
  kernels::matmul_packed(&p.x[static_cast<size_t>(row0) * p.K], M, p.K, pm, y.data(), ldy, pool);
  for (int m = 0; m < M; ++m)
    for (int n = p.N; n < ldy; ++n) EXPECT_EQ(y[static_cast<size_t>(m) * ldy + n], -7.0f);
  return y;
}

TEST(PackedMatmul, PackFormatFollowsComputeMode) {
  EXPECT_EQ(kernels::pack_format(DType::f32, Compute::f32), PackFormat::f32);
  EXPECT_EQ(kernels::pack_format(DType::bf16, Compute::f32), PackFormat::bf16);
  EXPECT_EQ(kernels::pack_format(DType::f32, Compute::bf16), PackFormat::pairs);
  EXPECT_EQ(kernels::pack_format(DType::bf16, Compute::bf16), PackFormat::pairs);
}

// Every batch size 1..maxM gives each row the bits it has in the largest batch, one thread or two;
// row r alone gives row r of the full batch; the portable path gives the same bits.
TEST(PackedMatmul, RowsBitwiseIndependentOfBatchThreadsAndIsa) {
  ThreadPool pool(2);
  for (Mode mode : kModes) {
    for (int K : {8, 61, 100, 768, 1000, 2100}) {
      const Problem p = make_problem(K, 157, 70, 11 + K);
      const auto pm = pack_of(p, mode);
      const int ldy = p.N + 5;
      const std::vector<float> full = run(p, *pm, p.maxM, &pool);
      for (int M = 1; M <= p.maxM; ++M) {
        const std::vector<float> part = run(p, *pm, M, M % 2 ? &pool : nullptr);
        ASSERT_EQ(0, std::memcmp(part.data(), full.data(), part.size() * 4))
            << "K=" << K << " M=" << M << " format " << static_cast<int>(pm->format);
      }
      for (int r = 0; r < p.maxM; r += 7) {
        const std::vector<float> one = run(p, *pm, 1, &pool, r);
        ASSERT_EQ(0, std::memcmp(one.data(), &full[static_cast<size_t>(r) * ldy], p.N * 4)) << "K=" << K << " r=" << r;
      }
      kernels::force_portable(true);
      const std::vector<float> port = run(p, *pm, p.maxM, nullptr);
      kernels::force_portable(false);
      const bool bf16_isa = pm->format != PackFormat::pairs || kernels::using_avx512_bf16();
      if (kernels::using_avx512() && bf16_isa) {
        ASSERT_EQ(0, std::memcmp(port.data(), full.data(), full.size() * 4)) << "K=" << K << " portable";
      }
    }
  }
}

// The products are the sequential sums they claim to be: within K * 2^-24 * sum |x w| (the
// bound of a recursive summation with one rounding per step) of the double product of the same
// inputs (bf16-rounded in pairs format; bf16 weights in bf16 format).
TEST(PackedMatmul, CloseToDoubleReference) {
  for (Mode mode : kModes) {
    for (int K : {8, 33, 768, 2000}) {
      const Problem p = make_problem(K, 61, 13, 5 + K);
      const auto pm = pack_of(p, mode);
      const std::vector<float> y = run(p, *pm, p.maxM, nullptr);
      const bool round_x = mode.c == Compute::bf16, round_w = mode.c == Compute::bf16 || mode.dt == DType::bf16;
      for (int m = 0; m < p.maxM; ++m)
        for (int n = 0; n < p.N; ++n) {
          double ref = 0, mag = 0;
          for (int k = 0; k < K; ++k) {
            const float xf = p.x[static_cast<size_t>(m) * K + k], wf = p.w[static_cast<size_t>(n) * K + k];
            const double xv = round_x ? bf16_to_f32(f32_to_bf16(xf)) : xf;
            const double wv = round_w ? bf16_to_f32(f32_to_bf16(wf)) : wf;
            ref += xv * wv;
            mag += std::fabs(xv * wv);
          }
          const double got = y[static_cast<size_t>(m) * (p.N + 5) + n];
          ASSERT_LE(std::fabs(got - ref), K * std::ldexp(1.0, -24) * mag + 1e-30) << "K=" << K << " m=" << m;
        }
    }
  }
}

// Q/K/V-style groups: the bits of separate calls, whatever the thread count.
TEST(PackedMatmul, GroupMatchesSeparateCalls) {
  ThreadPool pool(2);
  for (Mode mode : kModes) {
    const Problem a = make_problem(300, 200, 20, 1), b = make_problem(300, 40, 20, 2);
    const auto pa = pack_of(a, mode), pb = pack_of(b, mode);
    for (int M : {1, 8, 20}) {
      std::vector<float> ya(static_cast<size_t>(M) * a.N), yb(static_cast<size_t>(M) * b.N);
      kernels::matmul_packed_group(a.x.data(), M, a.K, {{pa.get(), ya.data(), a.N}, {pb.get(), yb.data(), b.N}}, &pool);
      std::vector<float> sa(ya.size()), sb(yb.size());
      kernels::matmul_packed(a.x.data(), M, a.K, *pa, sa.data(), a.N, nullptr);
      kernels::matmul_packed(a.x.data(), M, a.K, *pb, sb.data(), b.N, nullptr);
      ASSERT_EQ(0, std::memcmp(ya.data(), sa.data(), ya.size() * 4)) << "M=" << M;
      ASSERT_EQ(0, std::memcmp(yb.data(), sb.data(), yb.size() * 4)) << "M=" << M;
    }
  }
}

// A commit repacks new weights into the pack the old ones used (Transformer::refresh_packs): the
// result must be the pack of the new weights, bit for bit, whatever the old pack held.
TEST(PackedMatmul, RepackIntoAnOldPackEqualsAFreshPack) {
  for (const Mode m : kModes) {
    const Problem old_w = make_problem(70, 100, 9, 11), new_w = make_problem(70, 100, 9, 12);
    auto fresh = pack_of(new_w, m);
    auto reused = pack_of(old_w, m);
    const void* w = m.dt == DType::f32 ? static_cast<const void*>(new_w.w.data()) : new_w.wb.data();
    kernels::repack(w, m.dt, *reused, nullptr);
    ASSERT_EQ(reused->bytes, fresh->bytes);
    EXPECT_EQ(std::memcmp(reused->storage.get(), fresh->storage.get(), fresh->bytes), 0);
    EXPECT_EQ(run(new_w, *reused, 9, nullptr), run(new_w, *fresh, 9, nullptr));
  }
}

// Every element of a pack where the header's layout puts it, zeros in the padding (columns past N,
// the pair past an odd K), whatever path packed it (the AVX-512 transpose for 32-bit elements, the
// tiled scalar loops otherwise): shapes ragged against 16, the tile (64 k) and the group (48).
TEST(PackedMatmul, PackPutsEveryElementWhereTheLayoutSays) {
  for (const Mode m : kModes)
    for (const auto& [K, N] : {std::pair{70, 100}, std::pair{71, 33}, std::pair{16, 48}, std::pair{130, 17}}) {
      SCOPED_TRACE("K=" + std::to_string(K) + " N=" + std::to_string(N));
      const Problem pr = make_problem(K, N, 1, 5);
      auto pm = pack_of(pr, m);
      for (int g = 0; g < pm->groups(); ++g) {
        const int W = pm->width(g);
        for (int k = 0; k < pm->Kp; ++k)
          for (int c = 0; c < W; ++c) {
            const int n = g * kernels::kGroup + c;
            const bool in = n < N && k < K;
            const size_t i = static_cast<size_t>(n) * K + k;
            if (pm->format == PackFormat::f32) {
              const float got = static_cast<const float*>(pm->group(g))[static_cast<size_t>(k) * W + c];
              ASSERT_EQ(got, in ? pr.w[i] : 0.0f) << "g " << g << " k " << k << " c " << c;
              continue;
            }
            const size_t at = pm->format == PackFormat::pairs ? static_cast<size_t>(k / 2) * 2 * W + 2 * c + k % 2
                                                              : static_cast<size_t>(k) * W + c;
            const uint16_t got = static_cast<const uint16_t*>(pm->group(g))[at];
            ASSERT_EQ(got, in ? pr.wb[i] : 0) << "g " << g << " k " << k << " c " << c;
          }
      }
    }
}

}  // namespace
}  // namespace zr
