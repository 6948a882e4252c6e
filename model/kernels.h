// Compute kernels of the forward pass.
//
// Batch invariance is a property of these kernels: every output element is produced by the same
// sequence of float operations whatever else is computed in the same call (the number of rows M,
// the tile a row lands in, the thread that runs it). A dot product over K accumulates 16 lane
// partial sums with fused multiply-add over chunks of 16 (the last chunk zero-padded), then adds
// the 16 lanes in one fixed tree (hsum16). The AVX-512 path and the portable path follow the same
// recipe and give the same bits. OpenBLAS does not have this property (its result for a row depends
// on M and on sgemv vs sgemm: see bench/blas_invariance), so the forward does not call it.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "model/thread_pool.h"
#include "model/weights.h"

namespace zr::kernels {

// How a matmul multiplies. f32: the recipe above. bf16: x is rounded to bf16 (f32_to_bf16, RNE)
// and so are f32 weights (bf16 weights are used as stored); a dot product accumulates 16 f32 lane
// sums over chunks of 32 k, lane l taking the pair k = 32 c + 2 l, 2 l + 1 with one vdpbf16ps
// (Intel's definition: acc += x_odd * w_odd, then acc += x_even * w_even, each rounded to f32,
// bf16 denormals read as 0, f32 denormal results flushed to 0), the last chunk zero-padded, then
// hsum16. Batch-invariant like f32. The portable path emulates that definition; a CPU whose
// vdpbf16ps rounds differently gives other bits there than the portable path.
enum class Compute : uint8_t { f32, bf16 };
const char* compute_name(Compute c);
// True when the bf16 mode runs on vdpbf16ps (AVX512_BF16 and not force_portable).
bool using_avx512_bf16();

// True when the AVX-512 path is in use (else the portable path; both give identical bits).
bool using_avx512();
// For tests: force the portable path.
void force_portable(bool on);

// y[m, n] = sum_k x[m, k] * w[n, k] for m < M, n in [n_begin, n_end).
//   x: (M, K) row-major f32, row stride ldx; w: (N, K) row-major f32 or bf16 (a Linear weight);
//   y: (M, ldy) row-major, written at columns n.
void matmul(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n_begin, int n_end, float* y,
            int ldy, ThreadPool* pool, Compute compute = Compute::f32);
// Convenience: full weight, contiguous x and y.
void matmul(const float* x, int M, const Weight& w, float* y, ThreadPool* pool, Compute compute = Compute::f32);
// Full weight, x and y with row strides ldx and ldy.
void matmul(const float* x, int M, int ldx, const Weight& w, float* y, int ldy, ThreadPool* pool,
            Compute compute = Compute::f32);

// Several products of the same x in one parallel section: y_i = x * w_i^T (e.g. Q, K and V, or
// gate and up). One pool synchronisation instead of one per weight; the same bits as separate
// matmul calls.
// x: (M, K) row-major with row stride ldx (0: K).
struct MatmulOut {
  const Weight* w;
  float* y;     // (M, w.rows) row-major
  int ldy = 0;  // row stride of y (0: w.rows)
};
void matmul_group(const float* x, int M, int ldx, std::initializer_list<MatmulOut> outs, ThreadPool* pool,
                  Compute compute = Compute::f32);

// Row stride for an activation buffer of `width` floats that feeds a matmul: rows whose byte
// stride is a multiple of 2 KiB fall into the same L1 sets as each other (and as the weight rows
// of the tile), and the 4 x rows plus 6 weight rows of a tile then evict each other: a 64 x 2048
// by 2048 x 768 product ran at 114-157 GFLOP/s instead of 181-202. One cache line of padding
// spreads the rows over the sets.
inline int padded_stride(int width) { return width % 512 == 0 ? width + 16 : width; }

// Dot product with the invariant recipe above (f32 both sides).
float dot(const float* a, const float* b, int n);

// Attention of one query head over n positions of a paged KV cache (bs positions per block).
// Keys are stored transposed inside a block, so 16 positions' scores come from one FMA chain:
// key j, dim i is at kt_blocks[j / bs][i * bs + j % bs]. scores[j] = (sum_i q[i] * k_j[i]) * scale,
// the sum a sequential fused multiply-add chain over i (a pure function of q and k_j).
void attention_scores(const float* q, int hd, const float* const* kt_blocks, int bs, int n, float scale, float* scores);
// Several heads at once, over positions [0, n) held by nblk blocks (block b holds positions
// [b * bs, (b + 1) * bs)). Head h reads q + h * hd and the blocks kt[h * nblk + b] (its KV head's
// transposed keys: dim i, slot j at [i * bs + j]), and writes scores + h * score_stride. Each score
// is the chain of attention_scores: heads and blocks only run side by side (independent chains in
// flight), so the bits are those of one head at a time.
void attention_scores_heads(const float* q, int hd, int heads, const float* const* kt, int nblk, int bs, int n,
                            float scale, float* scores, size_t score_stride);
// out[i] = sum_j p[j] * v_j[i] (sequential FMA chain over j); value j, dim i is at
// v_blocks[j / bs][(j % bs) * v_stride + i]. With accumulate, the chain continues from out[i]
// (positions split into runs give the bits of one call over all of them).
void attention_values(const float* p, const float* const* v_blocks, int bs, int v_stride, int n, int hd, float* out,
                      bool accumulate = false);
// Several heads at once: head h reads p + h * p_stride and the blocks v[h * nblk + b] (its values:
// slot j, dim i at [j * v_stride + i]) and writes out + h * out_stride; the bits of attention_values.
void attention_values_heads(const float* p, size_t p_stride, int heads, const float* const* v, int nblk, int bs,
                            int v_stride, int n, int hd, float* out, size_t out_stride, bool accumulate);
// A bf16 KV cache (KvCache's --kv-dtype bf16): each key and value element is widened exactly to
// f32 as it is read, then the chains above run unchanged (the bits of the f32 kernels over the
// widened cache).
void attention_scores_heads(const float* q, int hd, int heads, const uint16_t* const* kt, int nblk, int bs, int n,
                            float scale, float* scores, size_t score_stride);
void attention_values_heads(const float* p, size_t p_stride, int heads, const uint16_t* const* v, int nblk, int bs,
                            int v_stride, int n, int hd, float* out, size_t out_stride, bool accumulate);

// In place: x[j] = exp(x[j] - max) / sum, the attention softmax. exp is a fixed polynomial (Cephes
// expf: range reduction by ln 2, degree-6 polynomial, fused multiply-adds; within 2 ulp of expf,
// arguments below -87 give 0); the sum is taken in double over 8 lanes (element j in lane j % 8,
// in order) added in a fixed tree. Both ISA paths do exactly these operations: same bits.
void softmax(float* x, int n);

// out = x / sqrt(mean(x^2) + eps) * w, one row of length d (mean accumulated in double). out may be x.
void rmsnorm(const float* x, const float* w, int d, float eps, float* out);
// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i], exp the softmax's (its
// argument capped at 88, where the quotient is already ~0); the same bits on both ISA paths.
void silu_mul(const float* gate, const float* up, int n, float* out);
// Hugging Face rotate_half RoPE on one head vector v (head_dim) at one position, using a
// precomputed (cos, sin) row of length head_dim / 2.
void rope_rotate(float* v, int head_dim, const float* cos_row, const float* sin_row);

// log_softmax over n values: max, then the sum of exp(x - max) (the softmax's exp and its 8-lane
// double sum in a fixed tree), so the result is a pure function of the values, the same bits on
// both ISA paths. out may be x.
void log_softmax(const float* x, int n, float* out);
// out[i] = exp(x[i]), the softmax's exp (x <= 88; below -87: 0). out may be x.
void exp(const float* x, int n, float* out);

}  // namespace zr::kernels
