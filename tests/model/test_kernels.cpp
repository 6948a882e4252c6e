// The batch-invariant matmul in both compute modes: every row of a product is bitwise the same
// whatever the batch size M (1..N), the column slice, the thread count and the ISA path, and it is
// close to a double-precision reference (the bf16 mode within its stated tolerance).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "model/kernels.h"
#include "tests/model/matmul_problem.h"

namespace zr {
namespace {

using kernels::Compute;

using testing::make_problem;
using testing::Problem;

// Rows [0, M) of x times every column, on `pool` (nullptr: one thread).
std::vector<float> run(const Problem& p, int M, DType dt, Compute c, ThreadPool* pool, int row0 = 0) {
  std::vector<float> y(static_cast<size_t>(M) * p.N, -7.0f);
  const void* w = dt == DType::f32 ? static_cast<const void*>(p.w.data()) : p.wb.data();
  kernels::matmul(&p.x[static_cast<size_t>(row0) * p.K], M, p.K, p.K, w, dt, 0, p.N, y.data(), p.N, pool, c);
  return y;
}

// Every batch size 1..maxM gives each row the bits it has in the largest batch: rows [0, M) of a
// batch of M are compared with the same rows of the full batch, and row r alone (M = 1, starting at
// row r) with row r of the full batch.
void check_batch_invariance(DType dt, Compute c) {
  ThreadPool pool(2);
  for (int K : {8, 61, 100, 768, 1000, 2100}) {
    const Problem p = make_problem(K, 157, 70, 11 + K);
    const std::vector<float> full = run(p, p.maxM, dt, c, &pool);
    for (int M = 1; M <= p.maxM; ++M) {
      const std::vector<float> part = run(p, M, dt, c, M % 2 ? &pool : nullptr);
      ASSERT_EQ(0, std::memcmp(part.data(), full.data(), part.size() * 4)) << "K=" << K << " M=" << M;
    }
    for (int r = 0; r < p.maxM; r += 7) {
      const std::vector<float> one = run(p, 1, dt, c, &pool, r);
      ASSERT_EQ(0, std::memcmp(one.data(), &full[static_cast<size_t>(r) * p.N], p.N * 4)) << "K=" << K << " r=" << r;
    }
  }
}

TEST(MatmulKernel, F32RowsBitwiseIndependentOfBatchSize) {
  check_batch_invariance(DType::f32, Compute::f32);
  check_batch_invariance(DType::bf16, Compute::f32);
}

TEST(MatmulKernel, Bf16RowsBitwiseIndependentOfBatchSize) {
  check_batch_invariance(DType::bf16, Compute::bf16);
  check_batch_invariance(DType::f32, Compute::bf16);
}

// bf16 mode: f32 weights rounded as they are read give the bits of weights rounded beforehand,
// the portable path gives the bits of vdpbf16ps (Intel's definition), and the result is within
// the stated tolerance of the float64 product of the bf16-rounded inputs (only the f32
// accumulation differs) and within bf16 rounding of the exact f32 product.
TEST(MatmulKernel, Bf16ModeMatchesPortableAndReference) {
  ThreadPool pool(2);
  for (int K : {8, 33, 64, 768, 2000}) {
    const Problem p = make_problem(K, 61, 13, 5 + K);
    const std::vector<float> a = run(p, p.maxM, DType::bf16, Compute::bf16, &pool);
    const std::vector<float> b = run(p, p.maxM, DType::f32, Compute::bf16, &pool);
    ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << "K=" << K;
    kernels::force_portable(true);
    const std::vector<float> port = run(p, p.maxM, DType::bf16, Compute::bf16, nullptr);
    kernels::force_portable(false);
    if (kernels::using_avx512_bf16()) {
      ASSERT_EQ(0, std::memcmp(a.data(), port.data(), a.size() * 4)) << "K=" << K;
    }
    for (int m = 0; m < p.maxM; ++m) {
      for (int n = 0; n < p.N; ++n) {
        double rounded = 0, exact = 0, mag = 0;
        for (int k = 0; k < K; ++k) {
          const double xv = p.x[static_cast<size_t>(m) * K + k], wv = p.w[static_cast<size_t>(n) * K + k];
          rounded += static_cast<double>(bf16_to_f32(f32_to_bf16(static_cast<float>(xv)))) *
                     bf16_to_f32(p.wb[static_cast<size_t>(n) * K + k]);
          exact += xv * wv;
          mag += std::fabs(xv * wv);
        }
        const float got = a[static_cast<size_t>(m) * p.N + n];
        // f32 accumulation of K products: |error| <= ~K/16 * 2^-24 * sum|products| (16 lanes).
        ASSERT_NEAR(got, rounded, 1e-6 * mag + 1e-6) << "K=" << K << " m=" << m << " n=" << n;
        // both inputs rounded to bf16 (8 bits): relative 2^-8 per product at most.
        ASSERT_NEAR(got, exact, 2 * std::ldexp(1.0, -8) * mag + 1e-6) << "K=" << K << " m=" << m << " n=" << n;
      }
    }
  }
}

}  // namespace
}  // namespace zr
