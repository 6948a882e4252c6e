#include "model/kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "model/kernels_internal.h"

namespace zr::kernels {

namespace {

std::atomic<bool> g_force_portable{false};

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has;
}

// The fixed reduction tree; kernels_avx512.cpp performs the same adds with shuffles.
inline float hsum16(const float* a) {
  float s8[8], s4[4], s2[2];
  for (int i = 0; i < 8; ++i) s8[i] = a[i] + a[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  for (int i = 0; i < 2; ++i) s2[i] = s4[i] + s4[i + 2];
  return s2[0] + s2[1];
}

template <class WT>
inline float load_w(const WT* w, int k) {
  if constexpr (sizeof(WT) == 2) return bf16_to_f32(w[k]);
  else return w[k];
}

template <class WT>
float dot_portable(const float* x, const WT* w, int K) {
  float acc[detail::kLanes] = {};
  for (int k0 = 0; k0 < K; k0 += detail::kLanes) {
    for (int l = 0; l < detail::kLanes; ++l) {
      int k = k0 + l;
      float xv = k < K ? x[k] : 0.0f;
      float wv = k < K ? load_w(w, k) : 0.0f;
      acc[l] = std::fma(xv, wv, acc[l]);
    }
  }
  return hsum16(acc);
}

}  // namespace

namespace detail {

void matmul_portable(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n0, int n1, float* y,
                     int ldy) {
  for (int m = 0; m < M; ++m) {
    for (int n = n0; n < n1; ++n) {
      float v = wdtype == DType::bf16 ? dot_portable(x + static_cast<size_t>(m) * ldx,
                                                     static_cast<const uint16_t*>(w) + static_cast<size_t>(n) * K, K)
                                      : dot_portable(x + static_cast<size_t>(m) * ldx,
                                                     static_cast<const float*>(w) + static_cast<size_t>(n) * K, K);
      y[static_cast<size_t>(m) * ldy + n] = v;
    }
  }
}

// vdpbf16ps on one lane, as Intel defines it: bf16 denormals read as 0, each product added with
// one rounding (a bf16 x bf16 product is exact in f32), odd element first, f32 denormals flushed.
namespace {
inline float bf16_daz(uint16_t h) { return (h & 0x7f80u) == 0 ? 0.0f : bf16_to_f32(h); }
inline float ftz(float v) { return std::fabs(v) < std::numeric_limits<float>::min() ? std::copysign(0.0f, v) : v; }
inline uint16_t weight_bf16(const void* w, DType wdtype, size_t i) {
  return wdtype == DType::bf16 ? static_cast<const uint16_t*>(w)[i] : f32_to_bf16(static_cast<const float*>(w)[i]);
}
}  // namespace

void matmul_bf16_portable(const uint16_t* xb, int M, int K, int ldxb, const void* w, DType wdtype, int n0, int n1,
                          float* y, int ldy) {
  for (int m = 0; m < M; ++m) {
    const uint16_t* x = xb + static_cast<size_t>(m) * ldxb;
    for (int n = n0; n < n1; ++n) {
      const size_t row = static_cast<size_t>(n) * K;
      float acc[kLanes] = {};
      for (int k0 = 0; k0 < K; k0 += 2 * kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          for (int k : {k0 + 2 * l + 1, k0 + 2 * l}) {
            // the zero padding adds +0, as the AVX-512 path's masked lanes do
            const float p = k < K ? bf16_daz(x[k]) * bf16_daz(weight_bf16(w, wdtype, row + k)) : 0.0f;
            acc[l] = ftz(acc[l] + p);
          }
        }
      }
      y[static_cast<size_t>(m) * ldy + n] = hsum16(acc);
    }
  }
}

}  // namespace detail

bool using_avx512() { return cpu_has_avx512() && !g_force_portable.load(); }
void force_portable(bool on) { g_force_portable.store(on); }
bool using_avx512_bf16() {
  static const bool has = cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
  return has && !g_force_portable.load();
}
const char* compute_name(Compute c) { return c == Compute::bf16 ? "bf16" : "f32"; }

