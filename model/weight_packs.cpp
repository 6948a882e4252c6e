#include "model/weight_packs.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iterator>
#include <string>
#include <thread>

namespace zr {

namespace {

// The matmul weights of a layer, in the order of their slots.
constexpr TensorRole kLayerMats[] = {TensorRole::wq,     TensorRole::wk,   TensorRole::wv,    TensorRole::wo,
                                     TensorRole::w_gate, TensorRole::w_up, TensorRole::w_down};
constexpr int kNumLayerMats = static_cast<int>(std::size(kLayerMats));

// Groups per unit of staged packing work: small enough that two threads finish together, large
// enough that claiming a unit costs nothing (16 groups of a 768-wide f32 weight: 2.4 MB).
constexpr int kGroupsPerUnit = 16;

int this_thread_priority() { return getpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid))); }
void set_thread_priority(int nice) { setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), nice); }

struct PackJob {
  const Weight* w;
  kernels::PackedMatrix* m;
};

// Every group of every job, split into units that `threads` threads claim in turn.
void pack_jobs(const std::vector<PackJob>& jobs, int threads) {
  struct Unit {
    int job, g0, g1;
  };
  std::vector<Unit> units;
  for (size_t j = 0; j < jobs.size(); ++j)
    for (int g = 0; g < jobs[j].m->groups(); g += kGroupsPerUnit)
      units.push_back({static_cast<int>(j), g, std::min(jobs[j].m->groups(), g + kGroupsPerUnit)});
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units.size();) {
      const PackJob& j = jobs[static_cast<size_t>(units[u].job)];
      kernels::repack_groups(j.w->data, j.w->dtype, *j.m, units[u].g0, units[u].g1);
    }
  };
  const int nice = this_thread_priority();
  std::vector<std::thread> helpers;
  const int n_helpers = std::min(std::max(threads, 1) - 1, static_cast<int>(units.size()) - 1);
  for (int t = 0; t < n_helpers; ++t)
    helpers.emplace_back([&, nice] {
      set_thread_priority(nice);  // staging runs below the compute threads; its helpers too
      work();
    });
  work();
  for (std::thread& t : helpers) t.join();
}

}  // namespace

std::vector<PackShape> packed_shapes(const ModelWeights& w) {
  std::vector<PackShape> out;
  auto add = [&](TensorRole role, int layer) {
    if (!w.has(role, layer)) return;
    const Weight& wt = w.get(role, layer);
    if (wt.shape.size() == 2) out.push_back({static_cast<int>(wt.shape[0]), static_cast<int>(wt.shape[1]), wt.dtype});
  };
  for (int l = 0; l < w.config().num_layers; ++l)
    for (TensorRole r : kLayerMats) add(r, l);
  add(TensorRole::lm_head, -1);
  return out;
}

void PackPool::prefault(const std::vector<PackShape>& shapes, kernels::Compute compute) {
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
  for (const PackShape& s : shapes) {
    if (s.dtype != DType::f32 && s.dtype != DType::bf16) continue;
    auto m = kernels::alloc_packed(s.dtype, s.N, s.K, compute);
    if (madvise(m->storage.get(), m->bytes, MADV_POPULATE_WRITE) != 0) std::memset(m->storage.get(), 0, m->bytes);
    give(std::move(m));
  }
}

std::shared_ptr<kernels::PackedMatrix> PackPool::take(int N, int K, kernels::PackFormat format) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = free_.begin(); it != free_.end(); ++it)
    if ((*it)->N == N && (*it)->K == K && (*it)->format == format) {
      auto p = std::move(*it);
      free_.erase(it);
      return p;
    }
  return nullptr;
}

void PackPool::give(std::shared_ptr<kernels::PackedMatrix> p) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t held = 0;
  for (const auto& q : free_) held += q->bytes;
  if (held + p->bytes <= limit_) free_.push_back(std::move(p));  // else freed here
}

size_t PackPool::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& p : free_) n += p->bytes;
  return n;
}

void PackPool::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  free_.clear();
}

bool WeightPacks::Slot::stale_for(const Weight& w, kernels::Compute compute) const {
  return !m || src != w.data || (had_owner && owner.expired()) || m->format != kernels::pack_format(w.dtype, compute);
}

void WeightPacks::Slot::made_from(const Weight& w) {
  src = w.data;
  owner = w.owner;
  had_owner = w.owner != nullptr;
}

WeightPacks::WeightPacks(kernels::Compute compute, int num_layers) : compute_(compute), num_layers_(num_layers) {}

int WeightPacks::slot_of(TensorRole role, int layer) const { return slot_of(role, layer, num_layers_); }

