// AVX-512 implementation of the invariant matmul (see model/kernels.h for the recipe it must
// follow bit for bit). Compiled with AVX-512 flags; only called after a CPU check.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <utility>

#include "model/kernels_avx512_internal.h"
#include "model/kernels_internal.h"

namespace zr::kernels::detail {

namespace {

// The first `lanes` lanes (0..16).
inline __mmask16 lanes_mask(int lanes) {
  return static_cast<__mmask16>(lanes >= kLanes ? 0xFFFFu : (1u << lanes) - 1u);
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
    __mmask16 mask = lanes_mask(K - k);
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

// The tile above over one chunk [k0, k1) of K (k0 a multiple of 16): the lane sums start from
// `spill` (MR x NR vectors, [i][j]) unless first, and go back to it unless last, when they are
// reduced into y. The chain of every lane is the one of a single pass over K, so chunking changes
// no bits; it keeps the MR x chunk of x and NR x chunk of w in L1 when whole rows do not fit.
template <int MR, int NR, bool BF16>
void tile_chunk(const float* x, int ldx, const void* w, int K, int k0, int k1, int n, float* y, int ldy, float* spill,
                bool first, bool last) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j)
      acc[i][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(spill + (i * NR + j) * kLanes);
  const size_t wrow = static_cast<size_t>(K);
  int k = k0;
  for (; k + kLanes <= k1; k += kLanes) {
    __m512 xv[MR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_loadu_ps(x + static_cast<size_t>(i) * ldx + k);
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j) {
      __m512 wv = load_w<BF16>(w, (n + j) * wrow + k);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  if (k < k1) {  // the tail of K (k1 == K)
    __mmask16 mask = lanes_mask(k1 - k);
    __m512 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_maskz_loadu_ps(mask, x + static_cast<size_t>(i) * ldx + k);
    for (int j = 0; j < NR; ++j) {
      __m512 wv = load_w_tail<BF16>(w, (n + j) * wrow + k, mask);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  if (!last) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) _mm512_store_ps(spill + (i * NR + j) * kLanes, acc[i][j]);
    return;
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

using ChunkFn = void (*)(const float*, int, const void*, int, int, int, int, float*, int, float*, bool, bool);

template <bool BF16, int MR, int... NRs>
constexpr std::array<ChunkFn, kNR> chunk_row_of(std::integer_sequence<int, NRs...>) {
  return {&tile_chunk<MR, NRs + 1, BF16>...};
}

template <bool BF16>
constexpr std::array<std::array<ChunkFn, kNR>, kMR> make_chunk_table() {
  using S = std::make_integer_sequence<int, kNR>;
  return {chunk_row_of<BF16, 1>(S{}), chunk_row_of<BF16, 2>(S{}), chunk_row_of<BF16, 3>(S{}),
          chunk_row_of<BF16, 4>(S{})};
}

constexpr auto kChunkF32 = make_chunk_table<false>();
constexpr auto kChunkBF16 = make_chunk_table<true>();

// K chunk of the blocked path: MR + NR rows of a chunk (x and w, 40 KiB at 1024 f32) fit in L1
// (48 KiB); rows longer than kKcMin are cut.
// (bench_engine's parity table, 2 threads, Haswell OpenBLAS beside it, one noisy run: 768 x 2048
// at M=64 gave 99 GFLOP/s with 1024-wide chunks, 86 with 512, 77 with 256, OpenBLAS 87-91.)
constexpr int kKC = 1024;
constexpr int kKcMin = 1024;

// Many rows with long K: column block, row tile, K chunk, column tile. The row tile's chunk of x
// stays in L1 across the column tiles of the block; the lane sums of the block's tiles wait in
// `spill` between chunks.
void matmul_chunked(const float* x, int M, int K, int ldx, const void* w, bool bf16, int n0, int n1, float* y,
                    int ldy) {
  const auto& table = bf16 ? kChunkBF16 : kChunkF32;
  alignas(64) static thread_local float spill[kNB / kNR][kMR * kNR * kLanes];
  for (int nb = n0; nb < n1; nb += kNB) {
    const int ne = std::min(nb + kNB, n1);
    for (int m = 0; m < M; m += kMR) {
      const int mr = std::min(kMR, M - m);
      const float* xm = x + static_cast<size_t>(m) * ldx;
      float* ym = y + static_cast<size_t>(m) * ldy;
      for (int k0 = 0; k0 < K; k0 += kKC) {
        const int k1 = std::min(K, k0 + kKC);
        for (int n = nb, t = 0; n < ne; n += kNR, ++t)
          table[mr - 1][std::min(kNR, ne - n) - 1](xm, ldx, w, K, k0, k1, n, ym, ldy, spill[t], k0 == 0, k1 == K);
      }
    }
  }
}

constexpr auto kTableF32 = make_table<false, false>();
constexpr auto kTableBF16 = make_table<true, false>();
constexpr auto kTableF32Pf = make_table<false, true>();
constexpr auto kTableBF16Pf = make_table<true, true>();

}  // namespace

void matmul_avx512(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n0, int n1, float* y,
                   int ldy) {
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
  if (K > kKcMin && M > kMR) return matmul_chunked(x, M, K, ldx, w, bf16, n0, n1, y, ldy);
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

namespace {

// A run of up to 16 positions inside one block: the block (index into a head's block list), the
// slot of the first position, the first position's index in the sequence, and the lane mask.
struct Chunk {
  int blk, off, j0;
  __mmask16 mask;
};

// 16 KV elements as f32 (lanes past the mask 0): f32 as stored, bf16 widened exactly.
template <class E>
inline __m512 load_kv(__mmask16 mask, const E* p) {
  if constexpr (sizeof(E) == 4) {
    return _mm512_maskz_loadu_ps(mask, p);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// Scores of T heads x C chunks: T x C independent FMA chains, each the chain over dims of
// attention_scores (so the bits are those of one head and one chunk at a time). A dim step loads
// T broadcasts of q and T x C key vectors.
template <int T, int C, class E>
void scores_tile(const float* q, int hd, const E* const* kt, int nblk, int bs, const Chunk* ch, float scale,
                 float* scores, size_t score_stride) {
  const E* k[T][C];
#pragma GCC unroll 2
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) k[t][c] = kt[static_cast<size_t>(t) * nblk + ch[c].blk] + ch[c].off;
  __m512 acc[T][C];
#pragma GCC unroll 2
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[t][c] = _mm512_setzero_ps();
  for (int i = 0; i < hd; ++i) {
    const size_t row = static_cast<size_t>(i) * bs;
#pragma GCC unroll 2
    for (int t = 0; t < T; ++t) {
      const __m512 qb = _mm512_set1_ps(q[static_cast<size_t>(t) * hd + i]);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[t][c] = _mm512_fmadd_ps(qb, load_kv(ch[c].mask, k[t][c] + row), acc[t][c]);
    }
  }
  const __m512 vscale = _mm512_set1_ps(scale);
#pragma GCC unroll 2
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c)
      _mm512_mask_storeu_ps(scores + t * score_stride + ch[c].j0, ch[c].mask, _mm512_mul_ps(acc[t][c], vscale));
}

template <class E>
using ScoresFn = void (*)(const float*, int, const E* const*, int, int, const Chunk*, float, float*, size_t);
template <class E>
constexpr ScoresFn<E> kScores[2][4] = {
    {&scores_tile<1, 1, E>, &scores_tile<1, 2, E>, &scores_tile<1, 3, E>, &scores_tile<1, 4, E>},
    {&scores_tile<2, 1, E>, &scores_tile<2, 2, E>, &scores_tile<2, 3, E>, &scores_tile<2, 4, E>}};

// Dims [g, g + 16 C) of T heads' outputs over positions [0, n): T x C chains over positions, each
// the chain of attention_values. A position step loads T broadcasts of p and T x C value vectors.
template <int T, int C, class E>
void values_tile(const float* p, size_t p_stride, const E* const* v, int nblk, int g, int bs, int v_stride, int n,
                 const __mmask16* mask, float* out, size_t out_stride, bool accumulate) {
  __m512 acc[T][C];
#pragma GCC unroll 2
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c)
      acc[t][c] =
          accumulate ? _mm512_maskz_loadu_ps(mask[c], out + t * out_stride + g + c * kLanes) : _mm512_setzero_ps();
  for (int j0 = 0, b = 0; j0 < n && b < nblk; j0 += bs, ++b) {
    const E* vb[T];
#pragma GCC unroll 2
    for (int t = 0; t < T; ++t) vb[t] = v[static_cast<size_t>(t) * nblk + b] + g;
    const int nb = std::min(bs, n - j0);
    for (int j = 0; j < nb; ++j) {
#pragma GCC unroll 2
      for (int t = 0; t < T; ++t) {
        const __m512 pj = _mm512_set1_ps(p[t * p_stride + j0 + j]);
        const E* row = vb[t] + static_cast<size_t>(j) * v_stride;
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) acc[t][c] = _mm512_fmadd_ps(pj, load_kv(mask[c], row + c * kLanes), acc[t][c]);
      }
    }
  }
#pragma GCC unroll 2
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm512_mask_storeu_ps(out + t * out_stride + g + c * kLanes, mask[c], acc[t][c]);
}

template <class E>
using ValuesFn = void (*)(const float*, size_t, const E* const*, int, int, int, int, int, const __mmask16*, float*,
                          size_t, bool);
template <class E>
constexpr ValuesFn<E> kValues1[8] = {&values_tile<1, 1, E>, &values_tile<1, 2, E>, &values_tile<1, 3, E>,
                                     &values_tile<1, 4, E>, &values_tile<1, 5, E>, &values_tile<1, 6, E>,
                                     &values_tile<1, 7, E>, &values_tile<1, 8, E>};
template <class E>
constexpr ValuesFn<E> kValues2[4] = {&values_tile<2, 1, E>, &values_tile<2, 2, E>, &values_tile<2, 3, E>,
                                     &values_tile<2, 4, E>};

template <class E>
void scores_heads(const float* q, int hd, int heads, const E* const* kt, int nblk, int bs, int n, float scale,
                  float* scores, size_t score_stride) {
  // Cut [0, n) into runs of at most 16 positions that stay inside a block.
  Chunk chunks[64];
  for (int j0 = 0; j0 < n;) {
    int count = 0;
    for (; j0 < n && count < 64; ++count) {
      const int off = j0 % bs, lanes = std::min({kLanes, bs - off, n - j0});
      chunks[count] = {j0 / bs, off, j0, lanes_mask(lanes)};
      j0 += lanes;
    }
    for (int h = 0; h < heads; h += 2) {
      const int t = std::min(2, heads - h);
      for (int c = 0; c < count; c += 4)
        kScores<E>[t - 1][std::min(4, count - c) - 1](q + static_cast<size_t>(h) * hd, hd,
                                                      kt + static_cast<size_t>(h) * nblk, nblk, bs, chunks + c, scale,
                                                      scores + h * score_stride, score_stride);
    }
  }
}

template <class E>
void values_heads(const float* p, size_t p_stride, int heads, const E* const* v, int nblk, int bs, int v_stride, int n,
                  int hd, float* out, size_t out_stride, bool accumulate) {
  const int chunks = (hd + kLanes - 1) / kLanes;
  __mmask16 mask[8];
  auto masks = [&](int g, int count) {
    for (int c = 0; c < count; ++c) {
      const int lanes = std::min(kLanes, hd - g - c * kLanes);
      mask[c] = lanes_mask(lanes);
    }
  };
  if (chunks <= 4) {  // two heads side by side: up to 8 chains
    masks(0, chunks);
    for (int h = 0; h < heads; h += 2) {
      const size_t hs = static_cast<size_t>(h);
      (heads - h >= 2 ? kValues2<E> : kValues1<E>)[chunks - 1](p + hs * p_stride, p_stride, v + hs * nblk, nblk, 0, bs,
                                                               v_stride, n, mask, out + hs * out_stride, out_stride,
                                                               accumulate);
    }
    return;
  }
  for (int h = 0; h < heads; ++h) {
    const size_t hs = static_cast<size_t>(h);
    for (int g = 0; g < hd; g += 8 * kLanes) {
      const int count = std::min(8, (hd - g + kLanes - 1) / kLanes);
      masks(g, count);
      kValues1<E>[count - 1](p + hs * p_stride, p_stride, v + hs * nblk, nblk, g, bs, v_stride, n, mask,
                             out + hs * out_stride, out_stride, accumulate);
    }
  }
}

}  // namespace

void attention_scores_heads_avx512(const float* q, int hd, int heads, const float* const* kt, int nblk, int bs, int n,
                                   float scale, float* scores, size_t score_stride) {
  scores_heads(q, hd, heads, kt, nblk, bs, n, scale, scores, score_stride);
}

void attention_scores_heads_avx512(const float* q, int hd, int heads, const uint16_t* const* kt, int nblk, int bs,
                                   int n, float scale, float* scores, size_t score_stride) {
  scores_heads(q, hd, heads, kt, nblk, bs, n, scale, scores, score_stride);
}

void attention_values_heads_avx512(const float* p, size_t p_stride, int heads, const float* const* v, int nblk, int bs,
                                   int v_stride, int n, int hd, float* out, size_t out_stride, bool accumulate) {
  values_heads(p, p_stride, heads, v, nblk, bs, v_stride, n, hd, out, out_stride, accumulate);
}

void attention_values_heads_avx512(const float* p, size_t p_stride, int heads, const uint16_t* const* v, int nblk,
                                   int bs, int v_stride, int n, int hd, float* out, size_t out_stride,
                                   bool accumulate) {
  values_heads(p, p_stride, heads, v, nblk, bs, v_stride, n, hd, out, out_stride, accumulate);
}

namespace {

// The exp of kernels.h (softmax) on 16 lanes, the operations of the portable exp_poly: arguments
// below kMin give 0, NaN stays NaN; callers keep arguments <= kMax (larger ones overflow to inf).
inline __m512 exp16(__m512 a) {
  using namespace expc;
  const __m512 nn =
      _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // fma(-n, c, a) of the portable path: negating n is exact, so -(n * c) + a fused is the same.
  __m512 r = _mm512_fnmadd_ps(nn, _mm512_set1_ps(kLn2Hi), a);
  r = _mm512_fnmadd_ps(nn, _mm512_set1_ps(kLn2Lo), r);
  __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(kP0), r, _mm512_set1_ps(kP1));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP2));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP3));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP4));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP5));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r);
  y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
  y = _mm512_scalef_ps(y, nn);
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(kMin), _CMP_NLT_UQ), y);
}

