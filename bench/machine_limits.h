// Machine limits measured in-process: the roofline that benchmarks report their throughput against.
// Every measurement is a median over `repeats` timed samples after one untimed warm-up; a sample
// repeats short calls until it lasts >= 20 ms. Numbers from the same run on a shared, noisy host
// can be compared with each other; absolute values drift with the neighbours.
//
// Threading: the BLAS functions set OpenBLAS's thread count (openblas_set_num_threads) and leave it
// set; the memory functions use their own std::threads. Not thread-safe: call from one thread, and
// do not run two measurements at once (they would share the cores they measure).
#pragma once

#include <cstddef>
#include <string>

namespace zr::bench {

struct Measurement {
  double median = 0;  // in the unit of the function (GFLOP/s or GB/s, GB = 1e9 bytes)
  double min = 0;
  double max = 0;
  int repeats = 0;
  std::string shape;  // what was actually measured, e.g. "2048^3" or "1 GiB"
};

// cblas_sgemm C(n,n) = A(n,n)·B(n,n), row-major, f32. If one call takes longer than ~0.5 s the
// size is halved (until n = 256) so the measurement stays short; `shape` says which n was used.
Measurement sgemm_gflops(int n = 2048, int threads = 1, int repeats = 5);

// cblas_sgemv y(m) = W(m,k)·x(k), row-major W (a Linear layer at batch 1). W of m·k·4 bytes is
// L3-resident when small (hot) and streamed from DRAM when large (cold). GFLOP/s = 2·m·k / time.
Measurement sgemv_gflops(int m, int k, int threads = 1, int repeats = 7);
// Same run expressed as bytes of W read per second (GB/s).
Measurement sgemv_gbps(int m, int k, int threads = 1, int repeats = 7);

// Read bandwidth: sum of a pre-faulted f32 buffer of `bytes` (>> L3), split across `threads`.
Measurement mem_read_gbps(std::size_t bytes = std::size_t{1} << 30, int threads = 1, int repeats = 7);

// memcpy of `bytes` into a pre-faulted destination, split across `threads`. GB/s counts the bytes
// copied (not read + written).
Measurement memcpy_gbps(std::size_t bytes = std::size_t{256} << 20, int threads = 1, int repeats = 7);

// Limits sampled while something else runs: call sample() between pieces of the work being
// measured (e.g. every few decode steps), so the limits and the work see the same host. Bursts
// of the neighbours then land in both; the medians over the run are what a ratio should use (a
// single measurement before or after can catch a burst the work never saw). Buffers and matrices
// are made once; a sample is one read pass set (>= 20 ms) and, with `sgemm`, one sgemm call.
class LimitSampler {
 public:
  explicit LimitSampler(int threads, std::size_t read_bytes = std::size_t{256} << 20, int sgemm_n = 2048);
  ~LimitSampler();
  LimitSampler(const LimitSampler&) = delete;
  LimitSampler& operator=(const LimitSampler&) = delete;

  void sample(bool sgemm = true);
  Measurement read_gbps() const;     // median, min, max over the samples so far
  Measurement sgemm_gflops() const;  // same, for OpenBLAS sgemm n^3
  double last_read_gbps() const;     // the latest sample's (0 before any)
  double last_sgemm_gflops() const;  // the latest sgemm sample's (0 before any)

 private:
  struct State;
  State* s_;
};

// "OPENBLAS_CORETYPE=<value|auto> core=<openblas_get_corename()> config=<openblas_get_config()>".
std::string openblas_description();
// The value of OPENBLAS_CORETYPE, or "auto" when unset.
std::string openblas_coretype();

}  // namespace zr::bench
