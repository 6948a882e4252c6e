// Engine: one model replica that generates and scores. Owns the weights, tokenizer, KV cache,
// compute pool, transformer and scheduler; a tick is step(): schedule -> forward -> sample ->
// update_from_output. Used directly by `zrollout generate/score` and by the rollout actor.
//
// Parity: a request's tokens and logprobs depend only on the request (its tokens and seed), not on
// the batch it shares, its order, chunking or preemption; score returns the same bits as the
// default-mode logprobs generate gave for the same tokens.
// Thread-safety: one thread drives an Engine (the compute pool is internal).
#pragma once

#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "actors/engine/scheduler.h"
#include "actors/engine/weight_staging.h"
#include "actors/engine/weight_update.h"
#include "comm/messages.h"
#include "comm/status.h"
#include "model/kv_cache.h"
#include "model/sampler.h"
#include "model/thread_pool.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "model/weights.h"

namespace zr {

class TextStreamer;
class TpGroup;

struct EngineOptions {
  int threads = 0;                            // compute threads; 0 = all hardware threads
  size_t kv_cache_bytes = size_t{512} << 20;  // per rank under tensor parallelism
  int kv_block_size = 16;
  // Fault the whole KV pool in at start-up (and again after resume_memory kv_cache), as GPU
  // engines reserve theirs: ~0.35 s per GiB once, instead of a page fault in the forward step each
  // time a sequence first writes a new 4 KiB of the pool (11.6 of 154 ms of a batch-64 decode
  // step here, bench_engine with a per-phase timing).
  // false: pages are faulted on first write, so an unused budget costs no memory.
  bool kv_prefault = true;
  SchedulerConfig scheduler;
  // Serve weights from an anonymous copy in transparent huge pages (decode streams them faster
  // than from the file's 4 KiB page-cache pages); false: straight from the file mapping (no copy,
  // no extra memory while the page cache holds the file). Updates stage as before either way.
  bool copy_weights = true;
  // Tensor parallelism: this engine is rank 0 (the leader) of `tp`; the other ranks run TpFollower
  // (actors/tp_follower.h). The leader sends them every forward, commit and memory operation.
  TpGroup* tp = nullptr;
  // false: no request's output is decoded (text fields empty; stop strings refused).
  bool detokenize = true;
  // How the forward multiplies (kernels::Compute): bf16 rounds f32 weights to bf16 at load.
  kernels::Compute compute = kernels::Compute::f32;
  // The KV cache's element type: f32, or bf16 (half the bytes per position; K and V rounded to
  // bf16 as they are written, so outputs differ from f32's but stay batch-invariant).
  DType kv_dtype = DType::f32;
};

struct StepOutputs {
  std::vector<SampleOutput> finished;
  std::vector<ScoreOutput> scores;
  std::vector<StreamChunk> chunks;                    // stream: true requests, what each sample gained
  std::vector<std::string> aborted_scores;            // score requests removed by abort()
  std::vector<std::pair<int64_t, Status>> committed;  // weight updates committed (or failed) this step
  std::vector<UpdateOutcome> updates;                 // begin_update calls that ended this step: ack or error
  int tokens_processed = 0;                           // rows through the forward this step
  int tokens_generated = 0;
};

struct EngineStats {
  int waiting = 0, running = 0;
  int kv_blocks_used = 0, kv_blocks_total = 0;
  int64_t preemptions = 0;        // since start
  int64_t prefix_hit_tokens = 0;  // positions taken from the prefix cache, since start
  int prefix_cached_blocks = 0;   // blocks the prefix cache indexes now
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> load(const std::string& model_dir, const EngineOptions& opt);
  ~Engine();

  // Validates (errors name the field) and queues. text is tokenized here with BOS.
  Status submit(GenerateRequest req);
  Status submit_score(ScoreRequest req);
  void step(StepOutputs& out);
  // Nothing for step() to do: no request, no update waiting to commit, no finished stage to
  // collect (a stage still running is not work: its end makes idle() false).
  bool idle() const { return sched_.idle() && !pending_update_ && !update_.stage_done(); }

