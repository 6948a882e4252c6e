// WeightPacks: the packs (model/kernels_packed.h) the matmuls of a model run from, and the one
// place that knows which weights run packed (every Linear weight of a layer and the LM head; a tied
// head is packed from the embedding's bytes).
//
// A weight update builds its version's packs while it stages (stage(), on the staging thread,
// beside the live packs, which it does not touch), and the commit swaps them in together with the
// weight pointers (adopt()): a commit is a pointer swap, the step loop never packs. The packs the
// commit retires go to a PackPool and the next stage repacks into their pages (double buffering),
// so a steady state of pushes faults no fresh pages.
// Memory: the live packs, plus between commits the retired ones waiting in the pool: two packed
// copies of the matmul weights beside their row-major bytes (which embedding, checksums and TP
// read, and which ipc updates serve zero-copy from the trainer's segment).
// Thread-safety: a WeightPacks belongs to one thread (the step loop's) except for stage(), which
// only reads the two ModelWeights it is given; a PackPool is shared by the step loop and staging.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "model/kernels_packed.h"
#include "model/thread_pool.h"
#include "model/weights.h"

namespace zr {

// Packs retired by a commit (or a dropped version), waiting for a stage to repack into them.
class PackPool {
 public:
  // A pack of that shape and format (its old contents), or null when the pool holds none.
  std::shared_ptr<kernels::PackedMatrix> take(int N, int K, kernels::PackFormat format);
  // p: held by nobody else (the caller checked use_count).
  void give(std::shared_ptr<kernels::PackedMatrix> p);
  size_t bytes() const;
  void clear();

 private:
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<kernels::PackedMatrix>> free_;
};

class WeightPacks {
 public:
  WeightPacks() = default;
  WeightPacks(kernels::Compute compute, int num_layers);

  // Brings every pack up to date with w's bytes (a weight whose data pointer moved, or whose bytes
  // were freed since): into the slot's own pack when nobody else holds it, else into fresh pages.
  // The fallback for weights that changed without a staged pack (a resume, a commit from a caller
  // that staged none). Returns the bytes packed.
  size_t refresh(const ModelWeights& w, ThreadPool* pool);
  // The packs version `next` needs that `current` (the serving weights) lacks: every packed weight
  // whose bytes differ. Built by `threads` threads (the caller and threads - 1 helpers at the
  // caller's priority), into the pool's packs where it has them.
  static WeightPacks stage(const ModelWeights& current, const ModelWeights& next, kernels::Compute compute,
                           PackPool* pool, int threads);
  // The commit: staged's packs replace these slot by slot; the replaced packs go to `retired`
  // (when given and nobody else holds them). Weights staged has no pack for keep theirs.
  void adopt(WeightPacks&& staged, PackPool* retired);

  const kernels::PackedMatrix& get(TensorRole role, int layer = -1) const;
  // The pack of a slot, or null (tests: which pages a version's packs live in).
  std::shared_ptr<const kernels::PackedMatrix> find(TensorRole role, int layer = -1) const;
  size_t bytes() const;
  int count() const;  // slots holding a pack
  void clear() { slots_.clear(); }

 private:
  // One packed weight's pack and the bytes it was made from: stale when the weight's data pointer
  // moved, or when the bytes it was made from were freed (the address may be reused).
  struct Slot {
    const void* src = nullptr;
    std::weak_ptr<const void> owner;
    bool had_owner = false;
    std::shared_ptr<kernels::PackedMatrix> m;
    bool stale_for(const Weight& w, kernels::Compute compute) const;
    void made_from(const Weight& w);
  };
  int slot_of(TensorRole role, int layer) const;
  // fn(role, layer) for every packed weight, in slot order.
  template <class F>
  void for_each_packed(F&& fn) const;

  kernels::Compute compute_ = kernels::Compute::f32;
  int num_layers_ = 0;
  std::vector<Slot> slots_;  // [layer * kLayerMats + i]; the LM head last; empty: none packed
};

}  // namespace zr
