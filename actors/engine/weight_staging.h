// Staging of weight updates: turn bytes that arrived (an MPI broadcast buffer, a shared-memory
// segment, a checkpoint folder) into verified Weights ready to commit. Nothing here touches the
// serving weights: a failed stage changes nothing and says which tensor failed.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/messages.h"
#include "comm/mpi_group.h"
#include "comm/status.h"
#include "comm/weight_transfer.h"
#include "model/weight_packs.h"
#include "model/weights.h"

namespace zr {

struct StagedWeights {
  int64_t version = 0;
  std::vector<std::pair<std::string, Weight>> tensors;  // validated against the registry
  size_t bytes = 0;
  int zero_copy = 0;                 // tensors served in place from the transfer buffer
  std::vector<TensorMeta> received;  // the update's tensors as verified (checksums filled in); disk: empty
  // The packs of the changed matmul weights, built while staging (StageSources::build_packs; the
  // commit swaps them in). Dropped with the update when it does not commit. Empty: the commit packs.
  WeightPacks packs;
};

// Names known to the model, shapes equal, dtype supported, byte ranges inside the buffer, nbytes
// consistent with dtype and shape, no duplicates. Errors (weight_mismatch) name the tensor.
Status validate_update_meta(const ModelWeights& current, const std::vector<TensorMeta>& metas, uint64_t buffer_bytes);

// Builds the weights from `base` (tensor i at metas[i].offset), verifying each checksum64
// (checksum_mismatch names the tensor). f32/bf16 matrices in the serving dtype are used in place
// (zero-copy: `owner` keeps the buffer alive as long as they serve); others are converted once.
// verify_checksums = false when the bytes were already verified as they arrived (TransferVerifier).
// verify_share: the ranks of a tensor-parallel engine reading one shared segment split the
// verification, each checksumming a byte-balanced share of the tensors (share.rank of share.size);
// the default verifies all of them. packer: packs each verified piece while it is in the cache.
Result<StagedWeights> stage_from_buffer(const ModelWeights& current, const std::vector<TensorMeta>& metas,
                                        const uint8_t* base, std::shared_ptr<const void> owner, int64_t version,
                                        bool verify_checksums = true, TpShard verify_share = {},
                                        StreamingPacker* packer = nullptr);

// The packs of the version `staged` makes of `current` (its changed matmul weights), built by
// `build_packs` (Transformer::pack_stager) into staged.packs. Runs at the end of every stage that
// has StageSources::build_packs; callers that stage by hand use Engine::build_packs.
// `streamed`: the packs built as the bytes arrived (taken where they match what staged serves).
void build_staged_packs(const PackStager& build_packs, const ModelWeights& current, StagedWeights& staged,
                        StreamingPacker* streamed = nullptr);

// Bytes a transfer of these tensors spans (the end of the last one).
uint64_t transfer_bytes(const std::vector<TensorMeta>& metas);

// A page-aligned, pre-faulted receive buffer for weight transfers. Weights served zero-copy keep it
// alive through their owner; it can be reused once nothing but the pool holds it.
// A page of fresh memory costs far more on its first touch than later (README, weight sync: on a
// VM whose balloon takes freed memory back, 1.5-7 us per 4 KiB page, ~30x one memcpy for 438 MB),
// so prepare() backs the buffer of the first update (and the packs it builds) ahead of need, on a
// background thread, and refill() backs the next one after a commit, once the old version's memory
// went back: what is faulted in follows what the next push needs.
// Thread-safety: one thread calls get/prepare/wait_prepared (the actor's); the background thread
// only fills its own list, handed over through a future.
class StagingPool {
 public:
  StagingPool() = default;
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;
  ~StagingPool();
  // prefault: fault the pages in now (a broadcast writes into them from MPI); false leaves that to
  // the first writer (an ipc pull, on the staging thread, not the actor's). Takes the prepared
  // buffers if they are ready (never waits for them: the caller is the actor's thread).
  std::shared_ptr<uint8_t> get(uint64_t bytes, bool prefault = true);
  // Maps `count` buffers of `bytes` and faults them in on a background thread below the compute
  // threads' priority, for later get() calls; then runs `also` on that thread (the engine's pack
  // pool prefaulting the packs of the first update). No-op if a prepare is still running, or
  // ZR_NO_STAGING_PREFAULT is set.
  void prepare(uint64_t bytes, int count, std::function<void()> also = {});
  // After an update committed: prepares one buffer of `bytes` when fewer than two are held (one
  // serving the weights zero-copy, one idle for the next update). Same no-ops as prepare.
  void refill(uint64_t bytes);
  // Waits for prepare() to finish; returns the wall time its thread took (ms; 0 if none ran).
  double wait_prepared();

