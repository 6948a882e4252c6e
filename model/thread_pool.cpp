#include "model/thread_pool.h"

#include <immintrin.h>

#include <chrono>

namespace zr {

namespace {
// How long a worker spins for the next job before it sleeps: longer than the gap between the
// kernels of one forward step, much shorter than the gap between steps when the engine is idle.
// Measured on the clock, not counted in pauses: one _mm_pause costs 20-30 ns on this host's EPYC
// (20,000 of them were 0.4-0.6 ms) and ~140 on others, so a count spun a core for up to half a
// millisecond after every step, while the step's replies needed it.
constexpr std::chrono::nanoseconds kSpinTime{50'000};
constexpr int kPausesPerClockRead = 32;  // ~1 us between clock reads (a vDSO call, ~20 ns)
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_tasks(uint32_t job) {
  for (;;) {
    uint64_t c = claim_.load(std::memory_order_acquire);
    if (static_cast<uint32_t>(c >> 32) != job) return;
    uint32_t left = static_cast<uint32_t>(c);
    if (left == 0) return;  // every task of `job` is claimed; fn_ may already belong to the next job
    if (!claim_.compare_exchange_weak(c, c - 1, std::memory_order_acq_rel)) continue;
    // Task `left - 1` of `job` was unclaimed until now, so the caller is still waiting for it:
    // fn_ is this job's and stays valid until our done_ increment below.
    (*fn_)(static_cast<int>(left - 1));
    done_.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g = generation_.load(std::memory_order_acquire);
    const auto until = std::chrono::steady_clock::now() + kSpinTime;
    for (int spin = 1; g == seen && !park_.load(std::memory_order_relaxed); ++spin) {
      _mm_pause();
      g = generation_.load(std::memory_order_acquire);
      if (spin % kPausesPerClockRead == 0 && std::chrono::steady_clock::now() >= until) break;
    }
    if (g == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      continue;
    }
    seen = g;
    if (stop_.load()) return;
    run_tasks(static_cast<uint32_t>(claim_.load(std::memory_order_acquire) >> 32));
  }
}

void ThreadPool::parallel_for(int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  fn_ = &fn;
  park_.store(false, std::memory_order_relaxed);  // ordered before the workers' wake by the release below
  done_.store(0, std::memory_order_relaxed);
  ++job_;
  claim_.store((static_cast<uint64_t>(job_) << 32) | static_cast<uint32_t>(n), std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  run_tasks(job_);
  while (done_.load(std::memory_order_acquire) < n) _mm_pause();
  fn_ = nullptr;
}

}  // namespace zr