// max of x[0, n), then the sum of exp(x[j] - max) in double, element j in lane j % 8, the lanes
// added (i, i+4), then (i, i+2), then (0, 1), as the portable path. Stores the exps in `exps` when
// given (it may be x). Returns the sum; *max_out gets the max.
double max_and_exp_sum(const float* x, int n, float* exps, float* max_out) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < n; j += kLanes) {
    const __mmask16 m = lanes_mask(n - j);
    vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, x + j));
  }
  *max_out = _mm512_reduce_max_ps(vmax);
  const __m512 mx = _mm512_set1_ps(*max_out);
  __m512d sum = _mm512_setzero_pd();
  for (int j = 0; j < n; j += kLanes) {
    const __mmask16 m = lanes_mask(n - j);
    const __m512 y =
        _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j), mx)));  // lanes past n: 0
    if (exps) _mm512_mask_storeu_ps(exps + j, m, y);
    sum = _mm512_add_pd(sum, _mm512_cvtps_pd(_mm512_castps512_ps256(y)));     // elements j .. j+7
    sum = _mm512_add_pd(sum, _mm512_cvtps_pd(_mm512_extractf32x8_ps(y, 1)));  // elements j+8 .. j+15
  }
  const __m256d s4 = _mm256_add_pd(_mm512_castpd512_pd256(sum), _mm512_extractf64x4_pd(sum, 1));
  const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s4), _mm256_extractf128_pd(s4, 1));
  return _mm_cvtsd_f64(s2) + _mm_cvtsd_f64(_mm_unpackhi_pd(s2, s2));
}

}  // namespace