 private:
  struct Prepared {
    std::vector<std::pair<std::shared_ptr<uint8_t>, uint64_t>> buffers;
    double ms = 0;
  };
  void take_prepared(bool wait);

  std::vector<std::pair<std::shared_ptr<uint8_t>, uint64_t>> buffers_;
  std::future<Prepared> preparing_;
  double prepared_ms_ = 0;
};

class ShmSegment;

// The shared-memory segments an engine keeps mapped between ipc updates (UpdateWeightsCall::
// shm_keep). A trainer that writes each new version into a segment it used before sends its name
// again; the name is unlinked by then, so the kept mapping is the only way back to the segment,
// and reusing it also skips re-building its page tables (for 438 MB of 4 KiB pages that is most of
// an update's cost). The trainer may rewrite a segment only when no engine serves from it:
// in_use() is what the engine reports in its ack. acquire() refuses a segment that still backs
// the serving weights: the writer broke that contract, and since it writes before the engine
// looks, the served bytes may already be damaged; the refusal says so, it cannot undo it.
// Thread-safety: one thread (the actor's); the mappings themselves are shared with staging
// workers and served weights through shared_ptr.
class ShmMappings {
 public:
  // The mapping of `name`, at least `bytes` long: the kept one, else shm_open by name (mapped
  // whole, read-only, pages faulted on first read). First forgets the kept mappings whose names
  // are not in `pool` (the segments the writer still holds; empty from a writer that keeps none).
  // keep: remember this one for later updates.
  // Errors: not_found (no such segment: never created, or unlinked and not kept here), io_error,
  // invalid_argument (the segment backs the serving weights, or is smaller than bytes).
  Result<std::shared_ptr<ShmSegment>> acquire(const std::string& name, uint64_t bytes, bool keep,
                                              const std::vector<std::string>& pool, const ModelWeights& serving);
  // Forgets the kept mappings not named in `pool` (weights served from them keep them mapped).
  void retain(const std::vector<std::string>& pool);
  // Names of the segments the serving weights point into: kept ones, and ones mapped without
  // shm_keep whose bytes are served zero-copy all the same (rewriting those would change outputs).
  std::vector<std::string> in_use(const ModelWeights& serving) const;
  size_t size() const { return kept_.size(); }

 private:
  std::vector<std::shared_ptr<ShmSegment>> kept_;
  // Segments mapped without keep: alive only while served weights point into them (their owner).
  std::vector<std::weak_ptr<ShmSegment>> unkept_;
};

// Every tensor of a checkpoint folder whose config matches the serving model's shapes.
Result<StagedWeights> stage_from_disk(const ModelWeights& current, const std::string& dir, int64_t version);
// Only the tensors `metas` lists, from the folder's safetensors (config.json is not read): each
// must be there in the listed dtype and nbytes (weight_mismatch) with the listed checksum64 of its
// bytes as stored (checksum_mismatch); both errors name the tensor. `metas` passed
// validate_update_meta (names, shapes, nbytes against the serving model).
Result<StagedWeights> stage_listed_from_disk(const ModelWeights& current, const std::string& dir,
                                             const std::vector<TensorMeta>& metas, int64_t version);

// Where the bytes of a broadcast come from, and how long a stalled sender is waited for.
struct StageSources {
  MpiGroup* weight_group = nullptr;  // broadcast: the trainer + engines group (null: not in a cluster)
  StagingPool* pool = nullptr;       // broadcast receive buffers
  std::chrono::milliseconds transfer_timeout{60000};
  ShmMappings* shm = nullptr;  // ipc: kept segment mappings (null: map each update anew)
  // Called on the staging thread just before its result is set (the future is ready moments
  // later): lets an event loop sleep while a stage runs instead of polling the future.
  std::function<void()> on_done;
  // Builds the staged version's matmul packs on the staging thread, after its bytes are verified
  // (Transformer::pack_stager): the commit is then a pointer swap. Unset: the commit packs.
  // The ipc paths also pack each matmul weight as its bytes arrive (PackStager::streaming).
  PackStager build_packs;
};

// Starts staging an update_weights call on a worker thread below the compute threads' priority;
// `bytes` gets the transfer size. Immediate refusals (ipc metadata, a segment that cannot be
// mapped, a stale version, broadcast without a group) come back as an error and start nothing, except
// on the broadcast path: a rank must take part in the collective whatever it thinks of the update
// (else the other ranks hang), so it receives into a scratch buffer and its refusal comes out of the
// future. `current` must outlive the future. `c` comes from wire::decode_update_weights, which
// has checked the fields on their own (e.g. shm_offset + shm_bytes does not overflow).
Result<std::future<Result<StagedWeights>>> begin_stage(const UpdateWeightsCall& c, const ModelWeights& current,
                                                       int64_t serving_version, const StageSources& src,
                                                       uint64_t* bytes);

}  // namespace zr
