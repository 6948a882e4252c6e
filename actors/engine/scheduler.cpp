#include "actors/engine/scheduler.h"

#include <algorithm>

#include "comm/status.h"

namespace zr {

Scheduler::Scheduler(SchedulerConfig cfg, int num_blocks, int block_size)
    : cfg_(cfg), blocks_(num_blocks, block_size), prefix_(std::make_unique<PrefixCache>(blocks_)) {
  ZR_CHECK(cfg_.max_running > 0 && cfg_.max_step_tokens > 0 && cfg_.max_prefill_chunk > 0);
}

int Scheduler::add(int64_t id, int total, int64_t cached_key) {
  ZR_CHECK(total > 0);
  Seq s;
  s.total = total;
  s.arrival = next_arrival_++;
  return add_seq(id, std::move(s), cached_key);
}

int Scheduler::add(int64_t id, std::vector<int> tokens, int reuse_limit, int64_t cached_key) {
  Seq s;
  s.total = static_cast<int>(tokens.size());
  s.arrival = next_arrival_++;
  s.tokens = std::move(tokens);
  s.reuse_limit = reuse_limit;
  return add_seq(id, std::move(s), cached_key);
}

int Scheduler::add_seq(int64_t id, Seq s, int64_t cached_key) {
  ZR_CHECK(!seqs_.count(id) && s.total > 0);
  s.kv_version = prefix_->version();
  if (auto it = cached_.find(cached_key); it != cached_.end()) {
    ZR_CHECK(it->second.computed < s.total);
    s.computed = it->second.computed;
    s.table = std::move(it->second.table);
    cached_.erase(it);
  }
  const int computed = s.computed;
  seqs_[id] = std::move(s);
  waiting_.push_back(id);
  return computed;
}

void Scheduler::insert_running(int64_t id) {
  auto pos = std::upper_bound(running_.begin(), running_.end(), seqs_.at(id).arrival,
                              [this](int64_t a, int64_t other) { return a < seqs_.at(other).arrival; });
  running_.insert(pos, id);
}

void Scheduler::fork(int64_t parent, int64_t child, int computed, int total) {
  fork(parent, child, computed, std::vector<int>(total, -1));
}

void Scheduler::fork(int64_t parent, int64_t child, int computed, std::vector<int> tokens) {
  const int total = static_cast<int>(tokens.size());
  ZR_CHECK(!seqs_.count(child) && computed < total);
  const Seq& p = seqs_.at(parent);
  ZR_CHECK(blocks_.blocks_for(computed) <= static_cast<int>(p.table.size()));
  BlockTable shared(p.table.begin(), p.table.begin() + blocks_.blocks_for(computed));
  Seq c;
  c.computed = computed;
  c.total = total;
  c.arrival = p.arrival;
  c.ran = true;
  c.table = blocks_.share(shared);
  if (!p.tokens.empty()) {
    c.tokens = std::move(tokens);
    c.hashes.assign(p.hashes.begin(),
                    p.hashes.begin() + std::min<size_t>(p.hashes.size(), computed / blocks_.block_size()));
  }
  c.kv_version = p.kv_version;
  seqs_[child] = std::move(c);
  insert_running(child);
}

int Scheduler::set_weight_version(int64_t version) {
  const int before = blocks_.num_free();
  prefix_->set_version(version);
  for (auto& [id, s] : seqs_) s.hashes.clear();  // keys of the old version
  drop_all_cached();
  return blocks_.num_free() - before;
}

int Scheduler::reuse_prefix(Seq& s) {
  if (!tracked(s) || s.computed > 0 || !s.table.empty()) return 0;
  s.kv_version = prefix_->version();
  s.indexed = 0;
  const int limit = std::min(s.reuse_limit, s.total - 1);  // the last token's logits are needed
  if (limit <= 0) return 0;
  prefix_->extend_hashes(s.tokens, s.hashes);
  std::vector<int> hit = prefix_->match(s.tokens, s.hashes, blocks_.blocks_for(limit));
  if (hit.empty()) return 0;
  s.computed = std::min(limit, static_cast<int>(hit.size()) * blocks_.block_size());
  // A block reused in part (the last one) is copied on write when the sequence fills it.
  s.table = blocks_.share(BlockTable(hit.begin(), hit.begin() + blocks_.blocks_for(s.computed)));
  return s.computed;
}

bool Scheduler::await_prefix(const Seq& s) const {
  if (!tracked(s) || pending_.empty()) return false;
  const int limit = std::min(s.reuse_limit, s.total - 1);
  const size_t next = static_cast<size_t>(s.computed / blocks_.block_size());
  return s.computed < limit && next < s.hashes.size() && pending_.count(s.hashes[next]) != 0;
}

void Scheduler::note_pending(Seq& s, int take) {
  if (!tracked(s) || s.kv_version != prefix_->version()) return;
  prefix_->extend_hashes(s.tokens, s.hashes);
  const int bs = blocks_.block_size();
  for (size_t i = s.computed / bs; i < s.hashes.size() && static_cast<int>(i + 1) * bs <= s.computed + take; ++i)
    if (!prefix_->contains(s.hashes[i])) pending_.insert(s.hashes[i]);
}

// Indexes the sequence's blocks that are full and computed, once its KV passes a block boundary.
void Scheduler::index_blocks(Seq& s) {
  if (!tracked(s) || s.kv_version != prefix_->version()) return;
  const int full = s.computed / blocks_.block_size();
  if (full <= s.indexed) return;
  prefix_->extend_hashes(s.tokens, s.hashes);
  prefix_->insert(s.tokens, s.hashes, s.table, full);
  s.indexed = full;
}

void Scheduler::remove(int64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  blocks_.free_table(it->second.table);
  seqs_.erase(it);
  running_.erase(std::remove(running_.begin(), running_.end(), id), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), id), waiting_.end());
}

