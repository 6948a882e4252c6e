// AVX512_BF16 micro-kernels of the packed matmul, pairs format (model/kernels_packed.h): one
// vdpbf16ps per pair of k per accumulator. Compiled with AVX512_BF16 flags; only called after a
// CPU check.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "model/kernels_avx512_internal.h"
#include "model/kernels_packed.h"

namespace zr::kernels::detail {

namespace {

constexpr int kMR = 8;
constexpr int kNP = kGroup / 16;
// K block (in pairs) when several row tiles share a group: 192 pairs x 48 columns x 4 B = 36 KiB of
// weights in L1 across the row tiles (96 pairs loaded and stored the accumulators twice as often).
constexpr int kKC2 = 192;
// PF: the tile prefetches the weights kPfK2 pairs ahead (the first row tile of a block, which
// meets the block in memory; the later ones find it in L1).
constexpr int kPfK2 = 24;

template <int MR, int NP, bool PF>
void tile(const uint16_t* xb, int ldxb, const uint16_t* wg, int kp0, int kp1, float* y, int ldy, __mmask16 tail,
          bool first) {
  constexpr int W = NP * 16;
  __m512 acc[MR][NP];
  load_tile_acc(acc, y, ldy, tail, first);
  for (int kp = kp0; kp < kp1; ++kp) {
    __m512i wv[NP];
#pragma GCC unroll 3
    for (int p = 0; p < NP; ++p) wv[p] = _mm512_loadu_si512(wg + static_cast<size_t>(kp) * 2 * W + 32 * p);
    if constexpr (PF) {
      const char* ahead = reinterpret_cast<const char*>(wg + (static_cast<size_t>(kp) + kPfK2) * 2 * W);
#pragma GCC unroll 3
      for (int p = 0; p < NP; ++p) _mm_prefetch(ahead + 64 * p, _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, xb + static_cast<size_t>(i) * ldxb + 2 * kp, sizeof pair);
      const __m512i xv = _mm512_set1_epi32(pair);
#pragma GCC unroll 3
      for (int p = 0; p < NP; ++p)
        acc[i][p] = _mm512_dpbf16_ps(acc[i][p], reinterpret_cast<__m512bh>(xv), reinterpret_cast<__m512bh>(wv[p]));
    }
  }
  store_tile_acc(acc, y, ldy, tail);
}

using TileFn = void (*)(const uint16_t*, int, const uint16_t*, int, int, float*, int, __mmask16, bool);

template <bool PF, int MR, int... Ps>
constexpr std::array<TileFn, kNP> row_of(std::integer_sequence<int, Ps...>) {
  return {&tile<MR, Ps + 1, PF>...};
}

template <bool PF, int... Ms>
constexpr std::array<std::array<TileFn, kNP>, kMR> make_table(std::integer_sequence<int, Ms...>) {
  return {row_of<PF, Ms + 1>(std::make_integer_sequence<int, kNP>{})...};
}

constexpr auto kTable = make_table<false>(std::make_integer_sequence<int, kMR>{});
constexpr auto kTablePf = make_table<true>(std::make_integer_sequence<int, kMR>{});

// 16 f32 -> 16 bf16 with f32_to_bf16's rounding (RNE; NaN payloads aside), as kernels_bf16.cpp.
inline __m256i round16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

}  // namespace

void round_rows_bf16_avx512(const float* x, int M, int K, int ldx, uint16_t* out, int ld) {
  for (int m = 0; m < M; ++m) {
    const float* src = x + static_cast<size_t>(m) * ldx;
    uint16_t* dst = out + static_cast<size_t>(m) * ld;
    for (int k = 0; k < ld; k += 16) {
      const int n = std::clamp(K - k, 0, 16);
      const __mmask16 mask = static_cast<__mmask16>(n >= 16 ? 0xFFFFu : (1u << n) - 1u);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), round16(_mm512_maskz_loadu_ps(mask, src + k)));
    }
  }
}

void packed_pairs_avx512(const uint16_t* xb, int M, int ldxb, const PackedMatrix& w, int g0, int g1, float* y,
                         int ldy) {
  const int pairs = w.Kp / 2;
  const int kc = M <= kMR ? pairs : kKC2;
  for (int g = g0; g < g1; ++g) {
    const int W = w.width(g), n0 = g * kGroup, ncols = std::min(W, w.N - n0);
    const int tail_cols = ncols - (W - 16);
    const __mmask16 tail = static_cast<__mmask16>(tail_cols >= 16 ? 0xFFFFu : (1u << tail_cols) - 1u);
    const uint16_t* wg = static_cast<const uint16_t*>(w.group(g));
    for (int k0 = 0; k0 < pairs; k0 += kc) {
      const int k1 = std::min(pairs, k0 + kc);
      for (int m = 0; m < M; m += kMR) {
        const int mr = std::min(kMR, M - m);
        (m == 0 ? kTablePf : kTable)[mr - 1][W / 16 - 1](xb + static_cast<size_t>(m) * ldxb, ldxb, wg, k0, k1,
                                                         y + static_cast<size_t>(m) * ldy + n0, ldy, tail, k0 == 0);
      }
    }
  }
}

}  // namespace zr::kernels::detail
