// ThreadPool: every task of a parallel_for runs exactly once and has finished when it returns, also
// when a job with few tasks is followed at once by one with more (a worker finishing the first job
// must not claim a task of the second with the first job's stale claim word).
#include <gtest/gtest.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <thread>
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

// park() (the engine went idle) sends the workers to sleep at once; the next job wakes them, runs
// each task once, and the workers take part again (a task of 200 us each leaves them time to).
TEST(ThreadPool, ParkedWorkersWakeForTheNextJob) {
  ThreadPool pool(2);
  const auto caller = std::this_thread::get_id();
  long wrong = 0;
  std::atomic<int> on_worker{0};
  for (int it = 0; it < 200; ++it) {
    pool.park();
    if (it % 2) std::this_thread::sleep_for(std::chrono::microseconds(100));  // parked and asleep
    std::vector<std::atomic<int>> hits(8);
    pool.parallel_for(8, [&](int i) {
      hits[i].fetch_add(1);
      if (std::this_thread::get_id() != caller) on_worker.fetch_add(1);
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      while (std::chrono::steady_clock::now() < until) {}
    });
    for (int i = 0; i < 8; ++i) wrong += hits[i].load() != 1;
  }
  EXPECT_EQ(wrong, 0) << "a task ran twice or not at all after park()";
  EXPECT_GT(on_worker.load(), 0) << "no task ran on the worker after park(): it never woke";
}

double process_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// Between jobs a worker spins for a bounded time, not a count of pauses (20,000 pauses were
// 0.4-0.6 ms on this host's EPYC): after each job it burns at most ~50 us of CPU, then sleeps.
// 40 jobs, each followed by a 2 ms pause of the caller: the process's CPU time over the pauses is
// the workers' spinning (the caller sleeps). A count-based spin of 0.5 ms would use ~20 ms here.
TEST(ThreadPool, AnIdleWorkerSpinsAboutFiftyMicrosecondsThenSleeps) {
  ThreadPool pool(2);
  const int jobs = 40;
  double idle_cpu_ms = 0;
  for (int it = 0; it < jobs; ++it) {
    pool.parallel_for(4, [](int) {});
    const double before = process_cpu_ms();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    idle_cpu_ms += process_cpu_ms() - before;
  }
  // 50 us each would be 2 ms; 5 ms leaves room for wake-ups and clock reads on a slow host.
  EXPECT_LT(idle_cpu_ms, 5.0) << "the worker spun " << idle_cpu_ms / jobs * 1e3 << " us per idle gap";
}

}  // namespace
}  // namespace zr
