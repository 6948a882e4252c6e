#include "model/kernels_packed.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace zr::kernels {

int PackedMatrix::width(int g) const { return std::min(kGroup, (N - g * kGroup + 15) / 16 * 16); }

const void* PackedMatrix::group(int g) const {
  return static_cast<const char*>(storage.get()) + static_cast<size_t>(g) * kGroup * Kp * elem_size();
}

PackFormat pack_format(DType wdtype, Compute compute) {
  if (compute == Compute::bf16) return PackFormat::pairs;
  return wdtype == DType::bf16 ? PackFormat::bf16 : PackFormat::f32;
}

namespace {

// Anonymous mapping (huge pages where allowed, like ModelWeights::copy_to_anonymous_memory), so a
// pack streams across no 4 KiB page boundaries; heap when the mapping fails.
std::shared_ptr<void> alloc_pack(size_t bytes) {
  const size_t len = std::max<size_t>(bytes, 64);
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p != MAP_FAILED) {
    madvise(p, len, MADV_HUGEPAGE);
    return std::shared_ptr<void>(p, [len](void* q) { munmap(q, len); });
  }
  return std::shared_ptr<void>(std::aligned_alloc(64, (len + 63) / 64 * 64), std::free);
}

// Element (k, c) of a group of width W, in elements from the group's start.
template <PackFormat F>
inline size_t packed_index(int k, int c, int W) {
  if constexpr (F == PackFormat::pairs) return static_cast<size_t>(k / 2) * 2 * W + 2 * c + (k & 1);
  else return static_cast<size_t>(k) * W + c;
}

template <class Dst, class Src>
inline Dst convert_elem(Src v) {
  if constexpr (std::is_same_v<Dst, Src>) return v;
  else return f32_to_bf16(v);  // f32 weights packed as bf16 (pairs)
}

// Group g of the pack from the row-major weight (zero columns past N, zero k past K). A transpose
// in tiles of kTile k: each column reads its run of the tile contiguously, and the tile's writes
// (kTile x W elements, 12 KiB for f32) stay in L1 until every line of them is complete. Walking a
// column's whole K first (the first version) spread each output line's 16 writes over the group's
// K x W elements (L2) and ran at ~1.4 GB/s.
template <PackFormat F, class Src>
void pack_group_tiled(const Src* w, PackedMatrix& p, int g) {
  using Dst = std::conditional_t<F == PackFormat::f32, float, uint16_t>;
  constexpr int kTile = 64;
  const int W = p.width(g), n0 = g * kGroup, ncols = std::min(W, p.N - n0), K = p.K;
  Dst* base = reinterpret_cast<Dst*>(static_cast<char*>(p.storage.get()) +
                                     static_cast<size_t>(g) * kGroup * p.Kp * sizeof(Dst));
  for (int k0 = 0; k0 < K; k0 += kTile) {
    const int k1 = std::min(K, k0 + kTile);
    for (int c = 0; c < ncols; ++c) {
      const Src* row = w + static_cast<size_t>(n0 + c) * K;
      for (int k = k0; k < k1; ++k) base[packed_index<F>(k, c, W)] = convert_elem<Dst>(row[k]);
    }
    for (int k = k0; k < k1; ++k)
      for (int c = ncols; c < W; ++c) base[packed_index<F>(k, c, W)] = 0;
  }
  for (int k = K; k < p.Kp; ++k)  // pairs of an odd K: the last pair's second half
    for (int c = 0; c < W; ++c) base[packed_index<F>(k, c, W)] = 0;
}

// The groups whose elements are 32 bits wide (f32, and pairs of an even K from bf16 weights: a pair
// is the 32-bit word at row + k) go through the AVX-512 transpose: 16 x 16 in registers.
bool pack_group_avx512(const void* w, DType dt, PackedMatrix& p, int g) {
  const bool f32 = p.format == PackFormat::f32,
             pairs = p.format == PackFormat::pairs && dt == DType::bf16 && p.K % 2 == 0;
  if (!using_avx512() || !(f32 || pairs)) return false;
  const int W = p.width(g), n0 = g * kGroup, ncols = std::min(W, p.N - n0);
  const size_t ld = f32 ? static_cast<size_t>(p.K) : static_cast<size_t>(p.K) / 2;  // 32-bit words per row
  auto* base = reinterpret_cast<uint32_t*>(static_cast<char*>(p.storage.get()) +
                                           static_cast<size_t>(g) * kGroup * p.Kp * p.elem_size());
  detail::pack_transpose32_avx512(static_cast<const uint32_t*>(w) + n0 * ld, ld, ncols, static_cast<int>(ld), base, W);
  return true;
}

