// Scheduler: continuous batching as pure logic (no sockets, no BLAS, no model), so it is tested
// with fake outputs. The engine tick is schedule() -> execute -> update_from_output().
//
// KV memory: the scheduler owns the engine's BlockAllocator (model/block_allocator.h) and every
// block table, as vLLM's scheduler owns its KV cache manager: it reserves a sequence's blocks when
// it plans the sequence, frees them on preemption, removal and finish, and never asks the engine.
// KV that outlives its sequence (a multi-turn session's, between turns) waits in the scheduler's
// cache under a key and is evicted, least recently cached first, before any running sequence is
// preempted.
//
// Prefix caching (SchedulerConfig::prefix_cache; actors/engine/prefix_cache.h): a sequence added with
// its tokens has its full KV blocks indexed as they are computed, and a sequence admitted without
// KV starts from the longest cached prefix its reuse limit allows (always computing at least its
// last known token, whose logits the engine needs). A cached prefix's KV is the same bits a fresh
// prefill computes (each position's KV depends only on the tokens before it and the weights;
// chunking is batch-invariant), so a hit changes no output. When a waiting sequence's next block
// is being computed this very step by another sequence, it waits one step and reuses it (SGLang's
// in-batch prefix check): n copies of one prompt cost one prefill.
// Cached blocks not held by any sequence are evicted (LRU) before any running sequence is preempted.
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
#include <limits>
#include <memory>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "actors/engine/prefix_cache.h"
#include "model/block_allocator.h"

namespace zr {

struct SchedulerConfig {
  int max_running = 256;        // sequences in the running batch
  int max_step_tokens = 2048;   // tokens per forward step (decode + prefill chunks)
  int max_prefill_chunk = 512;  // tokens of one prompt per step
  bool prefix_cache = true;     // reuse cached KV of equal token prefixes (--no-prefix-cache: off)
};

struct ScheduledSeq {
  int64_t id;
  int start;       // first position processed this step (= tokens already in the KV cache)
  int count;       // tokens processed this step
  int cached = 0;  // admitted this step starting from `cached` positions of prefix-cached KV
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
  bool finished = false;  // leaves the scheduler, its KV freed (unless cache() took it before)
  int token = -1;         // the appended token (needed for a sequence added with its tokens)
};

class Scheduler {
 public:
  // KV: `num_blocks` blocks of `block_size` positions (the engine's KvCache holds their bytes).
  Scheduler(SchedulerConfig cfg, int num_blocks, int block_size);

  // A new sequence with `total` known tokens (the prompt). With `cached_key`, it continues from the
  // KV cached under that key (a session's earlier turns; the entry is taken) when it is still
  // there. Returns the positions whose KV it starts with (0 without a cached entry).
  int add(int64_t id, int total, int64_t cached_key = kNoKey);
  // The same with the sequence's known tokens: its blocks are indexed for prefix caching and, when
  // it starts without KV, it may start from a cached prefix of at most `reuse_limit` positions
  // (a request wanting prompt logprobs from position p computes from p on).
  int add(int64_t id, std::vector<int> tokens, int reuse_limit = kNoLimit, int64_t cached_key = kNoKey);
  // A sample forked from running sequence `parent` after its prompt: shares the parent's KV for
  // positions [0, computed) (copy on write) and joins the running set directly with the parent's
  // priority. Called before the step's update_from_output, while the parent is still here.
  void fork(int64_t parent, int64_t child, int computed, int total);
  void fork(int64_t parent, int64_t child, int computed, std::vector<int> tokens);
  // Removes a sequence wherever it is (abort, a starved or forked-and-finished one); frees its KV.
  void remove(int64_t id);

