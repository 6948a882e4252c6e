// Packed matmul: a Linear weight (N, K) repacked once into column panels for a register-blocked
// micro-kernel (BLIS-style), and the matmul that reads it.
//
// Layout: output columns in groups of kGroup = 48 (three 16-wide panels; the last group narrower,
// its width rounded up to 16 with zero columns). A group is k-major: for each k the group's
// columns side by side, so a group is one linear stream of K x width elements.
//   f32    : f32 weights, element (k, c) at group + k * width + c
//   bf16   : bf16 weights read in f32 mode (widened exactly as they are loaded)
//   pairs  : bf16 compute (vdpbf16ps): pairs (k, k+1) of a column adjacent, element (k, c) at
//            group + (k / 2) * 2 * width + 2 * c + k % 2, K padded to even with a zero
//
// Summation order (what batch invariance rests on): each output element is one accumulator that
// takes k = 0, 1, ..., K - 1 in order from +0 (f32: one fused multiply-add per k; pairs: one
// vdpbf16ps per pair, lane arithmetic as kernels.h's Compute::bf16 defines it: odd k first, bf16
// denormals read as 0, f32 denormal results flushed). No lane reduction at the end. The order does
// not depend on M, on the row tile, on the thread or on K blocking (a partial sum waits in y as an
// exact f32), so any batch gives the same bits per row. The portable path does the same operations.
// These are other bits than the unpacked recipe of kernels.h (16 lanes + hsum16): a model computes
// with one or the other everywhere (the transformer uses packs for every matmul weight).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>

#include "model/kernels.h"

namespace zr::kernels {

enum class PackFormat : uint8_t { f32, bf16, pairs };

constexpr int kGroup = 48;  // output columns per group (3 AVX-512 panels of 16)

// One packed weight. Owns its bytes (64-byte aligned, huge pages where the kernel allows).
struct PackedMatrix {
  PackFormat format = PackFormat::f32;
  int N = 0, K = 0;  // the weight's shape (rows = output columns, cols = reduction)
  int Kp = 0;        // K, or K rounded up to even for pairs
  std::shared_ptr<void> storage;
  size_t bytes = 0;
  int groups() const { return (N + kGroup - 1) / kGroup; }
  // Width of group g (16, 32 or 48) and its first element.
  int width(int g) const;
  const void* group(int g) const;
  size_t elem_size() const { return format == PackFormat::f32 ? 4 : 2; }
};

// The format a weight of dtype `wdtype` is packed into for `compute`.
PackFormat pack_format(DType wdtype, Compute compute);
// Packs w (N, K) row-major f32 or bf16 (f32 weights are rounded with f32_to_bf16 for pairs). With a
// pool the groups are packed in parallel.
std::shared_ptr<PackedMatrix> pack(const void* w, DType wdtype, int N, int K, Compute compute,
                                   ThreadPool* pool = nullptr);
// Packs w again into p's storage (same shape and format as p was made for): a commit's new bytes
// into the pack the old ones used, with no fresh pages to fault in.
void repack(const void* w, DType wdtype, PackedMatrix& p, ThreadPool* pool = nullptr);
// Groups [g0, g1) of repack, on the calling thread (staging splits a version's groups over its own
// threads: model/weight_packs.h).
void repack_groups(const void* w, DType wdtype, PackedMatrix& p, int g0, int g1);
// A pack of that shape and format with its storage allocated (contents undefined until repacked).
std::shared_ptr<PackedMatrix> alloc_packed(DType wdtype, int N, int K, Compute compute);

// y[m, n] = sum_k x[m, k] * w[n, k], m < M, every n < N: x (M, K) f32 rows ldx apart, y (M, ldy).
// The compute mode is the pack's (pairs: x is rounded to bf16 first).
void matmul_packed(const float* x, int M, int ldx, const PackedMatrix& w, float* y, int ldy, ThreadPool* pool);

// Several packed products of the same x in one parallel section (Q, K, V or gate, up).
struct PackedOut {
  const PackedMatrix* w;
  float* y;
  int ldy;
};
void matmul_packed_group(const float* x, int M, int ldx, std::initializer_list<PackedOut> outs, ThreadPool* pool);

namespace detail {
// Rows [0, M) x groups [g0, g1) of one packed product. xb: x rounded to bf16 (rows ldxb apart,
// zero-padded to Kp) for pairs, else null.
void packed_portable(const float* x, const uint16_t* xb, int M, int ldx, int ldxb, const PackedMatrix& w, int g0,
                     int g1, float* y, int ldy);
void packed_avx512(const float* x, int M, int ldx, const PackedMatrix& w, int g0, int g1, float* y, int ldy);
// out rows (ld apart, ld a multiple of 16) = x rounded with f32_to_bf16, zeros past K.
void round_rows_bf16_avx512(const float* x, int M, int K, int ldx, uint16_t* out, int ld);
// dst[k * W + c] = w[c * ld + k] for k < kn, c < W (zero for c >= ncols): a group of 32-bit
// elements (f32, or the bf16 pairs of an even K) transposed 16 x 16 in registers.
void pack_transpose32_avx512(const uint32_t* w, size_t ld, int ncols, int kn, uint32_t* dst, int W);
void packed_pairs_avx512(const uint16_t* xb, int M, int ldxb, const PackedMatrix& w, int g0, int g1, float* y, int ldy);
}  // namespace detail

}  // namespace zr::kernels
