#include "model/weight_packs.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
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
  free_.push_back(std::move(p));
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

int WeightPacks::slot_of(TensorRole role, int layer) const {
  if (role == TensorRole::lm_head) return num_layers_ * kNumLayerMats;
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
                               PackPool* pool, int threads) {
  WeightPacks out(compute, next.config().num_layers);
  out.slots_.resize(static_cast<size_t>(out.num_layers_) * kNumLayerMats + 1);
  std::vector<PackJob> jobs;
  out.for_each_packed([&](TensorRole role, int layer) {
    const Weight& nw = next.get(role, layer);
    const Weight& cw = current.get(role, layer);
    if (!nw.data || nw.data == cw.data) return;  // unchanged: the live pack stays
    ZR_CHECK(nw.shape.size() == 2);
    const int N = static_cast<int>(nw.shape[0]), K = static_cast<int>(nw.shape[1]);
    Slot& s = out.slots_[static_cast<size_t>(out.slot_of(role, layer))];
    s.m = pool ? pool->take(N, K, kernels::pack_format(nw.dtype, compute)) : nullptr;
    if (!s.m) s.m = kernels::alloc_packed(nw.dtype, N, K, compute);
    s.made_from(nw);
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

}  // namespace zr
