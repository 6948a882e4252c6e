// AVX512_BF16 implementation of the bf16-compute matmul (model/kernels.h, Compute::bf16): x rows
// already rounded to bf16 (zero-padded to a multiple of 32), weights bf16 (or f32, rounded here
// with the RNE of f32_to_bf16: the same bits as weights rounded at load). Compiled with AVX512_BF16
// flags; only called after a CPU check.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "model/kernels_avx512_internal.h"
#include "model/kernels_internal.h"

namespace zr::kernels::detail {

namespace {

// 16 f32 -> 16 bf16 with f32_to_bf16's rounding (NaN payloads aside: a NaN stays a NaN).
inline __m256i round16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

// 32 weights k .. k+31 of one row (the first `lanes` of them; the rest 0) as bf16 pairs.
template <bool WF32>
inline __m512i load_w(const void* base, size_t off, __mmask32 mask) {
  if constexpr (WF32) {
    const float* p = static_cast<const float*>(base) + off;
    const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>(mask), p);
    const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>(mask >> 16), p + 16);
    return _mm512_inserti64x4(_mm512_castsi256_si512(round16(lo)), round16(hi), 1);
  } else {
    return _mm512_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + off);
  }
}

// One MR x NR tile of y = xb * w^T: lane l of an accumulator takes k = 32 c + 2 l, 2 l + 1 of every
// chunk c in order (one vdpbf16ps per chunk), then hsum16. xb rows are padded with zeros to a
// multiple of 32; the weight tail is masked.
template <int MR, int NR, bool WF32>
void tile(const uint16_t* xb, int ldxb, const void* w, int K, int n, float* y, int ldy) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  const size_t wrow = static_cast<size_t>(K);
  for (int k = 0; k < K; k += 32) {
    const __mmask32 mask = K - k >= 32 ? ~__mmask32{0} : (__mmask32{1} << (K - k)) - 1;
    __m512i xv[MR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_loadu_si512(xb + static_cast<size_t>(i) * ldxb + k);
#pragma GCC unroll 6
    for (int j = 0; j < NR; ++j) {
      const __m512i wv = load_w<WF32>(w, (n + j) * wrow + k, mask);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i)
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], reinterpret_cast<__m512bh>(xv[i]), reinterpret_cast<__m512bh>(wv));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) y[static_cast<size_t>(i) * ldy + n + j] = hsum16(acc[i][j]);
}

constexpr int kMR = 4;
constexpr int kNR = 6;
constexpr int kNB = 96;  // weight rows per column block (bf16: half the bytes of the f32 kernel's 48)

using TileFn = void (*)(const uint16_t*, int, const void*, int, int, float*, int);

template <bool WF32, int MR, int... NRs>
constexpr std::array<TileFn, kNR> row_of(std::integer_sequence<int, NRs...>) {
  return {&tile<MR, NRs + 1, WF32>...};
}

template <bool WF32>
constexpr std::array<std::array<TileFn, kNR>, kMR> make_table() {
  using S = std::make_integer_sequence<int, kNR>;
  return {row_of<WF32, 1>(S{}), row_of<WF32, 2>(S{}), row_of<WF32, 3>(S{}), row_of<WF32, 4>(S{})};
}

constexpr auto kTableBf16 = make_table<false>();
constexpr auto kTableF32 = make_table<true>();

}  // namespace

void matmul_bf16_avx512(const uint16_t* xb, int M, int K, int ldxb, const void* w, DType wdtype, int n0, int n1,
                        float* y, int ldy) {
  const auto& table = wdtype == DType::bf16 ? kTableBf16 : kTableF32;
  if (M == 1) {  // one linear weight stream (see matmul_avx512)
    for (int n = n0; n < n1; ++n) table[0][0](xb, ldxb, w, K, n, y, ldy);
    return;
  }
  for (int nb = n0; nb < n1; nb += kNB) {
    const int ne = std::min(nb + kNB, n1);
    for (int m = 0; m < M; m += kMR) {
      const int mr = std::min(kMR, M - m);
      for (int n = nb; n < ne; n += kNR)
        table[mr - 1][std::min(kNR, ne - n) - 1](xb + static_cast<size_t>(m) * ldxb, ldxb, w, K, n,
                                                 y + static_cast<size_t>(m) * ldy, ldy);
    }
  }
}

}  // namespace zr::kernels::detail
