// Private to model/kernels*.cpp: the two implementations of the invariant matmul.
#pragma once

#include <cstddef>

#include "model/dtype.h"

namespace zr::kernels::detail {

constexpr int kLanes = 16;  // partial sums per dot product (one AVX-512 register of f32)

// Rows [0, M) x columns [n0, n1) of y = x * w^T. Same bits in both implementations.
void matmul_portable(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n0,
                     int n1, float* y, int ldy);
void matmul_avx512(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n0,
                   int n1, float* y, int ldy);
float dot_avx512(const float* a, const float* b, int n);
void attention_scores_avx512(const float* q, int hd, const float* const* kt_blocks, int bs, int n, float scale,
                             float* scores);
void attention_scores_heads_avx512(const float* q, int hd, int heads, const float* const* kt, int bs, int nb,
                                   float scale, float* scores, size_t score_stride);
void attention_values_avx512(const float* p, const float* const* v_blocks, int bs, int v_stride, int n, int hd,
                             float* out, bool accumulate);

}  // namespace zr::kernels::detail