void pack_group(const void* w, DType dt, PackedMatrix& p, int g) {
  if (pack_group_avx512(w, dt, p, g)) return;
  const bool bf = dt == DType::bf16;
  switch (p.format) {
    case PackFormat::f32:
      ZR_CHECK(!bf);
      return pack_group_tiled<PackFormat::f32>(static_cast<const float*>(w), p, g);
    case PackFormat::bf16:
      ZR_CHECK(bf);
      return pack_group_tiled<PackFormat::bf16>(static_cast<const uint16_t*>(w), p, g);
    case PackFormat::pairs:
      if (bf) return pack_group_tiled<PackFormat::pairs>(static_cast<const uint16_t*>(w), p, g);
      return pack_group_tiled<PackFormat::pairs>(static_cast<const float*>(w), p, g);
  }
}

// vdpbf16ps on one lane, as kernels.h defines it (the emulation of kernels.cpp).
inline float bf16_daz(uint16_t h) { return (h & 0x7f80u) == 0 ? 0.0f : bf16_to_f32(h); }
inline float ftz(float v) { return std::fabs(v) < std::numeric_limits<float>::min() ? std::copysign(0.0f, v) : v; }

bool cpu_has_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

}  // namespace

std::shared_ptr<PackedMatrix> pack(const void* w, DType wdtype, int N, int K, Compute compute, ThreadPool* pool) {
  auto p = alloc_packed(wdtype, N, K, compute);
  repack(w, wdtype, *p, pool);
  return p;
}

void repack(const void* w, DType wdtype, PackedMatrix& p, ThreadPool* pool) {
  ZR_CHECK(wdtype == DType::f32 || wdtype == DType::bf16);
  if (pool && p.groups() > 1) pool->parallel_for(p.groups(), [&](int g) { pack_group(w, wdtype, p, g); });
  else repack_groups(w, wdtype, p, 0, p.groups());
}

void repack_groups(const void* w, DType wdtype, PackedMatrix& p, int g0, int g1) {
  ZR_CHECK(wdtype == DType::f32 || wdtype == DType::bf16);
  for (int g = g0; g < g1; ++g) pack_group(w, wdtype, p, g);
}

std::shared_ptr<PackedMatrix> alloc_packed(DType wdtype, int N, int K, Compute compute) {
  ZR_CHECK(wdtype == DType::f32 || wdtype == DType::bf16);
  auto p = std::make_shared<PackedMatrix>();
  p->format = pack_format(wdtype, compute);
  p->N = N;
  p->K = K;
  p->Kp = p->format == PackFormat::pairs ? (K + 1) / 2 * 2 : K;
  p->bytes = static_cast<size_t>(p->groups()) * kGroup * p->Kp * p->elem_size();
  p->storage = alloc_pack(p->bytes);
  return p;
}

namespace detail {

void packed_portable(const float* x, const uint16_t* xb, int M, int ldx, int ldxb, const PackedMatrix& w, int g0,
                     int g1, float* y, int ldy) {
  for (int g = g0; g < g1; ++g) {
    const int W = w.width(g), n0 = g * kGroup, ncols = std::min(W, w.N - n0);
    const float* wf = static_cast<const float*>(w.group(g));
    const uint16_t* wh = static_cast<const uint16_t*>(w.group(g));
    for (int m = 0; m < M; ++m) {
      for (int c = 0; c < ncols; ++c) {
        float acc = 0.0f;
        if (w.format == PackFormat::pairs) {
          const uint16_t* xr = xb + static_cast<size_t>(m) * ldxb;
          for (int kp = 0; kp < w.Kp / 2; ++kp)
            for (int j : {1, 0}) {
              const int k = 2 * kp + j;
              acc = ftz(acc + bf16_daz(xr[k]) * bf16_daz(wh[static_cast<size_t>(kp) * 2 * W + 2 * c + j]));
            }
        } else {
          const float* xr = x + static_cast<size_t>(m) * ldx;
          for (int k = 0; k < w.K; ++k) {
            const size_t i = static_cast<size_t>(k) * W + c;
            acc = std::fma(xr[k], w.format == PackFormat::f32 ? wf[i] : bf16_to_f32(wh[i]), acc);
          }
        }
        y[static_cast<size_t>(m) * ldy + n0 + c] = acc;
      }
    }
  }
}

}  // namespace detail

