// RolloutActor: an Engine served as an actor. Requests arrive as frames on the actor's ROUTER
// (inproc, ipc or tcp); each tick runs one engine step and routes what it produced: stream chunks
// ("generate.chunk") as they come, and one "generate.reply" / "score.reply" per call once every
// sample of every request of the call has finished. docs/protocol.md is the contract.
//
// Ownership: owns the Engine and the runtime Actor. Thread-safety: after start() only the actor
// thread touches either; before start() tests may step it with run_once().
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "actors/engine/engine.h"
#include "comm/call_limits.h"
#include "comm/mpi_group.h"
#include "runtime/actor.h"
#include "runtime/context.h"

namespace zr {

struct RolloutActorOptions {
  std::string name = "rollout";
  std::optional<int> rank;
  std::string model_path;                          // reported by get_model_info
  int weight_rank = 0;                             // this engine's rank, reported with checksums and errors
  std::chrono::milliseconds drain_timeout{30000};  // on stop: finish in-flight work this long, then abort
  std::chrono::milliseconds transfer_timeout{
      60000};                            // no broadcast bucket / streamed ipc progress for this long = sender lost
  std::optional<CurveServerKeys> curve;  // CURVE on the ROUTER (runtime/actor.h ActorOptions::curve)
  int64_t max_message_bytes = -1;        // ZMQ_MAXMSGSIZE of the ROUTER
  CallLimits limits;
  // A disk update reads only under these folders (--weights-root; `zrollout serve` defaults to the
  // parent of --model); any other disk_path is permission_denied. Empty: any path (in-process use).
  std::vector<std::string> weights_roots;
  // When the engine goes idle, its compute threads sleep at once instead of spinning for the next
  // step (Engine::park_threads; otherwise a worker spins up to 50 us, model/thread_pool.cpp), parked before the
  // step's replies are sent, freeing the core for the reply's socket threads. Off: in
  // bench_service's alternating rounds it did not clearly shorten a 1-token round trip
  // (docs/performance.md).
  bool park_idle_threads = false;
};

class RolloutActor {
 public:
  RolloutActor(Context& ctx, std::unique_ptr<Engine> engine, RolloutActorOptions opt);
  ~RolloutActor();

  Status bind(const std::string& endpoint) { return actor_.bind(endpoint); }
  const std::string& endpoint() const { return actor_.endpoint(); }
  void start() { actor_.start(); }
  void stop() { actor_.stop(); }
  bool run_once(std::chrono::milliseconds max_wait = std::chrono::milliseconds{0}) { return actor_.run_once(max_wait); }
  Engine& engine() { return *engine_; }
  // The MPI group for path broadcast (trainer + engines); not owned, must outlive the actor.
  void set_weight_group(MpiGroup* group) { weight_group_ = group; }
  // Waits until the staging buffer and packs of the first weight update are faulted in (prepared in
  // the background from construction on: StagingPool::prepare); returns the ms that took (0: none
  // ran). Call before the first update arrives (it is not synchronized with the actor's thread).
  double wait_staging_prepared() { return staging_.wait_prepared(); }

 private:
  // One generate or score call: where to reply and what is still missing.
  struct Call {
    uint64_t req_id = 0;
    ReplyTo to;
    bool score = false;
    std::vector<std::string> rids;  // request order
    std::map<std::string, std::vector<std::optional<SampleOutput>>> samples;
    std::map<std::string, std::optional<ScoreOutput>> scores;
    int pending = 0;       // samples / scores not yet finished
    Status error;          // set when a score of the call was aborted
    bool counted = false;  // its rids count in in_flight_ of its connection
  };

  void register_handlers();
  void register_weight_handlers();
  void register_text_handlers();  // tokenize, detokenize
  Status on_update_weights(UpdateWeightsCall& call, const std::string& body, const ReplyTo& from);
  // The kept segments the serving weights point into, plus a pending ipc update's segment (it
  // may still commit: the writer must not reuse it yet).
  std::vector<std::string> segments_in_use() const;
  // The ack (or error) of an update the engine finished.
  void on_update_done(const UpdateOutcome& o);
  // Handlers of the calls answered later (or, abort, after the aborted calls): an error returned
  // is the call's reply (runtime/actor.h typed handlers).
  Status on_generate(GenerateCall& call, const ReplyTo& from);
  Status on_score(ScoreCall& call, const ReplyTo& from);
  Status on_abort(const AbortCall& a, const ReplyTo& from);
  Status refuse_call(const Call& c, const Status& st);
  // The call-size limits (opt_.limits) for a call of `prompts` requests with the largest n `max_n`
  // (the in-flight cap does not count trainer-key connections: from.user_id).
  Status check_limits(size_t prompts, int max_n, const ReplyTo& from) const;
  void count_in_flight(Call& c, int delta);
  bool tick();
  void drain_on_stop();
  void route(StepOutputs& out);
  void complete(const std::string& rid);
  void reply_error(const ReplyTo& to, uint64_t req_id, const Status& st);
  double tokens_per_s();

  std::unique_ptr<Engine> engine_;
  RolloutActorOptions opt_;
  Actor actor_;
  std::unordered_map<std::string, std::shared_ptr<Call>> call_of_rid_;
  std::unordered_map<std::string, int> in_flight_;  // routing id -> requests in flight (CallLimits)
  std::deque<std::pair<std::chrono::steady_clock::time_point, int>> generated_;  // for tokens_per_s
  // Where the ack of the engine's update in progress goes (the engine walks the update itself).
  ReplyTo update_reply_to_;
  MpiGroup* weight_group_ = nullptr;
  StagingPool staging_;
  uint64_t staging_bytes_ = 0;  // a transfer of every weight in the serving dtypes
  ShmMappings shm_;             // ipc segments the trainer will write again
  // Each served tensor's meta as its last update delivered and verified it (dtype, nbytes,
  // checksum); cleared by a disk update. What serves_already() compares a resend against.
  std::map<std::string, TensorMeta> served_metas_;
};

}  // namespace zr
