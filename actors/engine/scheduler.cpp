#include "actors/engine/scheduler.h"

#include <algorithm>

#include "comm/status.h"

namespace zr {

Scheduler::Scheduler(SchedulerConfig cfg, int num_blocks, int block_size)
    : cfg_(cfg), blocks_(num_blocks, block_size) {
  ZR_CHECK(cfg_.max_running > 0 && cfg_.max_step_tokens > 0 && cfg_.max_prefill_chunk > 0);
}

int Scheduler::add(int64_t id, int total, int64_t cached_key) {
  ZR_CHECK(!seqs_.count(id) && total > 0);
  Seq s{0, total, next_arrival_++, 0, false, {}};
  if (auto it = cached_.find(cached_key); it != cached_.end()) {
    ZR_CHECK(it->second.computed < total);
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
  ZR_CHECK(!seqs_.count(child) && computed < total);
  const Seq& p = seqs_.at(parent);
  ZR_CHECK(blocks_.blocks_for(computed) <= static_cast<int>(p.table.size()));
  BlockTable shared(p.table.begin(), p.table.begin() + blocks_.blocks_for(computed));
  seqs_[child] = Seq{computed, total, p.arrival, 0, true, blocks_.share(shared)};
  insert_running(child);
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
  while (evict_oldest_cached()) {
  }
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
  while (!blocks_.prepare_write(s.table, s.computed, new_len))
    if (!evict_oldest_cached()) return false;  // cached KV goes before running sequences'
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
  blocks_.free_table(v.table);
  v.computed = 0;
  budget += v.scheduled;
  v.scheduled = 0;
  plan.seqs.erase(std::remove_if(plan.seqs.begin(), plan.seqs.end(),
                                 [victim](const ScheduledSeq& s) { return s.id == victim; }),
                  plan.seqs.end());
  running_.erase(std::find(running_.begin(), running_.end(), victim));
  auto pos = std::upper_bound(waiting_.begin(), waiting_.end(), v.arrival,
                              [this](int64_t a, int64_t other) { return a < seqs_.at(other).arrival; });
  waiting_.insert(pos, victim);
  plan.preempted.push_back(victim);
}

StepPlan Scheduler::schedule() {
  StepPlan plan;
  int budget = cfg_.max_step_tokens;
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    int64_t id = running_[i];
    Seq& s = seqs_[id];
    int take = take_for(s, budget);
    if (take > 0 && reserve(s, s.computed + take)) {
      s.scheduled = take;
      budget -= take;
      plan.seqs.push_back({id, s.computed, take});
    } else if (take > 0 && running_.size() > 1) {
      preempt(running_.back(), plan, budget);  // lowest priority first, possibly id itself
      continue;                                // retry the same slot
    } else if (take > 0) {
      plan.starved.push_back(id);  // alone and still too big for the whole pool
    }
    ++i;
  }
  for (auto it = waiting_.begin(); it != waiting_.end() && budget > 0 &&
                                   static_cast<int>(running_.size()) < cfg_.max_running;) {
    int64_t id = *it;
    Seq& s = seqs_[id];
    if (!admit_ && !s.ran) {  // closed for new work: look further for preempted sequences
      ++it;
      continue;
    }
    int take = take_for(s, budget);
    if (!reserve(s, s.computed + take)) {
      if (running_.empty()) plan.starved.push_back(id);
      break;  // FIFO: later arrivals do not overtake a request waiting for memory
    }
    it = waiting_.erase(it);
    running_.push_back(id);
    s.scheduled = take;
    s.ran = true;
    budget -= take;
    plan.seqs.push_back({id, s.computed, take});
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
    if (u.finished) remove(u.id);
  }
}

}  // namespace zr
