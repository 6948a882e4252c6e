// AVX-512 implementation of the invariant matmul (see model/kernels.h for the recipe it must
// follow bit for bit). Compiled with AVX-512 flags; only called after a CPU check.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "model/kernels_internal.h"

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

template <bool BF16>
inline __m512 load_w(const void* base, size_t off) {
  if constexpr (BF16) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + off));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_loadu_ps(static_cast<const float*>(base) + off);
  }
}

template <bool BF16>
inline __m512 load_w_tail(const void* base, size_t off, __mmask16 mask) {
  if constexpr (BF16) {
    __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + off);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + off);
  }
}

// One MR x NR tile: rows x[0..MR) against weight rows [n, n+NR). With PF, the same k range of
// the next NR weight rows is prefetched, so the DRAM stream of the next tile overlaps this tile's
// arithmetic (decode reads every weight once per step).
template <int MR, int NR, bool BF16, bool PF = false>
void tile(const float* x, int ldx, const void* w, int K, int n, float* y, int ldy) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  const size_t wrow = static_cast<size_t>(K);
  int k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    __m512 xv[MR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_loadu_ps(x + static_cast<size_t>(i) * ldx + k);
    if constexpr (PF) {
      const char* base = static_cast<const char*>(w) + ((n + NR) * wrow + k) * (BF16 ? 2 : 4);
#pragma GCC unroll 6
      for (int j = 0; j < NR; ++j) _mm_prefetch(base + j * wrow * (BF16 ? 2 : 4), _MM_HINT_T0);
    }
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j) {
      __m512 wv = load_w<BF16>(w, (n + j) * wrow + k);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  if (k < K) {
    __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1u);
    __m512 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_maskz_loadu_ps(mask, x + static_cast<size_t>(i) * ldx + k);
    for (int j = 0; j < NR; ++j) {
      __m512 wv = load_w_tail<BF16>(w, (n + j) * wrow + k, mask);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) y[static_cast<size_t>(i) * ldy + n + j] = hsum16(acc[i][j]);
}

constexpr int kMR = 4;
constexpr int kNR = 6;
constexpr int kNB = 48;  // weight rows per column block: 48 rows x K stay in L2 across row tiles

using TileFn = void (*)(const float*, int, const void*, int, int, float*, int);

template <bool BF16, bool PF, int MR, int... NRs>
constexpr std::array<TileFn, kNR> row_of(std::integer_sequence<int, NRs...>) {
  return {&tile<MR, NRs + 1, BF16, PF>...};
}

template <bool BF16, bool PF>
constexpr std::array<std::array<TileFn, kNR>, kMR> make_table() {
  using S = std::make_integer_sequence<int, kNR>;
  return {row_of<BF16, PF, 1>(S{}), row_of<BF16, PF, 2>(S{}), row_of<BF16, PF, 3>(S{}), row_of<BF16, PF, 4>(S{})};
}

constexpr auto kTableF32 = make_table<false, false>();
constexpr auto kTableBF16 = make_table<true, false>();
constexpr auto kTableF32Pf = make_table<false, true>();
constexpr auto kTableBF16Pf = make_table<true, true>();

}  // namespace

void matmul_avx512(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n0,
                   int n1, float* y, int ldy) {
  const bool bf16 = wdtype == DType::bf16;
  const auto& table = bf16 ? kTableBF16 : kTableF32;
  const auto& table_pf = bf16 ? kTableBF16Pf : kTableF32Pf;
  if (M == 1) {
    // One row of x (decode at batch 1) reads every weight once and is bound by memory: walk the
    // weight rows one at a time, so the reads form a single linear stream (6 rows in step are 6
    // streams 4 KiB apart, which the hardware prefetchers follow far worse).
    const TileFn one = table[0][0];
    for (int n = n0; n < n1; ++n) one(x, ldx, w, K, n, y, ldy);
    return;
  }
  // Several row tiles: while the row tiles run over one column block (from L2), the next block's
  // weights are prefetched into L2, a slice before each tile, so the first row tile of the next
  // block does not wait on DRAM. A single row tile has nothing to hide the stream behind; it
  // prefetches the next weight tile instead.
  const size_t esize = bf16 ? 2 : 4;
  const int mtiles = (M + kMR - 1) / kMR;
  bool block_in_l2 = false;
  for (int nb = n0; nb < n1; nb += kNB) {
    int ne = std::min(nb + kNB, n1);
    const char* next = static_cast<const char*>(w) + static_cast<size_t>(ne) * K * esize;
    const size_t next_bytes = static_cast<size_t>(std::min(ne + kNB, n1) - ne) * K * esize;
    const int slots = (mtiles - 1) * ((ne - nb + kNR - 1) / kNR);
    const size_t slice = slots > 0 ? (next_bytes / 64 / slots + 1) * 64 : 0;
    size_t fetched = 0;
    for (int m = 0; m < M; m += kMR) {
      int mr = std::min(kMR, M - m);
      const float* xm = x + static_cast<size_t>(m) * ldx;
      float* ym = y + static_cast<size_t>(m) * ldy;
      for (int n = nb; n < ne; n += kNR) {
        int nr = std::min(kNR, ne - n);
        if (m > 0 && fetched < next_bytes) {
          const size_t end = std::min(next_bytes, fetched + slice);
          for (; fetched < end; fetched += 64) _mm_prefetch(next + fetched, _MM_HINT_T1);
        }
        bool pf = m == 0 && !block_in_l2 && n + 2 * kNR <= n1;
        (pf ? table_pf : table)[mr - 1][nr - 1](xm, ldx, w, K, n, ym, ldy);
      }
    }
    block_in_l2 = mtiles > 1;
  }
}

