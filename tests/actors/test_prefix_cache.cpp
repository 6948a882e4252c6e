// Prefix caching in the scheduler: pure logic with fake outputs, stepped by hand (the bitwise
// equality of cached and fresh KV is tested on a real model in test_prefix_engine.cpp).
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <set>

#include "actors/engine/scheduler.h"

namespace zr {
namespace {

std::vector<int> iota_tokens(int n, int first = 100) {
  std::vector<int> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

// Drives the scheduler like an engine: each sequence that reaches its end samples token 7 until
// it has `max_new` outputs. Returns the plans, in order.
struct Driver {
  explicit Driver(Scheduler& sched) : s(sched) {}
  Scheduler& s;
  std::map<int64_t, int> total, left;
  void add(int64_t id, std::vector<int> toks, int max_new, int limit = Scheduler::kNoLimit) {
    total[id] = static_cast<int>(toks.size());
    left[id] = max_new;
    s.add(id, std::move(toks), limit);
  }
  StepPlan step() {
    StepPlan p = s.schedule();
    std::vector<SeqUpdate> ups;
    for (const auto& q : p.seqs) {
      SeqUpdate u{q.id};
      if (q.start + q.count == total[q.id]) {
        u.appended = 1;
        u.token = 7;
        ++total[q.id];
        u.finished = --left[q.id] == 0;
      }
      ups.push_back(u);
    }
    s.take_copies();
    s.update_from_output(ups);
    return p;
  }
  void run() {
    for (int i = 0; i < 1000 && !s.idle(); ++i) step();
    ASSERT_TRUE(s.idle());
  }
};

const ScheduledSeq* find(const StepPlan& p, int64_t id) {
  for (const auto& q : p.seqs)
    if (q.id == id) return &q;
  return nullptr;
}

TEST(PrefixCache, ALaterRequestReusesFullBlocksAndComputesAtLeastTheLastToken) {
  Scheduler s({8, 100, 100}, 64, 4);
  Driver d(s);
  d.add(1, iota_tokens(10), 3);  // 10 + 3 tokens: blocks [0,4) [4,8) [8,12) computed in full
  d.run();
  EXPECT_EQ(s.blocks().num_used(), s.prefix_cache().size()) << "only the cache holds blocks now";
  EXPECT_EQ(s.prefix_cache().size(), 3);
  d.add(2, iota_tokens(10), 1);  // same prompt: two full blocks of it are cached
  StepPlan p = d.step();
  ASSERT_NE(find(p, 2), nullptr);
  EXPECT_EQ(find(p, 2)->cached, 8);
  EXPECT_EQ(find(p, 2)->start, 8);
  EXPECT_EQ(find(p, 2)->count, 2);
  d.run();
  // A prompt ending on a block boundary reuses all but its last token: the last block is shared
  // and copied on write.
  d.add(3, iota_tokens(8), 1);
  p = s.schedule();
  ASSERT_NE(find(p, 3), nullptr);
  EXPECT_EQ(find(p, 3)->cached, 7);
  EXPECT_EQ(find(p, 3)->count, 1);
  EXPECT_EQ(s.take_copies().size(), 1u) << "the shared last block is copied before it is written";
  EXPECT_EQ(s.prefix_hit_tokens(), 15);
}

TEST(PrefixCache, OnlyTheMatchingPrefixIsReused) {
  Scheduler s({8, 100, 100}, 64, 4);
  Driver d(s);
  d.add(1, iota_tokens(12), 1);
  d.run();
  std::vector<int> other = iota_tokens(12);
  other[5] = 3;  // differs inside the second block
  d.add(2, other, 1);
  StepPlan p = d.step();
  EXPECT_EQ(find(p, 2)->cached, 4);
  d.run();
  d.add(3, iota_tokens(12, 5), 1);  // differs from the first token
  p = d.step();
  EXPECT_EQ(find(p, 3)->cached, 0);
}

TEST(PrefixCache, ReuseStopsAtTheReuseLimit) {
  Scheduler s({8, 100, 100}, 64, 4);
  Driver d(s);
  d.add(1, iota_tokens(16), 1);
  d.run();
  d.add(2, iota_tokens(16), 1, /*limit=*/5);  // e.g. prompt logprobs from position 6
  StepPlan p = d.step();
  EXPECT_EQ(find(p, 2)->cached, 5);
  EXPECT_EQ(find(p, 2)->start, 5);
  d.run();
  d.add(3, iota_tokens(16), 1, /*limit=*/0);
  p = d.step();
  EXPECT_EQ(find(p, 3)->cached, 0);
}

TEST(PrefixCache, NeverReusedAcrossWeightVersions) {
  Scheduler s({8, 100, 100}, 64, 4);
  Driver d(s);
  d.add(1, iota_tokens(12), 1);
  d.run();
  ASSERT_GT(s.prefix_cache().size(), 0);
  s.set_weight_version(1);
  EXPECT_EQ(s.prefix_cache().size(), 0);
  EXPECT_EQ(s.blocks().num_used(), 0);
  d.add(2, iota_tokens(12), 1);
  StepPlan p = d.step();
  EXPECT_EQ(find(p, 2)->cached, 0);
}

TEST(PrefixCache, ASequenceSpanningACommitIsNotIndexed) {
  Scheduler s({8, 100, 100}, 64, 4);
  Driver d(s);
  d.add(1, iota_tokens(6), 10);
  d.step();                 // prompt computed under version 0
  s.set_weight_version(1);  // the continue policy: it keeps its KV and goes on
  d.run();
  EXPECT_EQ(s.prefix_cache().size(), 0) << "KV mixing two versions must not be cached";
  EXPECT_EQ(s.blocks().num_used(), 0);
}

TEST(PrefixCache, CopiesOfOnePromptInOneBatchWaitOneStepAndReuseIt) {
  Scheduler s({16, 1000, 100}, 64, 4);
  Driver d(s);
  for (int64_t id = 1; id <= 4; ++id) d.add(id, iota_tokens(16), 2);
  d.add(9, iota_tokens(16, 500), 2);  // another prompt is not held back
  StepPlan p = d.step();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[0].id, 1);
  EXPECT_EQ(p.seqs[1].id, 9);
  p = d.step();
  int prefill = 0;
  for (int64_t id = 2; id <= 4; ++id) {
    ASSERT_NE(find(p, id), nullptr) << id;
    EXPECT_EQ(find(p, id)->cached, 15);
    prefill += find(p, id)->count;
  }
  EXPECT_EQ(prefill, 3) << "the copies compute one token each";
  d.run();
}

TEST(PrefixCache, LruEvictionUnderATinyBudgetKeepsEverythingRunning) {
  Scheduler s({4, 100, 100}, 12, 4);  // 48 positions
  Driver d(s);
  int64_t id = 0;
  for (int round = 0; round < 6; ++round) {
    for (int k = 0; k < 3; ++k, ++id) d.add(id, iota_tokens(14, 1000 * static_cast<int>(id % 5)), 6);
    for (int i = 0; i < 200 && !s.idle(); ++i) {
      StepPlan p = d.step();
      EXPECT_TRUE(p.starved.empty());
      EXPECT_LE(s.blocks().num_used(), s.blocks().num_blocks());
    }
    ASSERT_TRUE(s.idle());
  }
  EXPECT_GT(s.prefix_hit_tokens(), 0);
  EXPECT_LE(s.prefix_cache().size(), 12);
  EXPECT_EQ(s.prefix_cache().num_idle(), s.blocks().num_used()) << "idle: only the cache holds blocks";
  EXPECT_GT(s.drop_all_cached(), 0);
  EXPECT_EQ(s.blocks().num_used(), 0);
}

TEST(PrefixCache, CachedBlocksGoBeforeAnyPreemption) {
  Scheduler s({8, 100, 100}, 8, 4);  // 32 positions
  Driver d(s);
  d.add(1, iota_tokens(16), 1);
  d.run();
  EXPECT_EQ(s.blocks().num_used(), 4);
  d.add(2, iota_tokens(12, 700), 8);  // together 8 blocks: the cache must give way
  d.add(3, iota_tokens(4, 800), 8);
  for (int i = 0; i < 100 && !s.idle(); ++i) {
    StepPlan p = d.step();
    EXPECT_TRUE(p.preempted.empty()) << "step " << i;
  }
  EXPECT_TRUE(s.idle());
}

TEST(PrefixCache, OffMeansNoReuse) {
  SchedulerConfig cfg{8, 100, 100};
  cfg.prefix_cache = false;
  Scheduler s(cfg, 64, 4);
  Driver d(s);
  d.add(1, iota_tokens(12), 1);
  d.run();
  EXPECT_EQ(s.blocks().num_used(), 0);
  d.add(2, iota_tokens(12), 1);
  EXPECT_EQ(find(d.step(), 2)->cached, 0);
}

TEST(PrefixCache, APreemptedSequenceRecomputesFromItsOwnCachedBlocks) {
  Scheduler s({8, 100, 100}, 6, 4);  // 24 positions: one of the two fits at a time
  Driver d(s);
  d.add(1, iota_tokens(8), 12);
  d.add(2, iota_tokens(8, 300), 12);
  bool preempted = false, rehit = false;
  for (int i = 0; i < 200 && !s.idle(); ++i) {
    StepPlan p = d.step();
    preempted |= !p.preempted.empty();
    if (preempted)
      for (const auto& q : p.seqs) rehit |= q.cached > 0;
  }
  EXPECT_TRUE(s.idle());
  EXPECT_TRUE(preempted);
  EXPECT_TRUE(rehit) << "the victim's computed blocks were kept by the cache";
}

}  // namespace
}  // namespace zr
