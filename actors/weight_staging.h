// Staging of weight updates: turn bytes that arrived (an MPI broadcast buffer, a shared-memory
// segment, a checkpoint folder) into verified Weights ready to commit. Nothing here touches the
// serving weights: a failed stage changes nothing and says which tensor failed.
#pragma once

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/messages.h"
#include "comm/mpi_group.h"
#include "comm/status.h"
#include "comm/weight_transfer.h"
#include "model/weights.h"

namespace zr {

struct StagedWeights {
  int64_t version = 0;
  std::vector<std::pair<std::string, Weight>> tensors;  // validated against the registry
  size_t bytes = 0;
  int zero_copy = 0;  // tensors served in place from the transfer buffer
};

// Names known to the model, shapes equal, dtype supported, byte ranges inside the buffer, nbytes
// consistent with dtype and shape, no duplicates. Errors (weight_mismatch) name the tensor.
Status validate_update_meta(const ModelWeights& current, const std::vector<TensorMeta>& metas,
                            uint64_t buffer_bytes);

// Builds the weights from `base` (tensor i at metas[i].offset), verifying each checksum64
// (checksum_mismatch names the tensor). f32/bf16 matrices in the serving dtype are used in place
// (zero-copy: `owner` keeps the buffer alive as long as they serve); others are converted once.
// verify_checksums = false when the bytes were already verified as they arrived (TransferVerifier).
// verify_share: the ranks of a tensor-parallel engine reading one shared segment split the
// verification, each checksumming a byte-balanced share of the tensors (share.rank of share.size);
// the default verifies all of them.
Result<StagedWeights> stage_from_buffer(const ModelWeights& current, const std::vector<TensorMeta>& metas,
                                        const uint8_t* base, std::shared_ptr<const void> owner, int64_t version,
                                        bool verify_checksums = true, TpShard verify_share = {});

// Bytes a transfer of these tensors spans (the end of the last one).
uint64_t transfer_bytes(const std::vector<TensorMeta>& metas);

// A page-aligned, pre-faulted receive buffer for weight transfers. Weights served zero-copy keep it
// alive through their owner; it can be reused once nothing but the pool holds it.
class StagingPool {
 public:
  std::shared_ptr<uint8_t> get(uint64_t bytes);
 private:
  std::vector<std::pair<std::shared_ptr<uint8_t>, uint64_t>> buffers_;
};

// Every tensor of a checkpoint folder whose config matches the serving model's shapes.
Result<StagedWeights> stage_from_disk(const ModelWeights& current, const std::string& dir, int64_t version);

// Where the bytes of a broadcast come from, and how long a stalled sender is waited for.
struct StageSources {
  MpiGroup* weight_group = nullptr;  // broadcast: the trainer + engines group (null: not in a cluster)
  StagingPool* pool = nullptr;       // broadcast receive buffers
  std::chrono::milliseconds transfer_timeout{60000};
};

// Starts staging an update_weights call on a worker thread below the compute threads' priority;
// `bytes` gets the transfer size. Immediate refusals (ipc metadata, a segment that cannot be
// mapped, a stale version, broadcast without a group) come back as an error and start nothing, except
// on the broadcast path: a rank must take part in the collective whatever it thinks of the update
// (else the other ranks hang), so it receives into a scratch buffer and its refusal comes out of the
// future. `current` must outlive the future.
Result<std::future<Result<StagedWeights>>> begin_stage(const UpdateWeightsCall& c, const ModelWeights& current,
                                                       int64_t serving_version, const StageSources& src,
                                                       uint64_t* bytes);

}  // namespace zr
