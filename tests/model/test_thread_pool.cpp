// ThreadPool: every task of a parallel_for runs exactly once and has finished when it returns, also
// when a job with few tasks is followed at once by one with more (a worker finishing the first job
// must not claim a task of the second with the first job's stale claim word).
#include <gtest/gtest.h>
#include <time.h>

#include <algorithm>
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

double cpu_ms(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// Between jobs a worker spins for a bounded time, not a count of pauses (20,000 pauses were
// 0.4-0.6 ms on this host's EPYC): after each job it burns about 50 us of CPU, then sleeps. Each
// job is followed by a 2 ms sleep of the caller; the process's CPU time over the sleep, less the
// caller's own, is the worker's spinning. Five blocks of ten gaps; the quietest block counts, so a
// busy machine's wake-ups do not fail the test, while a spin of 0.4 ms fails every block.
TEST(ThreadPool, AnIdleWorkerSpinsAboutFiftyMicrosecondsThenSleeps) {
  ThreadPool pool(2);
  double best_us = 1e9;
  for (int block = 0; block < 5; ++block) {
    double worker_ms = 0;
    for (int it = 0; it < 10; ++it) {
      pool.parallel_for(4, [](int) {});
      const double proc = cpu_ms(CLOCK_PROCESS_CPUTIME_ID), self = cpu_ms(CLOCK_THREAD_CPUTIME_ID);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      worker_ms += (cpu_ms(CLOCK_PROCESS_CPUTIME_ID) - proc) - (cpu_ms(CLOCK_THREAD_CPUTIME_ID) - self);
    }
    best_us = std::min(best_us, worker_ms / 10 * 1e3);
  }
  // 50 us of spin plus a wake-up and the clock reads; a 500 us spin fails.
  EXPECT_LT(best_us, 150.0) << "the worker spun " << best_us << " us per idle gap (quietest block of ten)";
}

}  // namespace
}  // namespace zr