void Scheduler::cache(int64_t id, int64_t key, int computed) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  drop_cached(key);
  BlockTable& t = it->second.table;
  ZR_CHECK(blocks_.blocks_for(computed) <= static_cast<int>(t.size()));
  cached_[key] = Cached{std::move(t), computed, next_stamp_++};
  t.clear();
}

void Scheduler::drop_cached(int64_t key) {
  auto it = cached_.find(key);
  if (it == cached_.end()) return;
  blocks_.free_table(it->second.table);
  cached_.erase(it);
}

int Scheduler::drop_all_cached() {
  const int before = blocks_.num_free();
  while (evict_oldest_cached()) {}
  prefix_->clear();
  return blocks_.num_free() - before;
}

bool Scheduler::evict_oldest_cached() {
  auto oldest = cached_.end();
  for (auto it = cached_.begin(); it != cached_.end(); ++it)
    if (oldest == cached_.end() || it->second.stamp < oldest->second.stamp) oldest = it;
  if (oldest == cached_.end()) return false;
  blocks_.free_table(oldest->second.table);
  cached_.erase(oldest);
  return true;
}

bool Scheduler::reserve(Seq& s, int new_len) {
  // Cached KV goes before running sequences': prefix-cache leaves first, then sessions' turns.
  while (!blocks_.prepare_write(s.table, s.computed, new_len)) {
    const int short_by = blocks_.blocks_needed(s.table, s.computed, new_len) - blocks_.num_free();
    if (prefix_->evict(short_by) > 0) continue;
    if (!evict_oldest_cached()) return false;
  }
  return true;
}

int Scheduler::take_for(const Seq& s, int budget) const {
  int need = s.total - s.computed;
  if (need > 1) need = std::min(need, cfg_.max_prefill_chunk);
  return std::min(need, budget);
}

