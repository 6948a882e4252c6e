#include "model/kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>

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

void matmul_portable(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n0,
                     int n1, float* y, int ldy) {
  for (int m = 0; m < M; ++m) {
    for (int n = n0; n < n1; ++n) {
      float v = wdtype == DType::bf16
                    ? dot_portable(x + static_cast<size_t>(m) * ldx,
                                   static_cast<const uint16_t*>(w) + static_cast<size_t>(n) * K, K)
                    : dot_portable(x + static_cast<size_t>(m) * ldx,
                                   static_cast<const float*>(w) + static_cast<size_t>(n) * K, K);
      y[static_cast<size_t>(m) * ldy + n] = v;
    }
  }
}

}  // namespace detail

bool using_avx512() { return cpu_has_avx512() && !g_force_portable.load(); }
void force_portable(bool on) { g_force_portable.store(on); }

namespace {
// Tasks per pool thread (claimed dynamically). A few rows of x are bound by memory and finish fast,
// so a core held up by something else leaves its partner spinning: smaller tasks even that out
// (bench_engine batch 1: 4 per thread beat 2 and 8). Many rows keep two large tasks per thread,
// each several column blocks long (the kernel prefetches the next block while it computes one).
int tasks_per_thread(int M) { return M <= 4 ? 4 : 2; }
}  // namespace

void matmul(const float* x, int M, int K, int ldx, const void* w, DType wdtype, int n_begin,
            int n_end, float* y, int ldy, ThreadPool* pool) {
  ZR_CHECK(wdtype == DType::f32 || wdtype == DType::bf16);
  if (M <= 0 || n_end <= n_begin) return;
  auto block = using_avx512() ? detail::matmul_avx512 : detail::matmul_portable;
  int threads = pool ? pool->size() : 1;
  int n = n_end - n_begin;
  // Split the output columns: each task streams a disjoint slice of w. Slices are multiples of 48
  // rows (the kernel's column block) so tiles stay full; any split gives the same bits.
  int tasks = pool ? std::min(threads * tasks_per_thread(M), std::max(1, n / 48)) : 1;
  if (tasks <= 1) {
    block(x, M, K, ldx, w, wdtype, n_begin, n_end, y, ldy);
    return;
  }
  int per = ((n + tasks - 1) / tasks + 47) / 48 * 48;
  pool->parallel_for(tasks, [&](int t) {
    int a = n_begin + t * per, b = std::min(n_end, a + per);
    if (a < b) block(x, M, K, ldx, w, wdtype, a, b, y, ldy);
  });
}

void matmul(const float* x, int M, const Weight& w, float* y, ThreadPool* pool) {
  ZR_CHECK(w.shape.size() == 2);
  int N = static_cast<int>(w.shape[0]), K = static_cast<int>(w.shape[1]);
  matmul(x, M, K, K, w.data, w.dtype, 0, N, y, N, pool);
}

void matmul(const float* x, int M, int ldx, const Weight& w, float* y, int ldy, ThreadPool* pool) {
  ZR_CHECK(w.shape.size() == 2);
  int N = static_cast<int>(w.shape[0]), K = static_cast<int>(w.shape[1]);
  matmul(x, M, K, ldx, w.data, w.dtype, 0, N, y, ldy, pool);
}

void matmul_group(const float* x, int M, int ldx, std::initializer_list<MatmulOut> outs, ThreadPool* pool) {
  auto block = using_avx512() ? detail::matmul_avx512 : detail::matmul_portable;
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
  int tasks = pool ? std::min(pool->size() * tasks_per_thread(M), std::max(1, total / 48)) : 1;
  int per = ((total + tasks - 1) / tasks + 47) / 48 * 48;
  auto run = [&](int t) {
    int a = t * per, b = std::min(total, a + per);
    for (const Piece& p : pieces) {  // the part of [a, b) that falls in this weight
      int n = static_cast<int>(p.w->shape[0]);
      int lo = std::max(a, p.begin) - p.begin, hi = std::min(b, p.begin + n) - p.begin;
      if (lo < hi) block(x, M, K, ldx, p.w->data, p.w->dtype, lo, hi, p.y, p.ldy);
    }
  };
  if (tasks <= 1) return run(0);
  pool->parallel_for(tasks, run);
}

float dot(const float* a, const float* b, int n) {
  return using_avx512() ? detail::dot_avx512(a, b, n) : dot_portable(a, b, n);
}

void attention_scores(const float* q, int hd, const float* const* kt_blocks, int bs, int n, float scale,
                      float* scores) {
  if (using_avx512())
    return detail::attention_scores_heads_avx512(q, hd, 1, kt_blocks, (n + bs - 1) / bs, bs, n, scale, scores, 0);
  for (int j = 0; j < n; ++j) {
    const float* kt = kt_blocks[j / bs] + j % bs;
    float acc = 0.0f;
    for (int i = 0; i < hd; ++i) acc = std::fma(q[i], kt[static_cast<size_t>(i) * bs], acc);
    scores[j] = acc * scale;
  }
}

void attention_scores_heads(const float* q, int hd, int heads, const float* const* kt, int nblk, int bs, int n,
                            float scale, float* scores, size_t score_stride) {
  if (using_avx512())
    return detail::attention_scores_heads_avx512(q, hd, heads, kt, nblk, bs, n, scale, scores, score_stride);
  for (int h = 0; h < heads; ++h)
    attention_scores(q + static_cast<size_t>(h) * hd, hd, kt + static_cast<size_t>(h) * nblk, bs, n, scale,
                     scores + h * score_stride);
}

void attention_values(const float* p, const float* const* v_blocks, int bs, int v_stride, int n, int hd,
                      float* out, bool accumulate) {
  if (using_avx512())
    return detail::attention_values_heads_avx512(p, 0, 1, v_blocks, (n + bs - 1) / bs, bs, v_stride, n, hd, out, 0,
                                                 accumulate);
  if (!accumulate) std::fill(out, out + hd, 0.0f);
  for (int j = 0; j < n; ++j) {
    const float* v = v_blocks[j / bs] + static_cast<size_t>(j % bs) * v_stride;
    for (int i = 0; i < hd; ++i) out[i] = std::fma(p[j], v[i], out[i]);
  }
}

void attention_values_heads(const float* p, size_t p_stride, int heads, const float* const* v, int nblk, int bs,
                            int v_stride, int n, int hd, float* out, size_t out_stride, bool accumulate) {
  if (using_avx512())
    return detail::attention_values_heads_avx512(p, p_stride, heads, v, nblk, bs, v_stride, n, hd, out, out_stride,
                                                 accumulate);
  for (int h = 0; h < heads; ++h)
    attention_values(p + h * p_stride, v + static_cast<size_t>(h) * nblk, bs, v_stride, n, hd, out + h * out_stride,
                     accumulate);
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
