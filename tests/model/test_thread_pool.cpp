// ThreadPool: every task of a parallel_for runs exactly once and has finished when it returns, also
// when a job with few tasks is followed at once by one with more (a worker finishing the first job
// must not claim a task of the second with the first job's stale claim word).
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "model/thread_pool.h"

namespace zr {
namespace {

TEST(ThreadPool, BackToBackJobsOfGrowingSizeRunEachTaskOnce) {
  ThreadPool pool(2);
  long wrong = 0, early = 0;
  for (int it = 0; it < 1000000 && wrong == 0 && early == 0; ++it) {
    const int n = (it % 2) ? 16 : 2;
    std::vector<std::atomic<int>> hits(n);
    std::atomic<int> finished{0};
    pool.parallel_for(n, [&](int i) {
      hits[i].fetch_add(1);
      finished.fetch_add(1);
    });
    if (finished.load() != n) ++early;
    for (int i = 0; i < n; ++i) wrong += hits[i].load() != 1;
  }
  EXPECT_EQ(wrong, 0) << "a task ran twice or not at all";
  EXPECT_EQ(early, 0) << "parallel_for returned before all its tasks finished";
}

}  // namespace
}  // namespace zr
