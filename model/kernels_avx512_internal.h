// AVX-512 helpers shared by the translation units built with AVX-512 flags (kernels_avx512.cpp,
// kernels_bf16.cpp, kernels_packed_avx512.cpp, kernels_packed_bf16.cpp); include it from nowhere
// else. Internal linkage on purpose: each unit gets its own copy compiled with its own flags, so the
// linker never swaps one unit's version for another's.
#pragma once

#include <immintrin.h>

#include <cstddef>

namespace zr::kernels::detail {
namespace {

// Same tree as hsum16 in kernels.cpp: (i, i+8), then (i, i+4), (i, i+2), (0, 1).
inline float hsum16(__m512 v) {
  __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

// A packed tile's accumulators [MR][NP] (NP panels of 16 columns, rows ldy apart in y): +0 when
// `first`, else the exact f32 partial sums in y; the last panel's columns past N masked by `tail`.
template <int MR, int NP>
inline void load_tile_acc(__m512 (&acc)[MR][NP], const float* y, int ldy, __mmask16 tail, bool first) {
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int p = 0; p < NP; ++p) {
      const float* yp = y + static_cast<size_t>(i) * ldy + 16 * p;
      acc[i][p] = first ? _mm512_setzero_ps() : (p == NP - 1 ? _mm512_maskz_loadu_ps(tail, yp) : _mm512_loadu_ps(yp));
    }
}

template <int MR, int NP>
inline void store_tile_acc(const __m512 (&acc)[MR][NP], float* y, int ldy, __mmask16 tail) {
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int p = 0; p < NP; ++p) {
      float* yp = y + static_cast<size_t>(i) * ldy + 16 * p;
      if (p == NP - 1) _mm512_mask_storeu_ps(yp, tail, acc[i][p]);
      else _mm512_storeu_ps(yp, acc[i][p]);
    }
}

}  // namespace
}  // namespace zr::kernels::detail