void attention_scores_avx512(const float* q, int hd, const float* const* kt_blocks, int bs, int n, float scale,
                             float* scores) {
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int j0 = 0; j0 < n; j0 += std::min(kLanes, bs)) {
    const int lanes = std::min({kLanes, bs - j0 % bs, n - j0});
    const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1u);
    const float* kt = kt_blocks[j0 / bs] + j0 % bs;
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < hd; ++i)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(q[i]), _mm512_maskz_loadu_ps(mask, kt + static_cast<size_t>(i) * bs), acc);
    _mm512_mask_storeu_ps(scores + j0, mask, _mm512_mul_ps(acc, vscale));
  }
}

namespace {

// Dims [g, g + dims) (at most C x 16) of out for positions [0, n): the accumulators stay in registers (C is a
// compile-time count), and the walk goes block by block, so no division per position.
template <int C>
void values_chunks(const float* p, const float* const* v_blocks, int g, int bs, int v_stride, int n, int dims,
                   float* out, bool accumulate) {
  __m512 acc[C];
  __mmask16 mask[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    const int lanes = std::min(kLanes, dims - c * kLanes);
    mask[c] = static_cast<__mmask16>((1u << lanes) - 1u);
    acc[c] = accumulate ? _mm512_maskz_loadu_ps(mask[c], out + c * kLanes) : _mm512_setzero_ps();
  }
  for (int j0 = 0, b = 0; j0 < n; j0 += bs, ++b) {
    const float* vb = v_blocks[b] + g;
    const int nb = std::min(bs, n - j0);
    for (int j = 0; j < nb; ++j) {
      const float* v = vb + static_cast<size_t>(j) * v_stride;
      const __m512 pj = _mm512_set1_ps(p[j0 + j]);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[c] = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(mask[c], v + c * kLanes), acc[c]);
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) _mm512_mask_storeu_ps(out + c * kLanes, mask[c], acc[c]);
}

// T heads at once against one block: T independent FMA chains in flight instead of one.
template <int T>
void scores_heads(const float* q, int hd, const float* const* kt, int bs, int nb, float scale, float* scores,
                  size_t score_stride) {
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int j0 = 0; j0 < nb; j0 += kLanes) {
    const int lanes = std::min(kLanes, nb - j0);
    const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1u);
    __m512 acc[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int i = 0; i < hd; ++i) {
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t)
        acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(q[static_cast<size_t>(t) * hd + i]),
                                 _mm512_maskz_loadu_ps(mask, kt[t] + static_cast<size_t>(i) * bs + j0), acc[t]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t)
      _mm512_mask_storeu_ps(scores + t * score_stride + j0, mask, _mm512_mul_ps(acc[t], vscale));
  }
}

}  // namespace

void attention_scores_heads_avx512(const float* q, int hd, int heads, const float* const* kt, int bs, int nb,
                                   float scale, float* scores, size_t score_stride) {
  int h = 0;
  for (; h + 4 <= heads; h += 4)
    scores_heads<4>(q + static_cast<size_t>(h) * hd, hd, kt + h, bs, nb, scale, scores + h * score_stride, score_stride);
  const float* qh = q + static_cast<size_t>(h) * hd;
  float* sh = scores + h * score_stride;
  switch (heads - h) {
    case 3: return scores_heads<3>(qh, hd, kt + h, bs, nb, scale, sh, score_stride);
    case 2: return scores_heads<2>(qh, hd, kt + h, bs, nb, scale, sh, score_stride);
    case 1: return scores_heads<1>(qh, hd, kt + h, bs, nb, scale, sh, score_stride);
    default: return;
  }
}

void attention_values_avx512(const float* p, const float* const* v_blocks, int bs, int v_stride, int n, int hd,
                             float* out, bool accumulate) {
  constexpr int kGroup = 8;  // up to 8 x 16 dims accumulate in registers per pass over positions
  for (int g = 0; g < hd; g += kGroup * kLanes) {
    const int dims = std::min(kGroup * kLanes, hd - g);
    const int chunks = (dims + kLanes - 1) / kLanes;
    switch (chunks) {
      case 1: values_chunks<1>(p, v_blocks, g, bs, v_stride, n, dims, out + g, accumulate); break;
      case 2: values_chunks<2>(p, v_blocks, g, bs, v_stride, n, dims, out + g, accumulate); break;
      case 3: values_chunks<3>(p, v_blocks, g, bs, v_stride, n, dims, out + g, accumulate); break;
      case 4: values_chunks<4>(p, v_blocks, g, bs, v_stride, n, dims, out + g, accumulate); break;
      case 5: values_chunks<5>(p, v_blocks, g, bs, v_stride, n, dims, out + g, accumulate); break;
      case 6: values_chunks<6>(p, v_blocks, g, bs, v_stride, n, dims, out + g, accumulate); break;
      case 7: values_chunks<7>(p, v_blocks, g, bs, v_stride, n, dims, out + g, accumulate); break;
      default: values_chunks<8>(p, v_blocks, g, bs, v_stride, n, dims, out + g, accumulate); break;
    }
  }
}

float dot_avx512(const float* a, const float* b, int n) {
  float out;
  tile<1, 1, false>(a, n, b, n, 0, &out, 1);
  return out;
}

}  // namespace zr::kernels::detail