namespace {
// Tasks per pool thread (claimed dynamically). A few rows of x are bound by memory and finish fast,
// so a core held up by something else leaves its partner spinning: smaller tasks even that out
// (bench_engine batch 1: 4 per thread beat 2 and 8). Many rows keep two large tasks per thread,
// each several column blocks long (the kernel prefetches the next block while it computes one).
int tasks_per_thread(int M) { return M <= 4 ? 4 : 2; }

// The products of one x, any weight, any column range: picks the implementation and, in bf16
// mode, rounds x once (rows zero-padded to a multiple of 32) for every slice and weight of the call.
// The bf16 rows live in a buffer of the calling thread, reused across calls.
class Products {
 public:
  Products(const float* x, int M, int K, int ldx, Compute compute) : x_(x), M_(M), K_(K), ldx_(ldx), compute_(compute) {
    if (compute != Compute::bf16) return;
    thread_local std::vector<uint16_t> rows;
    ldxb_ = (K + 31) / 32 * 32;
    if (ldxb_ % 1024 == 0) ldxb_ += 32;  // 2 KiB-aligned rows share L1 sets (padded_stride)
    rows.assign(static_cast<size_t>(M) * ldxb_, 0);
    for (int m = 0; m < M; ++m)
      for (int k = 0; k < K; ++k)
        rows[static_cast<size_t>(m) * ldxb_ + k] = f32_to_bf16(x[static_cast<size_t>(m) * ldx + k]);
    xb_ = rows.data();
  }
  void operator()(const void* w, DType wdtype, int n0, int n1, float* y, int ldy) const {
    if (compute_ == Compute::bf16) {
      (using_avx512_bf16() ? detail::matmul_bf16_avx512 : detail::matmul_bf16_portable)(xb_, M_, K_, ldxb_, w, wdtype,
                                                                                        n0, n1, y, ldy);
      return;
    }
    (using_avx512() ? detail::matmul_avx512 : detail::matmul_portable)(x_, M_, K_, ldx_, w, wdtype, n0, n1, y, ldy);
  }

 private:
  const float* x_;
  int M_, K_, ldx_;
  Compute compute_;
  const uint16_t* xb_ = nullptr;
  int ldxb_ = 0;
};
}  // namespace

void matmul(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n_begin, int n_end, float* y,
            int ldy, ThreadPool* pool, Compute compute) {
  ZR_CHECK(wdtype == DType::f32 || wdtype == DType::bf16);
  if (M <= 0 || n_end <= n_begin) return;
  const Products block(x, M, K, ldx, compute);
  int threads = pool ? pool->size() : 1;
  int n = n_end - n_begin;
  // Split the output columns: each task streams a disjoint slice of w. Slices are multiples of 48
  // rows (the kernel's column block) so tiles stay full; any split gives the same bits.
  int tasks = pool ? std::min(threads * tasks_per_thread(M), std::max(1, n / 48)) : 1;
  if (tasks <= 1) {
    block(w, wdtype, n_begin, n_end, y, ldy);
    return;
  }
  int per = ((n + tasks - 1) / tasks + 47) / 48 * 48;
  pool->parallel_for(tasks, [&](int t) {
    int a = n_begin + t * per, b = std::min(n_end, a + per);
    if (a < b) block(w, wdtype, a, b, y, ldy);
  });
}

void matmul(const float* x, int M, const Weight& w, float* y, ThreadPool* pool, Compute compute) {
  ZR_CHECK(w.shape.size() == 2);
  int N = static_cast<int>(w.shape[0]), K = static_cast<int>(w.shape[1]);
  matmul(x, M, K, K, w.data, w.dtype, 0, N, y, N, pool, compute);
}

void matmul(const float* x, int M, int ldx, const Weight& w, float* y, int ldy, ThreadPool* pool, Compute compute) {
  ZR_CHECK(w.shape.size() == 2);
  int N = static_cast<int>(w.shape[0]), K = static_cast<int>(w.shape[1]);
  matmul(x, M, K, ldx, w.data, w.dtype, 0, N, y, ldy, pool, compute);
}