void softmax_avx512(float* x, int n) {
  float mx;
  const __m512 inv = _mm512_set1_ps(static_cast<float>(1.0 / max_and_exp_sum(x, n, x, &mx)));
  for (int j = 0; j < n; j += kLanes) {
    const __mmask16 m = lanes_mask(n - j);
    _mm512_mask_storeu_ps(x + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + j), inv));
  }
}

void log_softmax_avx512(const float* x, int n, float* out) {
  float max;
  const __m512 lse = _mm512_set1_ps(static_cast<float>(std::log(max_and_exp_sum(x, n, nullptr, &max))));
  const __m512 mx = _mm512_set1_ps(max);
  for (int j = 0; j < n; j += kLanes) {
    const __mmask16 m = lanes_mask(n - j);
    _mm512_mask_storeu_ps(out + j, m, _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j), mx), lse));
  }
}

void exp_avx512(const float* x, int n, float* out) {
  for (int j = 0; j < n; j += kLanes) {
    const __mmask16 m = lanes_mask(n - j);
    _mm512_mask_storeu_ps(out + j, m, exp16(_mm512_maskz_loadu_ps(m, x + j)));
  }
}

void silu_mul_avx512(const float* gate, const float* up, int n, float* out) {
  const __m512 hi = _mm512_set1_ps(expc::kMax), one = _mm512_set1_ps(1.0f);
  for (int i = 0; i < n; i += kLanes) {
    const __mmask16 m = lanes_mask(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    // min(-g, kMax) as std::min(-g, kMax): NaN stays NaN (min_ps returns its second operand then).
    const __m512 e = exp16(_mm512_min_ps(hi, _mm512_sub_ps(_mm512_setzero_ps(), g)));
    const __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

float dot_avx512(const float* a, const float* b, int n) {
  float out;
  tile<1, 1, false>(a, n, b, n, 0, &out, 1);
  return out;
}

}  // namespace zr::kernels::detail
