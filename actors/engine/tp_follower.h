// TpFollower: a tensor-parallel rank other than the leader. It holds its shard of the weights
// and of the KV cache (its KV heads, the same block ids as the leader's) and replays the leader's
// commands (actors/tp_group.h) until shutdown: each forward plan (partial sums and logits meet the
// leader in TpGroup's collectives), weight staging and commits, memory release. It owns no
// endpoint, scheduler or sampler: requests, aborts and sessions live on the leader alone.
// Thread-safety: run() on one thread; staging runs on a worker thread like on the leader.
#pragma once

#include <future>
#include <memory>
#include <optional>
#include <string>

#include "actors/engine/engine.h"
#include "actors/engine/tp_group.h"
#include "actors/engine/weight_staging.h"

namespace zr {

class TpFollower {
 public:
  // opt: the leader's engine options (threads, KV budget and block size must match the leader's).
  // weight_group: the cluster's weight-sync group (broadcast path), or null.
  static Result<std::unique_ptr<TpFollower>> load(
      const std::string& model_dir, const EngineOptions& opt, TpGroup& tp, MpiGroup* weight_group,
      std::chrono::milliseconds transfer_timeout = std::chrono::seconds(60));
  ~TpFollower();
  // Serves commands until the leader sends shutdown (a leader found gone ends the process: see
  // TpGroup::set_leader_alive).
  void run();
  int64_t weight_version() const { return version_; }
  // The cluster's weight-broadcast group (set before run(); must outlive it).
  void set_weight_group(MpiGroup* group) { sources_.weight_group = group; }

 private:
  TpFollower(ModelWeights w, const EngineOptions& opt, TpGroup& tp);
  void on_stage(const TpCommand& cmd);
  void on_stage_result(const TpCommand& cmd);
  void on_commit(const TpCommand& cmd);
  void on_memory(const TpCommand& cmd, bool release);

  ModelWeights weights_;
  TpGroup& tp_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<KvCache> kv_;
  bool kv_prefault_ = true;   // EngineOptions::kv_prefault: also after a resume
  bool kv_released_ = false;  // release_memory kv_cache came, resume not yet
  std::unique_ptr<Transformer> tf_;
  std::string model_dir_;
  StageSources sources_;
  StagingPool staging_;
  ShmMappings shm_;
  int64_t version_ = 0;
  std::optional<std::future<Result<StagedWeights>>> staging_job_;
  Status stage_refused_;  // refused before it started (e.g. a segment this host cannot map)
  std::optional<StagedWeights> staged_;
  std::future<void> reclaim_;
  std::vector<float> no_logits_;
};

}  // namespace zr