int WeightPacks::slot_of(TensorRole role, int layer, int num_layers) {
  if (role == TensorRole::lm_head) return num_layers * kNumLayerMats;
  for (int i = 0; i < kNumLayerMats; ++i)
    if (kLayerMats[i] == role) return layer * kNumLayerMats + i;
  ZR_CHECK_MSG(false, "not a matmul weight: role " + std::to_string(static_cast<int>(role)));
  return -1;
}

template <class F>
void WeightPacks::for_each_packed(F&& fn) const {
  for (int l = 0; l < num_layers_; ++l)
    for (TensorRole r : kLayerMats) fn(r, l);
  fn(TensorRole::lm_head, -1);  // a tied head is a view of the embedding (ModelWeights::bind_tied_head)
}

size_t WeightPacks::refresh(const ModelWeights& w, ThreadPool* pool) {
  slots_.resize(static_cast<size_t>(num_layers_) * kNumLayerMats + 1);
  size_t bytes = 0;
  for_each_packed([&](TensorRole role, int layer) {
    const Weight& wt = w.get(role, layer);
    Slot& s = slots_[static_cast<size_t>(slot_of(role, layer))];
    if (!wt.data || !s.stale_for(wt, compute_)) return;
    ZR_CHECK(wt.shape.size() == 2);
    const int N = static_cast<int>(wt.shape[0]), K = static_cast<int>(wt.shape[1]);
    if (s.m && s.m.use_count() == 1 && s.m->N == N && s.m->K == K &&
        s.m->format == kernels::pack_format(wt.dtype, compute_)) {
      kernels::repack(wt.data, wt.dtype, *s.m, pool);  // its pages are faulted in already
    } else {
      s.m.reset();  // the old pack's memory goes before the new one's comes
      s.m = kernels::pack(wt.data, wt.dtype, N, K, compute_, pool);
    }
    s.made_from(wt);
    bytes += s.m->bytes;
  });
  return bytes;
}

WeightPacks WeightPacks::stage(const ModelWeights& current, const ModelWeights& next, kernels::Compute compute,
                               PackPool* pool, int threads, StreamingPacker* streamed) {
  WeightPacks out(compute, next.config().num_layers);
  out.slots_.resize(static_cast<size_t>(out.num_layers_) * kNumLayerMats + 1);
  std::vector<PackJob> jobs;
  out.for_each_packed([&](TensorRole role, int layer) {
    const Weight& nw = next.get(role, layer);
    const Weight& cw = current.get(role, layer);
    if (!nw.data || nw.data == cw.data) return;  // unchanged: the live pack stays
    ZR_CHECK(nw.shape.size() == 2);
    const int N = static_cast<int>(nw.shape[0]), K = static_cast<int>(nw.shape[1]);
    const int slot = out.slot_of(role, layer);
    Slot& s = out.slots_[static_cast<size_t>(slot)];
    s.made_from(nw);
    if (streamed && (s.m = streamed->take(slot, nw.data, nw.dtype, compute))) return;  // packed as it arrived
    s.m = pool ? pool->take(N, K, kernels::pack_format(nw.dtype, compute)) : nullptr;
    if (!s.m) s.m = kernels::alloc_packed(nw.dtype, N, K, compute);
    jobs.push_back({&nw, s.m.get()});
  });
  pack_jobs(jobs, threads);
  return out;
}

void WeightPacks::adopt(WeightPacks&& staged, PackPool* retired) {
  ZR_CHECK(staged.slots_.empty() || (staged.num_layers_ == num_layers_ && staged.compute_ == compute_));
  slots_.resize(static_cast<size_t>(num_layers_) * kNumLayerMats + 1);
  for (size_t i = 0; i < staged.slots_.size(); ++i) {
    if (!staged.slots_[i].m) continue;
    std::shared_ptr<kernels::PackedMatrix> old = std::move(slots_[i].m);
    slots_[i] = std::move(staged.slots_[i]);
    if (old && retired && old.use_count() == 1) retired->give(std::move(old));
  }
  staged.slots_.clear();
}

const kernels::PackedMatrix& WeightPacks::get(TensorRole role, int layer) const {
  const int i = slot_of(role, layer);
  ZR_CHECK(static_cast<size_t>(i) < slots_.size() && slots_[static_cast<size_t>(i)].m != nullptr);
  return *slots_[static_cast<size_t>(i)].m;
}

std::shared_ptr<const kernels::PackedMatrix> WeightPacks::find(TensorRole role, int layer) const {
  const size_t i = static_cast<size_t>(slot_of(role, layer));
  return i < slots_.size() ? slots_[i].m : nullptr;
}

size_t WeightPacks::bytes() const {
  size_t n = 0;
  for (const Slot& s : slots_) n += s.m ? s.m->bytes : 0;
  return n;
}

int WeightPacks::count() const {
  int n = 0;
  for (const Slot& s : slots_) n += s.m != nullptr;
  return n;
}

