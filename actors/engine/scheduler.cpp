#include "actors/engine/scheduler.h"

#include <algorithm>

#include "comm/status.h"

namespace zr {

Scheduler::Scheduler(SchedulerConfig cfg, KvBudget* budget) : cfg_(cfg), budget_(budget) {
  ZR_CHECK(cfg_.max_running > 0 && cfg_.max_step_tokens > 0 && cfg_.max_prefill_chunk > 0);
}

void Scheduler::add(int64_t id, int total, int computed) {
  ZR_CHECK(!seqs_.count(id) && computed < total);
  seqs_[id] = Seq{computed, total, next_arrival_++, 0};
  waiting_.push_back(id);
}

void Scheduler::add_running(int64_t id, int computed, int total, int64_t arrival) {
  ZR_CHECK(!seqs_.count(id));
  seqs_[id] = Seq{computed, total, arrival, 0, true};
  auto pos = std::upper_bound(running_.begin(), running_.end(), seqs_[id].arrival,
                              [this](int64_t a, int64_t other) { return a < seqs_.at(other).arrival; });
  running_.insert(pos, id);
}

void Scheduler::remove(int64_t id) {
  if (!seqs_.erase(id)) return;
  running_.erase(std::remove(running_.begin(), running_.end(), id), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), id), waiting_.end());
}

int Scheduler::take_for(const Seq& s, int budget) const {
  int need = s.total - s.computed;
  if (need > 1) need = std::min(need, cfg_.max_prefill_chunk);
  return std::min(need, budget);
}

// Releases the KV of running sequence `victim` and puts it back in the waiting queue in arrival
// order; if it was already planned this step, its tokens go back to the step budget.
void Scheduler::preempt(int64_t victim, StepPlan& plan, int& budget) {
  Seq& v = seqs_[victim];
  budget_->release(victim);
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
    if (take > 0 && budget_->reserve(id, s.computed, s.computed + take)) {
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
    if (!budget_->reserve(id, s.computed, s.computed + take)) {
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