void matmul_group(const float* x, int M, int ldx, std::initializer_list<MatmulOut> outs, ThreadPool* pool,
                  Compute compute) {
  struct Piece {
    const Weight* w;
    float* y;
    int ldy;
    int begin;  // first column of this weight in the combined range
  };
  std::vector<Piece> pieces;
  int total = 0;
  for (const MatmulOut& o : outs) {
    pieces.push_back({o.w, o.y, o.ldy > 0 ? o.ldy : static_cast<int>(o.w->shape[0]), total});
    total += static_cast<int>(o.w->shape[0]);
  }
  const int K = static_cast<int>(pieces[0].w->shape[1]);
  if (ldx <= 0) ldx = K;
  const Products block(x, M, K, ldx, compute);
  int tasks = pool ? std::min(pool->size() * tasks_per_thread(M), std::max(1, total / 48)) : 1;
  int per = ((total + tasks - 1) / tasks + 47) / 48 * 48;
  auto run = [&](int t) {
    int a = t * per, b = std::min(total, a + per);
    for (const Piece& p : pieces) {  // the part of [a, b) that falls in this weight
      int n = static_cast<int>(p.w->shape[0]);
      int lo = std::max(a, p.begin) - p.begin, hi = std::min(b, p.begin + n) - p.begin;
      if (lo < hi) block(p.w->data, p.w->dtype, lo, hi, p.y, p.ldy);
    }
  };
  if (tasks <= 1) return run(0);
  pool->parallel_for(tasks, run);
}

float dot(const float* a, const float* b, int n) {
  return using_avx512() ? detail::dot_avx512(a, b, n) : dot_portable(a, b, n);
}

namespace {

inline float widen(float v) { return v; }
inline float widen(uint16_t v) { return bf16_to_f32(v); }

// The portable chains of kernels.h's attention, for either KV element type (bf16 widened exactly).
template <class E>
void scores_portable(const float* q, int hd, const E* const* kt_blocks, int bs, int n, float scale, float* scores) {
  for (int j = 0; j < n; ++j) {
    const E* kt = kt_blocks[j / bs] + j % bs;
    float acc = 0.0f;
    for (int i = 0; i < hd; ++i) acc = std::fma(q[i], widen(kt[static_cast<size_t>(i) * bs]), acc);
    scores[j] = acc * scale;
  }
}

template <class E>
void values_portable(const float* p, const E* const* v_blocks, int bs, int v_stride, int n, int hd, float* out,
                     bool accumulate) {
  if (!accumulate) std::fill(out, out + hd, 0.0f);
  for (int j = 0; j < n; ++j) {
    const E* v = v_blocks[j / bs] + static_cast<size_t>(j % bs) * v_stride;
    for (int i = 0; i < hd; ++i) out[i] = std::fma(p[j], widen(v[i]), out[i]);
  }
}

template <class E>
void scores_heads(const float* q, int hd, int heads, const E* const* kt, int nblk, int bs, int n, float scale,
                  float* scores, size_t score_stride) {
  if (using_avx512())
    return detail::attention_scores_heads_avx512(q, hd, heads, kt, nblk, bs, n, scale, scores, score_stride);
  for (int h = 0; h < heads; ++h)
    scores_portable(q + static_cast<size_t>(h) * hd, hd, kt + static_cast<size_t>(h) * nblk, bs, n, scale,
                    scores + h * score_stride);
}

template <class E>
void values_heads(const float* p, size_t p_stride, int heads, const E* const* v, int nblk, int bs, int v_stride, int n,
                  int hd, float* out, size_t out_stride, bool accumulate) {
  if (using_avx512())
    return detail::attention_values_heads_avx512(p, p_stride, heads, v, nblk, bs, v_stride, n, hd, out, out_stride,
                                                 accumulate);
  for (int h = 0; h < heads; ++h)
    values_portable(p + h * p_stride, v + static_cast<size_t>(h) * nblk, bs, v_stride, n, hd, out + h * out_stride,
                    accumulate);
}

}  // namespace

void attention_scores(const float* q, int hd, const float* const* kt_blocks, int bs, int n, float scale,
                      float* scores) {
  scores_heads(q, hd, 1, kt_blocks, (n + bs - 1) / bs, bs, n, scale, scores, 0);
}

void attention_scores_heads(const float* q, int hd, int heads, const float* const* kt, int nblk, int bs, int n,
                            float scale, float* scores, size_t score_stride) {
  scores_heads(q, hd, heads, kt, nblk, bs, n, scale, scores, score_stride);
}

void attention_scores_heads(const float* q, int hd, int heads, const uint16_t* const* kt, int nblk, int bs, int n,
                            float scale, float* scores, size_t score_stride) {
  scores_heads(q, hd, heads, kt, nblk, bs, n, scale, scores, score_stride);
}

