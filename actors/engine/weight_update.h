// WeightUpdate: one weight update from its call to its ack, the only place that walks the flow
//   stage    a worker thread turns the bytes (broadcast, shared memory, folder) into verified
//            Weights (actors/engine/weight_staging: how bytes arrive is that file's business)
//   verify   under tensor parallelism every follower stages its shard of the same call; the
//            leader gathers their verdicts, and one failure fails the update on every rank
//   commit   the Engine swaps the weights in between two steps per the in-flight policy, and
//            every rank swaps before the next forward
//   ack      an UpdateOutcome in StepOutputs::updates; the shell turns it into the reply
// A failure anywhere changes nothing: the staged bytes are dropped on every rank (the only place
// that sends drop_staged) and the outcome names tensor and rank.
// Ownership: the Engine owns it; every TP command of the flow goes from here.
// Thread-safety: the engine thread; staging runs on its own worker and reports by a flag.
#pragma once

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "actors/engine/weight_staging.h"
#include "comm/messages.h"
#include "comm/status.h"

namespace zr {

class TpGroup;
struct StepOutputs;

// How an update ended, for the ack (or the error reply).
struct UpdateOutcome {
  UpdateWeightsCall call;  // as asked: req_id, version, path, tensors
  Status status;           // ok: the version serves now
  uint64_t bytes = 0;
  int zero_copy = 0;
  double stage_seconds = 0, commit_seconds = 0;
  std::vector<TensorMeta> received;  // the tensors as verified (StagedWeights::received)
};

class WeightUpdate {
 public:
  // tp: the engine's followers, or null.
  explicit WeightUpdate(TpGroup* tp) : tp_(tp) {}

  bool active() const { return job_ != nullptr; }
  // Staging has finished and its result waits for take_staged().
  bool stage_done() const { return job_ && !job_->handed && job_->finished->load(); }
  const UpdateWeightsCall* call() const { return job_ ? &job_->call : nullptr; }

  // Starts staging `call` (`body`, its wire form, goes to the TP followers as is). Refusals that
  // start nothing come back here; anything else ends as one UpdateOutcome later. rank: this
  // engine's weight-sync rank, named in errors.
  Status begin(UpdateWeightsCall call, std::string body, const ModelWeights& serving, int64_t serving_version,
               StageSources src, int rank);
  // After stage_done(): the weights every rank verified, ready to queue for commit; nullopt when
  // some rank failed (the outcome is in `out`, the update over).
  std::optional<StagedWeights> take_staged(StepOutputs& out);
  // The engine refused to queue what was staged (e.g. a stale version): over, dropped everywhere.
  void refuse(const Status& st, StepOutputs& out);
  // The engine swapped version `version` in (or failed to: st): every follower does the same
  // before the next forward; the ack of the matching update goes to `out`.
  void committed(int64_t version, const Status& st, StepOutputs& out);

 private:
  struct Job {
    UpdateWeightsCall call;
    std::future<Result<StagedWeights>> staged;
    std::shared_ptr<std::atomic<bool>> finished = std::make_shared<std::atomic<bool>>(false);
    std::chrono::steady_clock::time_point start, staged_at;
    UpdateOutcome outcome;
    bool handed = false;  // the staged weights went to the engine
  };
  Status on_rank(Status st) const;
  void drop_everywhere(int64_t version);
  void finish(Status st, StepOutputs& out);

  TpGroup* tp_;
  int rank_ = 0;
  std::unique_ptr<Job> job_;  // at most one update at a time
};

}  // namespace zr
