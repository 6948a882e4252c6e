// ThreadPool: the engine's one compute thread pool (OpenBLAS stays single-threaded beside it, so
// two pools never spin on the same cores). The caller thread takes part in every parallel_for.
// Workers spin for up to 50 us of clock time between jobs (jobs come every few microseconds during
// a forward), then sleep on an atomic wait. Thread-safety: parallel_for is called from one thread at a time.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace zr {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);  // total threads including the caller; >= 1
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Runs fn(i) for every i in [0, n); returns when all calls have finished.
  void parallel_for(int n, const std::function<void(int)>& fn);
  // Workers stop spinning and sleep now, until the next parallel_for: for a caller that knows no
  // job comes soon (the engine went idle). A spinning worker holds a core for up to 50 us, which
  // on a small host is the core a reply's socket threads would run on.
  void park() { park_.store(true, std::memory_order_relaxed); }

 private:
  void worker_loop();
  void run_tasks(uint32_t job);

  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};  // bumped to wake sleeping workers
  // (job << 32) | number of tasks of that job not yet claimed. A task is claimed by a CAS that
  // decrements the count and also checks the job, so a worker that wakes late can never run a task
  // of a job that has moved on. The bound lives in the same word: a worker never reads a task count
  // the caller may already be rewriting for the next job (a stale (job, 0) just fails or returns).
  // The caller waits for tasks, not for workers: a worker still asleep when every task is done
  // costs nothing.
  std::atomic<uint64_t> claim_{0};
  std::atomic<int> done_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> park_{false};  // set by park(), cleared by parallel_for
  uint32_t job_ = 0;
  const std::function<void(int)>* fn_ = nullptr;
};

}  // namespace zr
