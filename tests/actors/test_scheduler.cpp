// Scheduler unit tests: pure logic with its own KV block allocator and fake outputs, stepped by hand.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "actors/engine/scheduler.h"

namespace zr {
namespace {

// Every block in use belongs to a running sequence, a waiting one that kept its KV, or the cache:
// the allocator's count of used blocks equals the distinct blocks the tables hold.
std::set<int> blocks_held(const Scheduler& s, const std::vector<int64_t>& ids) {
  std::set<int> held;
  for (int64_t id : ids)
    for (int b : s.table(id)) held.insert(b);
  return held;
}

// Runs one step as an engine would: every scheduled sequence that reaches its end samples one token.
std::vector<SeqUpdate> fake_outputs(const StepPlan& plan, std::map<int64_t, int>& total,
                                    std::map<int64_t, int>& remaining) {
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
  Scheduler s({8, 64, 32}, 1000, 16);
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
  Scheduler s({8, 40, 32}, 1000, 16);
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
  Scheduler s({2, 1000, 512}, 1000, 16);
  for (int i = 0; i < 5; ++i) s.add(i, 3);
  StepPlan p = s.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[0].id, 0);
  EXPECT_EQ(p.seqs[1].id, 1);
  EXPECT_EQ(s.num_waiting(), 3);
}

TEST(Scheduler, PreemptsTheLatestArrivalWhenKvRunsOut) {
  Scheduler s({8, 100, 100}, 4, 4);                                           // 16 positions in all
  std::map<int64_t, int> total{{1, 4}, {2, 4}}, remaining{{1, 10}, {2, 10}};  // 14 positions each: one fits alone
  s.add(1, 4);
  s.add(2, 4);
  bool preempted2 = false;
  for (int step = 0; step < 60 && !s.idle(); ++step) {
    StepPlan p = s.schedule();
    for (int64_t id : p.preempted) {
      EXPECT_EQ(id, 2);  // the later arrival yields
      EXPECT_TRUE(s.table(id).empty()) << "a preempted sequence must give its blocks back";
      preempted2 = true;
    }
    EXPECT_TRUE(p.starved.empty());
    // Every scheduled sequence holds blocks for every position it will have computed, and the
    // allocator's used blocks are exactly those the live sequences hold (none leaked).
    std::vector<int64_t> live;
    for (int64_t id : {1, 2})
      if (remaining[id] > 0) live.push_back(id);
    for (const auto& q : p.seqs)
      EXPECT_GE(static_cast<int>(s.table(q.id).size()) * 4, q.start + q.count) << "seq " << q.id;
    EXPECT_EQ(static_cast<int>(blocks_held(s, live).size()), s.blocks().num_used()) << "step " << step;
    s.update_from_output(fake_outputs(p, total, remaining));
  }
  EXPECT_TRUE(preempted2);
  EXPECT_TRUE(s.idle());  // both finished: 2 was recomputed after 1 left
  EXPECT_EQ(s.blocks().num_used(), 0) << "a finished sequence's blocks must be freed";
}

TEST(Scheduler, ForkedSamplesShareThePromptAndCopyOnWrite) {
  Scheduler s({8, 100, 100}, 10, 4);
  s.add(1, 6);  // 6-token prompt: blocks [0, 4) and [4, 8)
  StepPlan p = s.schedule();
  ASSERT_EQ(p.seqs.size(), 1u);
  s.fork(1, 2, 6, 7);  // sample 2 shares the prompt's KV; its first token is known
  s.update_from_output({{1, 1, false}});
  EXPECT_EQ(s.table(2), s.table(1));
  EXPECT_EQ(s.blocks().num_used(), 2) << "forks share blocks instead of copying them";
  EXPECT_TRUE(s.take_copies().empty());
  p = s.schedule();  // both write position 6, in the shared second block: one copy for the first writer
  ASSERT_EQ(p.seqs.size(), 2u);
  const auto copies = s.take_copies();
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(s.table(1)[0], s.table(2)[0]) << "the full first block stays shared";
  EXPECT_NE(s.table(1)[1], s.table(2)[1]) << "the written block is private to each";
  EXPECT_EQ(s.blocks().num_used(), 3);
  s.update_from_output({{1, 1, true}, {2, 1, true}});
  EXPECT_EQ(s.blocks().num_used(), 0);
}

TEST(Scheduler, CachedKvIsEvictedBeforeARunningSequenceIsPreempted) {
  Scheduler s({8, 100, 100}, 4, 4);
  std::map<int64_t, int> total{{1, 7}}, remaining{{1, 1}};
  s.add(1, 7);
  StepPlan p = s.schedule();
  s.cache(1, /*key=*/42, 7);  // the turn ends: its 7 positions of KV stay for the next one
  s.update_from_output(fake_outputs(p, total, remaining));
  ASSERT_TRUE(s.has_cached(42));
  EXPECT_EQ(s.blocks().num_used(), 2) << "cached KV stays allocated";
  EXPECT_EQ(s.add(2, 9, /*cached_key=*/42), 7) << "the next turn starts from the cached positions";
  EXPECT_FALSE(s.has_cached(42));
  p = s.schedule();
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].start, 7);
  EXPECT_EQ(p.seqs[0].count, 2);
  s.cache(2, 42, 9);
  s.update_from_output({{2, 0, true}});
  s.add(3, 16);  // needs the whole pool: the cache goes, nobody is starved
  p = s.schedule();
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_TRUE(p.starved.empty());
  EXPECT_FALSE(s.has_cached(42));
  EXPECT_EQ(s.add(4, 3, 42), 0) << "an evicted entry gives no KV";
}

TEST(Scheduler, ASequenceTooBigForThePoolIsReportedStarved) {
  Scheduler s({8, 100, 100}, 2, 4);
  s.add(1, 20);
  StepPlan p = s.schedule();
  ASSERT_EQ(p.starved.size(), 1u);
  EXPECT_EQ(p.starved[0], 1);
}

TEST(Scheduler, ForkedSamplesJoinRunningWithTheirParentsPriority) {
  Scheduler s({8, 100, 100}, 100, 16);
  s.add(1, 5);
  s.add(2, 5);
  StepPlan p = s.schedule();
  s.fork(1, 10, 5, 6);
  s.update_from_output({{1, 1, false}, {2, 1, false}});
  p = s.schedule();
  ASSERT_EQ(p.seqs.size(), 3u);
  EXPECT_EQ(p.seqs[0].id, 1);
  EXPECT_EQ(p.seqs[1].id, 10);  // ordered with its parent, before the later request
  EXPECT_EQ(p.seqs[1].start, 5);
  EXPECT_EQ(p.seqs[1].count, 1);
}

}  // namespace
}  // namespace zr
