// Scheduler: continuous batching as pure logic (no sockets, no BLAS, no model), so it is tested
// with a fake KV budget and fake outputs. The engine tick is schedule() -> execute ->
// update_from_output().
//
// Policy: running sequences first, in arrival order, each taking what it needs this step (one
// decode token, or the next prefill chunk of at most max_prefill_chunk tokens) within the step's
// token budget; then waiting sequences in arrival order while max_running allows. Chunked prefill
// keeps one long prompt from taking the whole step, so decodes and short prompts keep moving.
// When the KV pool cannot hold a running sequence's next tokens, the latest-arrived running
// sequence is preempted: its KV is released and it is recomputed later from its tokens (outputs
// are batch-invariant and sampling is counter-based, so recomputation changes no bit).
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

namespace zr {

// KV memory as the scheduler sees it. The engine implements it over KvCache and block tables.
class KvBudget {
 public:
  virtual ~KvBudget() = default;
  // Makes room for positions [computed, new_len) of seq; false (nothing changed) when out of blocks.
  virtual bool reserve(int64_t seq, int computed, int new_len) = 0;
  // Drops all KV of seq.
  virtual void release(int64_t seq) = 0;
};

struct SchedulerConfig {
  int max_running = 256;         // sequences in the running batch
  int max_step_tokens = 2048;    // tokens per forward step (decode + prefill chunks)
  int max_prefill_chunk = 512;   // tokens of one prompt per step
};

struct ScheduledSeq {
  int64_t id;
  int start;  // first position processed this step (= tokens already in the KV cache)
  int count;  // tokens processed this step
};

struct StepPlan {
  std::vector<ScheduledSeq> seqs;
  std::vector<int64_t> preempted;  // lost their KV this step; will be recomputed
  std::vector<int64_t> starved;    // alone and still cannot fit: the engine must finish them
  bool empty() const { return seqs.empty(); }
};

// What the engine reports after executing a plan, per scheduled sequence.
struct SeqUpdate {
  int64_t id;
  int appended = 0;       // new tokens known (sampled) after this step
  bool finished = false;  // leaves the scheduler (the engine frees its KV)
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig cfg, KvBudget* budget);

  // A new sequence with `total` known tokens (the prompt), of which the first `computed` already
  // have KV (a session's earlier turns).
  void add(int64_t id, int total, int computed = 0);
  // A sequence that already has `computed` tokens in the KV cache (a forked sample sharing its
  // prompt's KV), joining the running set directly with the priority `arrival` of its parent.
  void add_running(int64_t id, int computed, int total, int64_t arrival);
  // Removes a sequence wherever it is (abort); the caller frees its KV.
  void remove(int64_t id);

  StepPlan schedule();
  // While admission is closed (a drain before a weight update), sequences that never ran stay
  // waiting; ones that already ran (preempted) may come back so the running batch can finish.
  void set_admit(bool open) { admit_ = open; }
  // Releases the KV of every running sequence (they recompute from their tokens); returns them.
  std::vector<int64_t> preempt_all();
  bool is_running(int64_t id) const;
  void update_from_output(const std::vector<SeqUpdate>& updates);

  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int num_running() const { return static_cast<int>(running_.size()); }
  bool idle() const { return waiting_.empty() && running_.empty(); }
  int64_t arrival(int64_t id) const { return seqs_.at(id).arrival; }

 private:
  struct Seq {
    int computed = 0;
    int total = 0;
    int64_t arrival = 0;
    int scheduled = 0;  // tokens planned in the current step
    bool ran = false;   // admitted at least once
  };
  int take_for(const Seq& s, int budget) const;
  void preempt(int64_t victim, StepPlan& plan, int& budget);

  SchedulerConfig cfg_;
  KvBudget* budget_;
  std::unordered_map<int64_t, Seq> seqs_;
  std::vector<int64_t> running_;  // arrival order
  std::deque<int64_t> waiting_;   // arrival order
  int64_t next_arrival_ = 0;
  bool admit_ = true;
};

}  // namespace zr
