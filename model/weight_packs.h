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

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "model/kernels_packed.h"
#include "model/thread_pool.h"
#include "model/weights.h"

namespace zr {

// The shape and dtype of one packed weight (what a pack of it needs).
struct PackShape {
  int N = 0, K = 0;
  DType dtype = DType::f32;
};
// Every packed weight of w (the matmul weights of each layer, the LM head), as the engine serves them.
std::vector<PackShape> packed_shapes(const ModelWeights& w);

// Packs retired by a commit (or a dropped version), waiting for a stage to repack into them.
class PackPool {
 public:
  // Adds a pack of each shape with its pages faulted in now, so the first update packs into backed
  // pages (a fresh page costs 1.5-7 us on its first touch on a VM whose balloon took it back:
  // ~0.5 s for the packs of 438 MB). Slow: for a background thread (StagingPool::prepare).
  void prefault(const std::vector<PackShape>& shapes, kernels::Compute compute);
  // A pack of that shape and format (its old contents), or null when the pool holds none.
  std::shared_ptr<kernels::PackedMatrix> take(int N, int K, kernels::PackFormat format);
  // p: held by nobody else (the caller checked use_count). Freed instead when the pool would
  // then hold more than its limit.
  void give(std::shared_ptr<kernels::PackedMatrix> p);
  // At most `bytes` waiting (Transformer: one set of packs, the double buffer): packs a first update
  // had to allocate while prefault() still ran would otherwise stay as a third set.
  void set_limit(size_t bytes) { limit_ = bytes; }
  size_t bytes() const;
  void clear();

 private:
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<kernels::PackedMatrix>> free_;
  size_t limit_ = SIZE_MAX;
};

class StreamingPacker;

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
  // `streamed`: packs built as the bytes arrived (StreamingPacker); a slot whose pack it built from
  // exactly the bytes `next` serves takes that pack, the others are packed here.
  static WeightPacks stage(const ModelWeights& current, const ModelWeights& next, kernels::Compute compute,
                           PackPool* pool, int threads, StreamingPacker* streamed = nullptr);
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
  friend class StreamingPacker;
  struct Slot {
    const void* src = nullptr;
    std::weak_ptr<const void> owner;
    bool had_owner = false;
    std::shared_ptr<kernels::PackedMatrix> m;
    bool stale_for(const Weight& w, kernels::Compute compute) const;
    void made_from(const Weight& w);
  };
  int slot_of(TensorRole role, int layer) const;
  static int slot_of(TensorRole role, int layer, int num_layers);
  // fn(role, layer) for every packed weight, in slot order.
  template <class F>
  void for_each_packed(F&& fn) const;

  kernels::Compute compute_ = kernels::Compute::f32;
  int num_layers_ = 0;
  std::vector<Slot> slots_;  // [layer * kLayerMats + i]; the LM head last; empty: none packed
};

// One tensor of a transfer, as it will arrive: its name, the dtype and shape of its bytes, and
// where they start in the transfer (TensorMeta::offset; used by StreamingPacker::arrived_transfer).
struct StreamedTensor {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;
};

// Packs a version's matmul weights while their bytes arrive (an ipc pull, a segment being
// verified, a broadcast's buckets), so that no pass over the weights is left once the last byte
// is in: the receiver tells it "bytes [lo, hi) of tensor i are now at base + lo" right after it
// copied (and checksummed) them, and every 48-row group (kernels::kGroup) those bytes complete is
// packed at once, while it is still in the cache. Rows of a group are contiguous in the row-major
// (N, K) layout, so a group is one byte range; a group is packed only once all its rows arrived.
// The bytes stay where they arrived (the row-major copy the version serves: embedding lookups,
// get_weights_checksum and a resume's repack read it), and WeightPacks::stage (through
// PackStager) takes a pack only if it was made from exactly the bytes the staged version serves;
// everything else (a dtype the engine converts, a TP shard, a tensor not fully fed, or fed out of
// order) is packed there as before. Packs nobody took (a refused or failed update) go back to the
// pool when the packer is destroyed: nothing of them reaches the live packs.
// Packs come from the pool (their pages faulted by an earlier version, or by PackPool::prepare).
// Thread-safety: different tensors may be fed from different threads at once; one tensor from
// one thread at a time.
class StreamingPacker {
 public:
  // current: the serving weights (which tensors run packed, in which dtype); tensors: the
  // transfer's tensors. Packs nothing under tensor parallelism (a shard is not the bytes as sent).
  StreamingPacker(const ModelWeights& current, kernels::Compute compute, std::shared_ptr<PackPool> pool,
                  std::vector<StreamedTensor> tensors);
  StreamingPacker(const StreamingPacker&) = delete;
  StreamingPacker& operator=(const StreamingPacker&) = delete;
  ~StreamingPacker();

  // Whether tensor i is packed as it arrives.
  bool packs(size_t i) const { return tensors_[i].m != nullptr; }
  // How many bytes of tensor i to receive at a time for about `target` bytes: whole groups of
  // its rows (at least one group), so each piece is packed while in the cache; `target` for a
  // tensor not packed here.
  uint64_t piece_bytes(size_t i, uint64_t target) const;
  // Bytes [lo, hi) of tensor i are in memory at base + lo (base: where the tensor's byte 0 is,
  // the same on every call) and stay there until the version is staged. Bytes arrive in order
  // (lo = the previous hi); a tensor fed otherwise is left to WeightPacks::stage.
  void arrived(size_t i, const void* base, uint64_t lo, uint64_t hi);
  // The same for bytes [offset, offset + len) of the transfer, now at transfer_base + offset
  // (their final place): may span several tensors and cut them anywhere (a broadcast's bucket).
  void arrived_transfer(const uint8_t* transfer_base, uint64_t offset, uint64_t len);
  // Groups of tensor i packed so far (tests).
  int groups_packed(size_t i) const { return tensors_[i].packed; }
  size_t size() const { return tensors_.size(); }

 private:
  friend class WeightPacks;
  struct Tensor {
    int slot = -1;  // its WeightPacks slot; -1: not packed here
    DType dtype = DType::f32;
    int N = 0, K = 0;
    uint64_t offset = 0, nbytes = 0;
    const void* base = nullptr;
    uint64_t received = 0;
    int packed = 0;  // groups packed
    bool broken = false;
    std::shared_ptr<kernels::PackedMatrix> m;
  };
  // The complete pack of `slot` made from the bytes at `data` (moved out), or null.
  std::shared_ptr<kernels::PackedMatrix> take(int slot, const void* data, DType dtype, kernels::Compute compute);

  kernels::Compute compute_;
  std::shared_ptr<PackPool> pool_;
  std::vector<Tensor> tensors_;
};

// What staging needs to build a version's packs (Transformer::pack_stager()): the engine's compute
// mode, its pack pool and its thread count. Empty (no pool): staging builds none, the commit packs.
struct PackStager {
  kernels::Compute compute = kernels::Compute::f32;
  std::shared_ptr<PackPool> pool;
  int threads = 1;
  explicit operator bool() const { return pool != nullptr; }
  // WeightPacks::stage with this engine's settings.
  WeightPacks operator()(const ModelWeights& current, const ModelWeights& next,
                         StreamingPacker* streamed = nullptr) const {
    return WeightPacks::stage(current, next, compute, pool.get(), threads, streamed);
  }
  // A packer for a transfer of `tensors` into a version of `current`.
  std::unique_ptr<StreamingPacker> streaming(const ModelWeights& current, std::vector<StreamedTensor> tensors) const {
    return std::make_unique<StreamingPacker>(current, compute, pool, std::move(tensors));
  }
};

}  // namespace zr
