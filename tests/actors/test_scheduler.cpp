// Scheduler unit tests: pure logic against a fake KV budget, stepped by hand.
#include <gtest/gtest.h>

#include <map>

#include "actors/engine/scheduler.h"

namespace zr {
namespace {

// Counts blocks of `block` positions per sequence; no sharing.
class FakeBudget : public KvBudget {
 public:
  FakeBudget(int blocks, int block) : free_(blocks), block_(block) {}
  bool reserve(int64_t seq, int computed, int new_len) override {
    int want = (new_len + block_ - 1) / block_;
    int need = want - held_[seq];
    if (need > free_) return false;
    if (need > 0) {
      free_ -= need;
      held_[seq] = want;
    }
    return true;
  }
  void release(int64_t seq) override {
    free_ += held_[seq];
    held_.erase(seq);
    ++releases;
  }
  int free_;
  int block_;
  int releases = 0;
  std::map<int64_t, int> held_;
};

// Runs one step as an engine would: every scheduled sequence that reaches its end samples one token.
std::vector<SeqUpdate> fake_outputs(const StepPlan& plan, std::map<int64_t, int>& total, std::map<int64_t, int>& remaining) {
  std::vector<SeqUpdate> ups;
  for (const auto& s : plan.seqs) {
    SeqUpdate u{s.id};
    if (s.start + s.count == total[s.id]) {
      u.appended = 1;
      ++total[s.id];
      u.finished = --remaining[s.id] == 0;
    }
    ups.push_back(u);
  }
  return ups;
}

TEST(Scheduler, ChunkedPrefillRespectsTheStepBudget) {
  FakeBudget kv(1000, 16);
  Scheduler s({8, 64, 32}, &kv);
  s.add(1, 100);
  s.add(2, 10);
  StepPlan p = s.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[0].id, 1);
  EXPECT_EQ(p.seqs[0].count, 32);  // max_prefill_chunk
  EXPECT_EQ(p.seqs[1].count, 10);  // the short prompt runs beside the long one
  int total = 0;
  for (auto& q : p.seqs) total += q.count;
  EXPECT_LE(total, 64);
}

TEST(Scheduler, DecodesGoFirstAndLongPromptCannotStarveOthers) {
  FakeBudget kv(1000, 16);
  Scheduler s({8, 40, 32}, &kv);
  std::map<int64_t, int> total{{1, 4}, {2, 500}, {3, 4}}, remaining{{1, 50}, {2, 1}, {3, 50}};
  s.add(1, 4);
  s.add(2, 500);
  s.add(3, 4);
  for (int step = 0; step < 10; ++step) {
    StepPlan p = s.schedule();
    bool saw1 = false, saw3 = false;
    for (auto& q : p.seqs) saw1 |= q.id == 1, saw3 |= q.id == 3;
    EXPECT_TRUE(saw1 && saw3) << "step " << step;  // short requests progress every step
    s.update_from_output(fake_outputs(p, total, remaining));
  }
}

TEST(Scheduler, MaxRunningIsRespectedAndFifoAdmission) {
  FakeBudget kv(1000, 16);
  Scheduler s({2, 1000, 512}, &kv);
  for (int i = 0; i < 5; ++i) s.add(i, 3);
  StepPlan p = s.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[0].id, 0);
  EXPECT_EQ(p.seqs[1].id, 1);
  EXPECT_EQ(s.num_waiting(), 3);
}

TEST(Scheduler, PreemptsTheLatestArrivalWhenKvRunsOut) {
  FakeBudget kv(4, 4);  // 16 positions in all
  Scheduler s({8, 100, 100}, &kv);
  std::map<int64_t, int> total{{1, 4}, {2, 4}}, remaining{{1, 10}, {2, 10}};  // 14 positions each: one fits alone
  s.add(1, 4);
  s.add(2, 4);
  bool preempted2 = false;
  for (int step = 0; step < 60 && !s.idle(); ++step) {
    StepPlan p = s.schedule();
    for (int64_t id : p.preempted) {
      EXPECT_EQ(id, 2);  // the later arrival yields
      EXPECT_EQ(kv.held_.count(id) ? kv.held_.at(id) : 0, 0) << "a preempted sequence must give its blocks back";
      preempted2 = true;
    }
    EXPECT_TRUE(p.starved.empty());
    // Every scheduled sequence holds blocks for every position it will have computed, and only
    // scheduled or still-running sequences hold any.
    for (const auto& q : p.seqs)
      EXPECT_GE((kv.held_.count(q.id) ? kv.held_.at(q.id) : 0) * 4, q.start + q.count) << "seq " << q.id;
    for (const auto& [id, blocks] : kv.held_)
      if (blocks > 0) {
        EXPECT_TRUE(s.is_running(id)) << "seq " << id << " holds blocks but is not running";
      }
    auto ups = fake_outputs(p, total, remaining);
    s.update_from_output(ups);
    for (auto& u : ups)
      if (u.finished) kv.release(u.id);  // the engine frees a finished sequence's KV
  }
  EXPECT_TRUE(preempted2);
  EXPECT_TRUE(s.idle());  // both finished: 2 was recomputed after 1 left
  int held = 0;
  for (const auto& [id, blocks] : kv.held_) held += blocks;
  EXPECT_EQ(held, 0) << "blocks leaked";
  EXPECT_EQ(kv.free_, 4);
  EXPECT_GE(kv.releases, 3) << "two finishes and at least one preemption";
}

TEST(Scheduler, ASequenceTooBigForThePoolIsReportedStarved) {
  FakeBudget kv(2, 4);
  Scheduler s({8, 100, 100}, &kv);
  s.add(1, 20);
  StepPlan p = s.schedule();
  ASSERT_EQ(p.starved.size(), 1u);
  EXPECT_EQ(p.starved[0], 1);
}

TEST(Scheduler, ForkedSamplesJoinRunningWithTheirParentsPriority) {
  FakeBudget kv(100, 16);
  Scheduler s({8, 100, 100}, &kv);
  s.add(1, 5);
  s.add(2, 5);
  StepPlan p = s.schedule();
  s.update_from_output({{1, 1, false}, {2, 1, false}});
  s.add_running(10, 5, 6, s.arrival(1));
  p = s.schedule();
  ASSERT_EQ(p.seqs.size(), 3u);
  EXPECT_EQ(p.seqs[0].id, 1);
  EXPECT_EQ(p.seqs[1].id, 10);  // ordered with its parent, before the later request
  EXPECT_EQ(p.seqs[1].start, 5);
  EXPECT_EQ(p.seqs[1].count, 1);
}

}  // namespace
}  // namespace zr