  // Moves the KV of sequence `id` (its first `computed` positions) into the cache under `key`,
  // replacing what was there; the sequence is finishing and keeps no KV. No-op for an unknown id.
  void cache(int64_t id, int64_t key, int computed);
  // Frees the KV cached under `key`, if any.
  void drop_cached(int64_t key);
  // Frees every cached entry; returns the blocks that became free.
  int drop_all_cached();
  bool has_cached(int64_t key) const { return cached_.count(key) != 0; }
  // Empties the prefix cache and keys new entries with `version`; sequences whose KV was computed
  // under another version (kept by the continue policy) are never indexed. Returns blocks freed.
  int set_weight_version(int64_t version);
  const PrefixCache& prefix_cache() const { return *prefix_; }
  // Positions taken from the prefix cache at admissions, summed since start.
  int64_t prefix_hit_tokens() const { return prefix_hit_tokens_; }

  // The block table of a scheduled or running sequence; stable until the next scheduler call.
  const BlockTable& table(int64_t id) const { return seqs_.at(id).table; }
  // Copy-on-write copies the plans made since the last call: apply them, in order, before the
  // forward (and send them to tensor-parallel followers with the plan).
  std::vector<std::pair<int, int>> take_copies() { return blocks_.take_copies(); }
  const BlockAllocator& blocks() const { return blocks_; }

  StepPlan schedule();
  // While admission is closed (a drain before a weight update), sequences that never ran stay
  // waiting; ones that already ran (preempted) may come back so the running batch can finish.
  void set_admit(bool open) { admit_ = open; }
  // Frees the KV of every running sequence (they recompute from their tokens); returns them.
  std::vector<int64_t> preempt_all();
  bool is_running(int64_t id) const;
  void update_from_output(const std::vector<SeqUpdate>& updates);

  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int num_running() const { return static_cast<int>(running_.size()); }
  bool idle() const { return waiting_.empty() && running_.empty(); }
  int64_t arrival(int64_t id) const { return seqs_.at(id).arrival; }

  static constexpr int64_t kNoKey = -1;
  static constexpr int kNoLimit = std::numeric_limits<int>::max();

 private:
  struct Seq {
    int computed = 0;
    int total = 0;
    int64_t arrival = 0;
    int scheduled = 0;  // tokens planned in the current step
    bool ran = false;   // admitted at least once
    BlockTable table;   // KV of positions [0, computed + scheduled)
    // Prefix caching (empty tokens: the sequence takes no part).
    std::vector<int> tokens;       // the known tokens, [0, total)
    std::vector<uint64_t> hashes;  // chain hashes of tokens' full blocks
    int reuse_limit = kNoLimit;
    int indexed = 0;         // leading blocks handed to the prefix cache
    int64_t kv_version = 0;  // weights that computed table's KV
  };
  struct Cached {
    BlockTable table;
    int computed = 0;   // positions whose KV the table holds
    int64_t stamp = 0;  // cache order: the lowest is evicted first
  };
  int add_seq(int64_t id, Seq s, int64_t cached_key);
  int take_for(const Seq& s, int budget) const;
  bool tracked(const Seq& s) const { return cfg_.prefix_cache && !s.tokens.empty(); }
  // Starts a sequence without KV from its longest cached prefix; returns the positions reused.
  int reuse_prefix(Seq& s);
  // True when s's next uncached block is being computed this step (`pending_`): wait for it.
  bool await_prefix(const Seq& s) const;
  void note_pending(Seq& s, int take);
  void index_blocks(Seq& s);
  // Makes room for s's positions up to new_len, evicting cached KV first; false when out of blocks.
  bool reserve(Seq& s, int new_len);
  bool evict_oldest_cached();
  void insert_running(int64_t id);
  void preempt(int64_t victim, StepPlan& plan, int& budget);

  SchedulerConfig cfg_;
  BlockAllocator blocks_;
  std::unique_ptr<PrefixCache> prefix_;   // refers to blocks_
  std::unordered_set<uint64_t> pending_;  // hashes of blocks the current step completes
  int64_t prefix_hit_tokens_ = 0;
  std::unordered_map<int64_t, Seq> seqs_;  // node-based: table() references stay valid
  std::unordered_map<int64_t, Cached> cached_;
  int64_t next_stamp_ = 0;
  std::vector<int64_t> running_;  // arrival order
  std::deque<int64_t> waiting_;   // arrival order
  int64_t next_arrival_ = 0;
  bool admit_ = true;
};

}  // namespace zr
