// AVX-512 packing (model/kernels_packed.h): the transpose of 32-bit elements a pack is made of,
// 16 x 16 at a time in registers. Compiled with AVX-512 flags; only called after a CPU check.
#include <immintrin.h>

#include <algorithm>

#include "model/kernels_packed.h"

namespace zr::kernels::detail {

namespace {

// The 16 x 16 transpose of r[0..15] (rows) in place: r[i] lane j becomes the old r[j] lane i.
// Pairs (unpack ps), then quads (unpack pd), then 128-bit lanes (two shuffle_f32x4 rounds).
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  auto lo = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  auto hi = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  for (int i = 0; i < 16; i += 4) {
    r[i] = lo(t[i], t[i + 2]);
    r[i + 1] = hi(t[i], t[i + 2]);
    r[i + 2] = lo(t[i + 1], t[i + 3]);
    r[i + 3] = hi(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
}

}  // namespace

void pack_transpose32_avx512(const uint32_t* w, size_t ld, int ncols, int kn, uint32_t* dst, int W) {
  __m512 r[16];
  for (int k0 = 0; k0 < kn; k0 += 16) {
    const int kb = std::min(16, kn - k0);
    const __mmask16 m = static_cast<__mmask16>((1u << kb) - 1);
    for (int c0 = 0; c0 < W; c0 += 16) {
      for (int i = 0; i < 16; ++i)
        r[i] =
            c0 + i < ncols ? _mm512_maskz_loadu_ps(m, w + static_cast<size_t>(c0 + i) * ld + k0) : _mm512_setzero_ps();
      transpose16(r);
      for (int k = 0; k < kb; ++k) _mm512_storeu_ps(dst + static_cast<size_t>(k0 + k) * W + c0, r[k]);
    }
  }
}

}  // namespace zr::kernels::detail
