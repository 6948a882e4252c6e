// AVX-512 micro-kernels of the packed matmul (model/kernels_packed.h; the summation order there is
// what these must follow bit for bit). Compiled with AVX-512 flags; only called after a CPU check.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>

#include "model/kernels_avx512_internal.h"
#include "model/kernels_packed.h"

namespace zr::kernels::detail {

namespace {

constexpr int kMR = 8;  // rows per tile: 8 x 3 accumulators + 3 weight vectors + 1 broadcast of 32 registers
constexpr int kNP = kGroup / 16;
// K block when several row tiles share a group: 192 k x 48 columns x 4 B = 36 KiB of weights stay in
// L1 (48 KiB) across the row tiles; x's tile rows (8 x 192 x 4 B = 6 KiB) come from L2.
constexpr int kKC = 192;

template <bool BF16>
inline __m512 load_w(const void* base, size_t off) {
  if constexpr (BF16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + off));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_loadu_ps(static_cast<const float*>(base) + off);
  }
}

// Rows [0, MR) x the NP panels of one group over k in [k0, k1). The accumulators start at +0 when
// first, else from y (an exact f32 partial sum of k < k0); the last panel's columns past N are
// masked off (`tail`).
// PF (one row tile: the group streams from memory once): each k also prefetches the weights kPfK
// k ahead, so the DRAM stream runs ahead of the arithmetic.
constexpr int kPfK = 24;

template <int MR, int NP, bool BF16, bool PF>
void tile(const float* x, int ldx, const void* wg, int k0, int k1, float* y, int ldy, __mmask16 tail, bool first) {
  constexpr int W = NP * 16;
  __m512 acc[MR][NP];
  load_tile_acc(acc, y, ldy, tail, first);
  for (int k = k0; k < k1; ++k) {
    __m512 wv[NP];
#pragma GCC unroll 3
    for (int p = 0; p < NP; ++p) wv[p] = load_w<BF16>(wg, static_cast<size_t>(k) * W + 16 * p);
    if constexpr (PF) {
      constexpr size_t kEs = BF16 ? 2 : 4;
      const char* ahead = static_cast<const char*>(wg) + (static_cast<size_t>(k) + kPfK) * W * kEs;
#pragma GCC unroll 3
      for (int p = 0; p < (NP * 16 * static_cast<int>(kEs) + 63) / 64; ++p) _mm_prefetch(ahead + 64 * p, _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 xb = _mm512_set1_ps(x[static_cast<size_t>(i) * ldx + k]);
#pragma GCC unroll 3
      for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_fmadd_ps(xb, wv[p], acc[i][p]);
    }
  }
  store_tile_acc(acc, y, ldy, tail);
}

using TileFn = void (*)(const float*, int, const void*, int, int, float*, int, __mmask16, bool);

template <bool BF16, bool PF, int MR, int... Ps>
constexpr std::array<TileFn, kNP> row_of(std::integer_sequence<int, Ps...>) {
  return {&tile<MR, Ps + 1, BF16, PF>...};
}

template <bool BF16, bool PF, int... Ms>
constexpr std::array<std::array<TileFn, kNP>, kMR> make_table(std::integer_sequence<int, Ms...>) {
  return {row_of<BF16, PF, Ms + 1>(std::make_integer_sequence<int, kNP>{})...};
}

constexpr auto kTableF32 = make_table<false, false>(std::make_integer_sequence<int, kMR>{});
constexpr auto kTableBF16 = make_table<true, false>(std::make_integer_sequence<int, kMR>{});
constexpr auto kTableF32Pf = make_table<false, true>(std::make_integer_sequence<int, kMR>{});
constexpr auto kTableBF16Pf = make_table<true, true>(std::make_integer_sequence<int, kMR>{});

}  // namespace

void packed_avx512(const float* x, int M, int ldx, const PackedMatrix& w, int g0, int g1, float* y, int ldy) {
  // The first row tile of a K block meets the block's weights in memory: it prefetches ahead (into
  // the next block at its end); the later tiles find the block in L1.
  const bool bf16 = w.format == PackFormat::bf16;
  const auto& table = bf16 ? kTableBF16 : kTableF32;
  const auto& table_pf = bf16 ? kTableBF16Pf : kTableF32Pf;
  // One row tile streams each group once from memory: no K blocking. Several tiles reuse a group's
  // K block from L1.
  const int kc = M <= kMR ? w.K : kKC;
  for (int g = g0; g < g1; ++g) {
    const int W = w.width(g), n0 = g * kGroup, ncols = std::min(W, w.N - n0);
    const int tail_cols = ncols - (W - 16);
    const __mmask16 tail = static_cast<__mmask16>(tail_cols >= 16 ? 0xFFFFu : (1u << tail_cols) - 1u);
    const void* wg = w.group(g);
    for (int k0 = 0; k0 < w.K; k0 += kc) {
      const int k1 = std::min(w.K, k0 + kc);
      for (int m = 0; m < M; m += kMR) {
        const int mr = std::min(kMR, M - m);
        (m == 0 ? table_pf : table)[mr - 1][W / 16 - 1](x + static_cast<size_t>(m) * ldx, ldx, wg, k0, k1,
                                                        y + static_cast<size_t>(m) * ldy + n0, ldy, tail, k0 == 0);
      }
    }
  }
}

}  // namespace zr::kernels::detail
