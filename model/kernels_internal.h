// Private to model/kernels*.cpp: the two implementations of the invariant matmul.
#pragma once

#include <cstddef>
#include <cstdint>

#include "model/dtype.h"

namespace zr::kernels::detail {

constexpr int kLanes = 16;  // partial sums per dot product (one AVX-512 register of f32)

// Rows [0, M) x columns [n0, n1) of y = x * w^T. Same bits in both implementations.
void matmul_portable(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n0, int n1, float* y,
                     int ldy);
void matmul_avx512(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n0, int n1, float* y,
                   int ldy);
float dot_avx512(const float* a, const float* b, int n);
// Compute::bf16: xb (M, ldxb) bf16 rows, zero-padded to a multiple of 32; w bf16 or f32 (rounded
// to bf16 as it is read). Same bits in both implementations where the CPU's vdpbf16ps follows
// Intel's definition (kernels.h).
void matmul_bf16_portable(const uint16_t* xb, int M, int K, int ldxb, const void* w, DType wdtype, int n0, int n1,
                          float* y, int ldy);
void matmul_bf16_avx512(const uint16_t* xb, int M, int K, int ldxb, const void* w, DType wdtype, int n0, int n1,
                        float* y, int ldy);
void softmax_avx512(float* x, int n);
void silu_mul_avx512(const float* gate, const float* up, int n, float* out);
void log_softmax_avx512(const float* x, int n, float* out);
void exp_avx512(const float* x, int n, float* out);  // x <= expc::kMax

// The constants of the softmax's exp (kernels.h), shared by both paths.
namespace expc {
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
constexpr float kMin = -87.0f;  // below: 0
constexpr float kMax = 88.0f;   // silu clamps exp's argument here (exp(88) is finite, 1.65e38)
}  // namespace expc
void attention_scores_heads_avx512(const float* q, int hd, int heads, const float* const* kt, int nblk, int bs, int n,
                                   float scale, float* scores, size_t score_stride);
void attention_values_heads_avx512(const float* p, size_t p_stride, int heads, const float* const* v, int nblk, int bs,
                                   int v_stride, int n, int hd, float* out, size_t out_stride, bool accumulate);
// A bf16 KV cache: the f32 kernels on the exactly widened elements (same bits as widening first).
void attention_scores_heads_avx512(const float* q, int hd, int heads, const uint16_t* const* kt, int nblk, int bs,
                                   int n, float scale, float* scores, size_t score_stride);
void attention_values_heads_avx512(const float* p, size_t p_stride, int heads, const uint16_t* const* v, int nblk,
                                   int bs, int v_stride, int n, int hd, float* out, size_t out_stride, bool accumulate);

}  // namespace zr::kernels::detail