StreamingPacker::StreamingPacker(const ModelWeights& current, kernels::Compute compute, std::shared_ptr<PackPool> pool,
                                 std::vector<StreamedTensor> tensors)
    : compute_(compute), pool_(std::move(pool)), tensors_(tensors.size()) {
  const ModelConfig& cfg = current.config();
  if (current.shard().size > 1) return;  // a rank serves its shard, not the bytes as they arrive
  for (size_t i = 0; i < tensors.size(); ++i) {
    const StreamedTensor& st = tensors[i];
    Tensor& t = tensors_[i];
    t.offset = st.offset;
    const Weight* cur = current.find(st.name);
    const TensorSpec* spec = nullptr;
    for (const TensorSpec& s : current.specs())
      if (s.name == st.name) spec = &s;
    if (!cur || !spec || st.shape.size() != 2 || st.dtype != cur->dtype) continue;  // converted: packed later
    if (st.dtype != DType::f32 && st.dtype != DType::bf16) continue;
    int slot = -1;
    if (spec->role == TensorRole::embed && cfg.tie_word_embeddings)
      slot = WeightPacks::slot_of(TensorRole::lm_head, -1, cfg.num_layers);  // the tied head is this
    else if (spec->role == TensorRole::lm_head && !cfg.tie_word_embeddings)
      slot = WeightPacks::slot_of(TensorRole::lm_head, -1, cfg.num_layers);
    else if (spec->layer >= 0 &&
             std::find(std::begin(kLayerMats), std::end(kLayerMats), spec->role) != std::end(kLayerMats))
      slot = WeightPacks::slot_of(spec->role, spec->layer, cfg.num_layers);
    if (slot < 0) continue;
    t.slot = slot;
    t.dtype = st.dtype;
    t.N = static_cast<int>(st.shape[0]);
    t.K = static_cast<int>(st.shape[1]);
    t.nbytes = static_cast<uint64_t>(t.N) * static_cast<uint64_t>(t.K) * dtype_size(t.dtype);
    const kernels::PackFormat format = kernels::pack_format(t.dtype, compute_);
    t.m = pool_ ? pool_->take(t.N, t.K, format) : nullptr;
    if (!t.m) t.m = kernels::alloc_packed(t.dtype, t.N, t.K, compute_);
  }
}

StreamingPacker::~StreamingPacker() {
  if (!pool_) return;
  for (Tensor& t : tensors_)
    if (t.m && t.m.use_count() == 1) pool_->give(std::move(t.m));  // not taken: no version serves it
}

uint64_t StreamingPacker::piece_bytes(size_t i, uint64_t target) const {
  const Tensor& t = tensors_[i];
  if (!t.m) return target;
  const uint64_t group = static_cast<uint64_t>(kernels::kGroup) * static_cast<uint64_t>(t.K) * dtype_size(t.dtype);
  return std::max<uint64_t>(1, target / group) * group;
}

void StreamingPacker::arrived(size_t i, const void* base, uint64_t lo, uint64_t hi) {
  Tensor& t = tensors_[i];
  if (!t.m || t.broken) return;
  if (lo != t.received || hi > t.nbytes || hi < lo || (t.base && t.base != base)) {
    t.broken = true;  // out of order: WeightPacks::stage packs it from the staged bytes
    return;
  }
  t.base = base;
  t.received = hi;
  const uint64_t row = static_cast<uint64_t>(t.K) * dtype_size(t.dtype);
  const uint64_t rows = t.received / row;  // complete rows so far
  const int complete = rows >= static_cast<uint64_t>(t.N) ? t.m->groups() : static_cast<int>(rows / kernels::kGroup);
  if (complete > t.packed) kernels::repack_groups(base, t.dtype, *t.m, t.packed, complete);
  t.packed = std::max(t.packed, complete);
}

void StreamingPacker::arrived_transfer(const uint8_t* transfer_base, uint64_t offset, uint64_t len) {
  const uint64_t end = offset + len;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i];
    if (!t.m || t.offset >= end || t.offset + t.nbytes <= offset) continue;
    const uint64_t lo = std::max(offset, t.offset), hi = std::min(end, t.offset + t.nbytes);
    arrived(i, transfer_base + t.offset, lo - t.offset, hi - t.offset);
  }
}

std::shared_ptr<kernels::PackedMatrix> StreamingPacker::take(int slot, const void* data, DType dtype,
                                                             kernels::Compute compute) {
  for (Tensor& t : tensors_)
    if (t.slot == slot && t.m && !t.broken && t.base == data && t.dtype == dtype && compute == compute_ &&
        t.packed == t.m->groups())
      return std::move(t.m);
  return nullptr;
}

}  // namespace zr