// Frees the KV of running sequence `victim` and puts it back in the waiting queue in arrival
// order; if it was already planned this step, its tokens go back to the step budget.
void Scheduler::preempt(int64_t victim, StepPlan& plan, int& budget) {
  Seq& v = seqs_[victim];
  blocks_.free_table(v.table);  // blocks the prefix cache holds stay there for its recomputation
  v.computed = 0;
  v.indexed = 0;
  budget += v.scheduled;
  v.scheduled = 0;
  plan.seqs.erase(
      std::remove_if(plan.seqs.begin(), plan.seqs.end(), [victim](const ScheduledSeq& s) { return s.id == victim; }),
      plan.seqs.end());
  running_.erase(std::find(running_.begin(), running_.end(), victim));
  auto pos = std::upper_bound(waiting_.begin(), waiting_.end(), v.arrival,
                              [this](int64_t a, int64_t other) { return a < seqs_.at(other).arrival; });
  waiting_.insert(pos, victim);
  plan.preempted.push_back(victim);
}

StepPlan Scheduler::schedule() {
  StepPlan plan;
  pending_.clear();
  int budget = cfg_.max_step_tokens;
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    int64_t id = running_[i];
    Seq& s = seqs_[id];
    int take = take_for(s, budget);
    if (take > 0 && reserve(s, s.computed + take)) {
      s.scheduled = take;
      budget -= take;
      plan.seqs.push_back({id, s.computed, take});
      note_pending(s, take);
    } else if (take > 0 && running_.size() > 1) {
      preempt(running_.back(), plan, budget);  // lowest priority first, possibly id itself
      continue;                                // retry the same slot
    } else if (take > 0) {
      plan.starved.push_back(id);  // alone and still too big for the whole pool
    }
    ++i;
  }
  for (auto it = waiting_.begin();
       it != waiting_.end() && budget > 0 && static_cast<int>(running_.size()) < cfg_.max_running;) {
    int64_t id = *it;
    Seq& s = seqs_[id];
    if (!admit_ && !s.ran) {  // closed for new work: look further for preempted sequences
      ++it;
      continue;
    }
    const int hit = reuse_prefix(s);
    auto unshare = [&] {  // not admitted: the hit's blocks stay evictable while it waits
      if (hit == 0) return;
      blocks_.free_table(s.table);
      s.computed = 0;
    };
    if (await_prefix(s)) {  // its next block is being computed this step: reuse it next step
      unshare();
      ++it;
      continue;
    }
    int take = take_for(s, budget);
    if (!reserve(s, s.computed + take)) {
      unshare();
      if (running_.empty()) plan.starved.push_back(id);
      break;  // FIFO: later arrivals do not overtake a request waiting for memory
    }
    it = waiting_.erase(it);
    running_.push_back(id);
    s.scheduled = take;
    s.ran = true;
    budget -= take;
    plan.seqs.push_back({id, s.computed, take, hit});
    note_pending(s, take);
    prefix_hit_tokens_ += hit;
  }
  return plan;
}

std::vector<int64_t> Scheduler::preempt_all() {
  std::vector<int64_t> ids = running_;
  StepPlan scratch;
  int budget = 0;
  while (!running_.empty()) preempt(running_.back(), scratch, budget);
  return ids;
}

bool Scheduler::is_running(int64_t id) const {
  return std::find(running_.begin(), running_.end(), id) != running_.end();
}

void Scheduler::update_from_output(const std::vector<SeqUpdate>& updates) {
  for (const SeqUpdate& u : updates) {
    auto it = seqs_.find(u.id);
    if (it == seqs_.end()) continue;
    Seq& s = it->second;
    s.computed += s.scheduled;
    s.scheduled = 0;
    s.total += u.appended;
    if (u.appended > 0 && !s.tokens.empty()) {
      ZR_CHECK(u.appended == 1 && u.token >= 0);
      s.tokens.push_back(u.token);
    }
    index_blocks(s);
    if (u.finished) remove(u.id);
  }
}

}  // namespace zr