  // ---- weights: versioned, atomic updates
  // One update_weights call, from its message to its ack (actors/engine/weight_update.h): starts
  // staging on a worker thread (`body`, the call's wire form, goes to TP followers); step()
  // collects the stage, verifies it across TP ranks and commits it per call.in_flight. Refusals
  // that start nothing come back here; anything else ends as one StepOutputs::updates entry.
  // src.on_done is called from the staging thread when step() has a stage to collect.
  Status begin_update(UpdateWeightsCall call, std::string body, StageSources src, int rank = 0) {
    src.build_packs = tf_->pack_stager();  // the staged version's packs, built while it stages
    return update_.begin(std::move(call), std::move(body), weights_, weight_version_, std::move(src), rank);
  }
  bool update_in_progress() const { return update_.active(); }
  const UpdateWeightsCall* update_call() const { return update_.call(); }
  // checksum64 of the served tensors named (all when empty) on every TP rank, in rank order, and
  // the number of ranks.
  std::pair<std::vector<TensorChecksum>, int> weight_checksums(const std::vector<std::string>& names);
  struct UpdateOptions {
    InFlightPolicy policy = InFlightPolicy::drain;
    bool flush_cache = false;
  };
  // Queues verified weights; they commit between two steps per `policy`: drain (finish the running
  // batch on the old weights, admit nothing new meanwhile), abort (running requests return partial
  // outputs now, in `out`), continue (running requests keep their KV and go on with the new
  // weights), recompute (running requests drop their KV and re-prefill on the new weights). Every
  // commit appears in StepOutputs::committed. Errors: the version must grow; one update at a time.
  // The commit half of begin_update, for a caller that staged the weights itself (tests,
  // single-process use); not under tensor parallelism (the followers would not have them).
  Status request_update(StagedWeights w, UpdateOptions opt, StepOutputs& out);
  // The packs of weights staged by hand, built beside the live ones as begin_update's staging
  // builds them, so that request_update's commit is a pointer swap (without them it packs).
  void build_packs(StagedWeights& w) const;
  // What staging builds this engine's packs with (its compute mode, pack pool, thread count).
  PackStager pack_stager() const;
  // The live packs of the matmul weights (model/weight_packs.h).
  const WeightPacks& packs() const;
  bool update_pending() const { return pending_update_ != nullptr; }
  const ModelWeights& weights() const { return weights_; }
  const std::string& model_dir() const { return model_dir_; }
  // release_memory / resume_memory. Releasing needs an idle engine; returns the bytes released.
  // Resuming brings back the KV pool and, when the served version is the model folder's (no
  // update committed since start), reloads the folder; returns the bytes brought back. Weights
  // whose version came from an update are not kept anywhere once released: they stay released,
  // generate/score answer `unavailable`, and the next update that commits every tensor (its
  // version above the last one) serves again. So the engine never serves bytes other than the
  // version it reports.
  Result<size_t> release_memory(bool weights, bool kv_cache);
  Result<size_t> resume_memory(bool weights, bool kv_cache);
  bool weights_released() const { return weights_released_; }
  bool kv_released() const { return kv_released_; }
  // The version whose bytes are served; nullopt while the weights are released.
  std::optional<int64_t> served_version() const;

  // Stops matching requests now: each sample returns its partial output with finish_reason abort
  // (in `out`). Returns the aborted rids.
  std::vector<std::string> abort(const AbortCall& which, StepOutputs& out);
  // Multi-turn sessions: a generate with session_id continues from the session's stored tokens and
  // KV; its input_ids (or text) are the new turn's tokens only.
  std::string open_session();
  Status close_session(const std::string& session_id);
  // Drops the KV of idle sessions (they recompute on their next turn); returns blocks freed.
  int flush_cache();
  EngineStats stats() const;