void attention_values(const float* p, const float* const* v_blocks, int bs, int v_stride, int n, int hd, float* out,
                      bool accumulate) {
  values_heads(p, 0, 1, v_blocks, (n + bs - 1) / bs, bs, v_stride, n, hd, out, 0, accumulate);
}

void attention_values_heads(const float* p, size_t p_stride, int heads, const float* const* v, int nblk, int bs,
                            int v_stride, int n, int hd, float* out, size_t out_stride, bool accumulate) {
  values_heads(p, p_stride, heads, v, nblk, bs, v_stride, n, hd, out, out_stride, accumulate);
}

void attention_values_heads(const float* p, size_t p_stride, int heads, const uint16_t* const* v, int nblk, int bs,
                            int v_stride, int n, int hd, float* out, size_t out_stride, bool accumulate) {
  values_heads(p, p_stride, heads, v, nblk, bs, v_stride, n, hd, out, out_stride, accumulate);
}

namespace {
float exp_poly(float x) {  // kernels.h, softmax: the same operations as the AVX-512 lanes
  using namespace detail::expc;
  if (x < kMin) return 0.0f;
  if (std::isnan(x)) return x;
  const float n = std::nearbyint(x * kLog2e);
  float r = std::fma(-n, kLn2Hi, x);
  r = std::fma(-n, kLn2Lo, r);
  float y = std::fma(kP0, r, kP1);
  y = std::fma(y, r, kP2);
  y = std::fma(y, r, kP3);
  y = std::fma(y, r, kP4);
  y = std::fma(y, r, kP5);
  y = std::fma(y, r * r, r);
  y = y + 1.0f;
  return std::ldexp(y, static_cast<int>(n));
}

// max of x[0, n), then the sum of exp(x[j] - max) in double, element j in lane j % 8, the lanes
// added (i, i+4), then (i, i+2), then (0, 1): the operations of the AVX-512 path. Stores the exps
// in `exps` when given (it may be x). Returns the sum; *max_out gets the max.
double max_and_exp_sum(const float* x, int n, float* exps, float* max_out) {
  float mx = -INFINITY;
  for (int j = 0; j < n; ++j) mx = std::max(mx, x[j]);
  double lane[8] = {};
  for (int j = 0; j < n; ++j) {
    const float e = exp_poly(x[j] - mx);
    if (exps) exps[j] = e;
    lane[j % 8] += e;
  }
  for (int i = 0; i < 4; ++i) lane[i] += lane[i + 4];
  for (int i = 0; i < 2; ++i) lane[i] += lane[i + 2];
  *max_out = mx;
  return lane[0] + lane[1];
}
}  // namespace

void softmax(float* x, int n) {
  if (using_avx512()) return detail::softmax_avx512(x, n);
  float mx;
  const float inv = static_cast<float>(1.0 / max_and_exp_sum(x, n, x, &mx));
  for (int j = 0; j < n; ++j) x[j] *= inv;
}

void rmsnorm(const float* x, const float* w, int d, float eps, float* out) {
  double ss = 0.0;
  for (int i = 0; i < d; ++i) ss += static_cast<double>(x[i]) * x[i];
  float inv = static_cast<float>(1.0 / std::sqrt(ss / d + eps));
  for (int i = 0; i < d; ++i) out[i] = (x[i] * inv) * w[i];
}

void silu_mul(const float* gate, const float* up, int n, float* out) {
  if (using_avx512()) return detail::silu_mul_avx512(gate, up, n, out);
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    const float e = exp_poly(std::min(-g, detail::expc::kMax));
    out[i] = (g / (1.0f + e)) * up[i];
  }
}

void rope_rotate(float* v, int head_dim, const float* cos_row, const float* sin_row) {
  int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    float a = v[i], b = v[i + half];
    v[i] = a * cos_row[i] - b * sin_row[i];
    v[i + half] = b * cos_row[i] + a * sin_row[i];
  }
}

void log_softmax(const float* x, int n, float* out) {
  if (using_avx512()) return detail::log_softmax_avx512(x, n, out);
  float mx;
  const float lse = static_cast<float>(std::log(max_and_exp_sum(x, n, nullptr, &mx)));
  for (int i = 0; i < n; ++i) out[i] = (x[i] - mx) - lse;
}

void exp(const float* x, int n, float* out) {
  if (using_avx512()) return detail::exp_avx512(x, n, out);
  for (int i = 0; i < n; ++i) out[i] = exp_poly(x[i]);
}

}  // namespace zr::kernels