namespace {

// x rounded to bf16 for a pairs product, rows zero-padded to Kp (a thread-local buffer, reused).
struct Bf16Rows {
  const uint16_t* data = nullptr;
  int ld = 0;
  Bf16Rows(const float* x, int M, int K, int ldx, int Kp) {
    thread_local std::vector<uint16_t> rows;
    ld = (Kp + 31) / 32 * 32;
    if (ld % 1024 == 0) ld += 32;  // 2 KiB-aligned rows share L1 sets (padded_stride)
    if (rows.size() < static_cast<size_t>(M) * ld) rows.resize(static_cast<size_t>(M) * ld);
    if (using_avx512() && cpu_has_bf16()) {
      detail::round_rows_bf16_avx512(x, M, K, ldx, rows.data(), ld);
    } else {
      for (int m = 0; m < M; ++m)
        for (int k = 0; k < ld; ++k)
          rows[static_cast<size_t>(m) * ld + k] = k < K ? f32_to_bf16(x[static_cast<size_t>(m) * ldx + k]) : 0;
    }
    data = rows.data();
  }
};

void run_groups(const float* x, const Bf16Rows* xb, int M, int ldx, const PackedMatrix& w, int g0, int g1, float* y,
                int ldy) {
  if (w.format == PackFormat::pairs) {
    if (using_avx512() && cpu_has_bf16()) return detail::packed_pairs_avx512(xb->data, M, xb->ld, w, g0, g1, y, ldy);
    return detail::packed_portable(x, xb->data, M, ldx, xb->ld, w, g0, g1, y, ldy);
  }
  if (using_avx512()) return detail::packed_avx512(x, M, ldx, w, g0, g1, y, ldy);
  detail::packed_portable(x, nullptr, M, ldx, 0, w, g0, g1, y, ldy);
}

// Four tasks per thread (claimed as threads come free): a core held up by a neighbour on this shared
// host then leaves less than a quarter of its share to wait for (with two, the caller spun ~3% of
// the batch-64 step in parallel_for).
int tasks_for(int groups, ThreadPool* pool) {
  if (!pool || pool->size() == 1) return 1;
  return std::max(1, std::min(groups, pool->size() * 4));
}

}  // namespace

void matmul_packed(const float* x, int M, int ldx, const PackedMatrix& w, float* y, int ldy, ThreadPool* pool) {
  matmul_packed_group(x, M, ldx, {{&w, y, ldy}}, pool);
}

void matmul_packed_group(const float* x, int M, int ldx, std::initializer_list<PackedOut> outs, ThreadPool* pool) {
  if (M <= 0) return;
  const PackedOut* o = outs.begin();
  const int n_out = static_cast<int>(outs.size());
  const PackedMatrix& first = *o[0].w;
  std::optional<Bf16Rows> xb;
  if (first.format == PackFormat::pairs) xb.emplace(x, M, first.K, ldx, first.Kp);
  int total = 0;  // groups over all outputs, in order
  for (int i = 0; i < n_out; ++i) {
    ZR_CHECK(o[i].w->K == first.K && o[i].w->format == first.format);
    total += o[i].w->groups();
  }
  const int tasks = tasks_for(total, pool);
  auto run = [&](int t) {
    const int a = static_cast<int>(static_cast<int64_t>(total) * t / tasks);
    const int b = static_cast<int>(static_cast<int64_t>(total) * (t + 1) / tasks);
    for (int i = 0, base = 0; i < n_out; base += o[i].w->groups(), ++i) {
      const int lo = std::max(a, base) - base, hi = std::min(b, base + o[i].w->groups()) - base;
      if (lo < hi) run_groups(x, xb ? &*xb : nullptr, M, ldx, *o[i].w, lo, hi, o[i].y, o[i].ldy);
    }
  };
  if (tasks <= 1) return run(0);
  pool->parallel_for(tasks, run);
}

}  // namespace zr::kernels