  const ModelConfig& config() const { return weights_.config(); }
  kernels::Compute compute() const { return opt_.compute; }
  DType kv_dtype() const { return opt_.kv_dtype; }
  const Tokenizer& tokenizer() const { return tok_; }
  int64_t weight_version() const { return weight_version_; }
  int threads() const { return pool_->size(); }
  // The compute threads sleep now instead of spinning for the next step (ThreadPool::park): the
  // serving loop calls it when the engine went idle, so the cores are free for the reply.
  void park_threads() { pool_->park(); }
  TpGroup* tp() const { return opt_.tp; }

 private:
  struct Request;
  struct Sequence;
  struct SampleJob;
  struct Session;
  struct PendingUpdate;

  Engine(ModelWeights w, Tokenizer tok, const EngineOptions& opt);
  void prefault_kv();  // EngineOptions::kv_prefault, logged with its time

  Status check_rid(const std::string& rid) const;
  // The tokenizer a request's output text comes from: none when it is not decoded.
  const Tokenizer& text_tokenizer(const GenerateRequest& r) const {
    return opt_.detokenize && r.detokenize ? tok_ : Tokenizer::none();
  }
  // The output text of one sample of r: its stop strings, skip_special_tokens, no_stop_trim.
  std::unique_ptr<TextStreamer> make_text_streamer(const GenerateRequest& r) const;
  // Returns the new sequence's id; with a session, it continues from the session's cached KV.
  int64_t enqueue(std::shared_ptr<Request> req, std::vector<int> tokens, const Session* session = nullptr);
  SeqChunk make_chunk(const Sequence& s, int start, int count) const;
  void consume_rows(Sequence& s, int start, int count, const float* logits, std::vector<SampleJob>& jobs);
  void fork_samples(Sequence& parent, const float* row, std::vector<SampleJob>& jobs);
  void run_jobs(std::vector<SampleJob>& jobs);
  bool apply_token(Sequence& s, const SampledToken& t, StepOutputs& out);
  void emit_chunk(Sequence& s, bool final, StepOutputs& out);
  Status attach_session(GenerateRequest& req, std::shared_ptr<Session>& session);
  void detach_session(Sequence& s, bool keep_kv);
  void abort_sequence(Sequence& s, StepOutputs& out);
  void advance_update(StepOutputs& out);  // collects a finished stage, commits when allowed
  void maybe_commit(StepOutputs& out);
  void repack();  // after a commit or resume: packs the weights that have no current pack
  Status serving_check() const;
  void finish(Sequence& s, FinishReason why, StepOutputs& out);
  void finish_score(Sequence& s, StepOutputs& out);
  void drop_starved(const StepPlan& plan, StepOutputs& out);
  std::unordered_set<int64_t> apply_results(std::vector<SampleJob>& jobs, StepOutputs& out);
  void reap(const StepPlan& plan);

  ModelWeights weights_;
  Tokenizer tok_;
  EngineOptions opt_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<KvCache> kv_;  // the bytes; which block holds what is sched_'s
  std::unique_ptr<Transformer> tf_;
  Scheduler sched_;  // owns the KV block allocator and every block table
  std::unordered_map<int64_t, std::unique_ptr<Sequence>> seqs_;
  std::unordered_set<std::string> active_rids_;
  std::unordered_map<std::string, std::shared_ptr<Session>> sessions_;
  int64_t next_session_ = 0;
  std::vector<float> logits_;
  std::vector<std::pair<int64_t, int64_t>> new_forks_;  // (sample id, parent id) this step
  int64_t next_seq_id_ = 0;
  int64_t weight_version_ = 0;
  int64_t preemptions_ = 0;
  WeightUpdate update_;  // the update flow; TP commands of updates go from there only
  std::unique_ptr<PendingUpdate> pending_update_;
  std::string model_dir_;
  std::future<void> reclaim_;  // drops replaced weights' bytes off the engine thread
  bool weights_released_ = false, kv_released_ = false;
  // The served bytes are the model folder's (version 0): resume may reload them from there. False
  // from the first committed update on.
  bool folder_weights_ = true;
};

}  // namespace zr
