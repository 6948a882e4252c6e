#include "bench/machine_limits.h"

#include <cblas.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace zr::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Minimum duration of one timed sample: short calls (a cache-hot sgemv is ~0.1 ms) are repeated
// inside a sample so timer resolution and single interrupts do not decide the result.
constexpr double kMinSampleSeconds = 0.02;

Measurement summarize(std::vector<double> v, std::string shape) {
  Measurement m;
  m.shape = std::move(shape);
  m.repeats = static_cast<int>(v.size());
  if (v.empty()) return m;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  m.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  m.min = v.front();
  m.max = v.back();
  return m;
}

// Times `run` once untimed (warm-up, and to size the samples), then `repeats` samples of one or
// more calls; `work` is the amount per call (FLOP or bytes), so a sample is work / seconds / 1e9.
Measurement measure(double work, int repeats, const std::function<void()>& run, std::string shape) {
  auto t_warm = Clock::now();
  run();
  double once = seconds_since(t_warm);
  int calls = once >= kMinSampleSeconds ? 1 : static_cast<int>(kMinSampleSeconds / once) + 1;
  std::vector<double> rates;
  for (int i = 0; i < std::max(repeats, 1); ++i) {
    auto t0 = Clock::now();
    for (int c = 0; c < calls; ++c) run();
    rates.push_back(work * calls / seconds_since(t0) / 1e9);
  }
  return summarize(std::move(rates), std::move(shape));
}

// Anonymous mapping, huge pages requested, every page faulted in by a write before any timing.
class Buffer {
 public:
  explicit Buffer(size_t bytes) : bytes_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    madvise(p, bytes, MADV_HUGEPAGE);
    data_ = static_cast<char*>(p);
    std::memset(data_, 1, bytes);
  }
  ~Buffer() { munmap(data_, bytes_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  char* data() { return data_; }
  size_t size() const { return bytes_; }

 private:
  char* data_ = nullptr;
  size_t bytes_ = 0;
};

// Runs fn(t, begin, end) on `threads` std::threads over [0, n), chunks rounded to `align` elements.
void parallel_for(size_t n, int threads, size_t align, const std::function<void(int, size_t, size_t)>& fn) {
  threads = std::max(threads, 1);
  size_t chunk = (n / threads + align - 1) / align * align;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    size_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    if (t + 1 == threads) e = n;
    pool.emplace_back(fn, t, b, e);
  }
  for (auto& th : pool) th.join();
}

float sum_f32(const float* p, size_t n) {
  size_t i = 0;
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  alignas(64) float lanes[16];  // not _mm512_reduce_add_ps: GCC 12 warns inside it
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  float s = 0;
  for (float l : lanes) s += l;
#else
  // 32 independent lanes: an element-wise update the compiler vectorizes without -ffast-math.
  float acc[32] = {};
  for (; i + 32 <= n; i += 32)
    for (int j = 0; j < 32; ++j) acc[j] += p[i + j];
  float s = 0;
  for (float a : acc) s += a;
#endif
  for (; i < n; ++i) s += p[i];
  return s;
}

std::vector<float> random_f32(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

Measurement sgemv_run(int m, int k, int threads, int repeats, bool as_bytes) {
  openblas_set_num_threads(threads);
  auto w = random_f32(size_t(m) * k, 1), x = random_f32(k, 2);
  std::vector<float> y(m);
  auto run = [&] { cblas_sgemv(CblasRowMajor, CblasNoTrans, m, k, 1.f, w.data(), k, x.data(), 1, 0.f, y.data(), 1); };
  double work = as_bytes ? 4.0 * m * k : 2.0 * m * k;
  return measure(work, repeats, run, std::to_string(m) + "x" + std::to_string(k));
}

}  // namespace

Measurement sgemm_gflops(int n, int threads, int repeats) {
  openblas_set_num_threads(threads);
  for (;;) {
    auto a = random_f32(size_t(n) * n, 1), b = random_f32(size_t(n) * n, 2);
    std::vector<float> c(size_t(n) * n);
    auto run = [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    };
    auto t0 = Clock::now();
    run();
    if (seconds_since(t0) > 0.5 && n > 256) {
      n /= 2;
      continue;
    }
    return measure(2.0 * n * n * n, repeats, run, std::to_string(n) + "^3");
  }
}

Measurement sgemv_gflops(int m, int k, int threads, int repeats) { return sgemv_run(m, k, threads, repeats, false); }

Measurement sgemv_gbps(int m, int k, int threads, int repeats) { return sgemv_run(m, k, threads, repeats, true); }

namespace {
// One read of the whole buffer, split across `threads`; the sum is stored so nothing is elided.
void read_pass(Buffer& buf, int threads) {
  const float* p = reinterpret_cast<const float*>(buf.data());
  std::vector<float> sums(std::max(threads, 1));
  parallel_for(buf.size() / sizeof(float), threads, 1024,
               [&](int t, size_t b, size_t e) { sums[t] = sum_f32(p + b, e - b); });
  volatile float sink = 0;
  for (float x : sums) sink = sink + x;
}
}  // namespace

Measurement mem_read_gbps(size_t bytes, int threads, int repeats) {
  Buffer buf(bytes);
  return measure(
      double(bytes), repeats, [&] { read_pass(buf, threads); }, std::to_string(bytes >> 20) + " MiB");
}

Measurement memcpy_gbps(size_t bytes, int threads, int repeats) {
  Buffer src(bytes), dst(bytes);
  auto run = [&] {
    parallel_for(bytes, threads, 4096,
                 [&](int, size_t b, size_t e) { std::memcpy(dst.data() + b, src.data() + b, e - b); });
  };
  return measure(double(bytes), repeats, run, std::to_string(bytes >> 20) + " MiB");
}

struct LimitSampler::State {
  State(int num_threads, size_t read_bytes, int sgemm_n)
      : threads(num_threads),
        buf(read_bytes),
        n(sgemm_n),
        a(random_f32(size_t(sgemm_n) * sgemm_n, 1)),
        b(random_f32(size_t(sgemm_n) * sgemm_n, 2)),
        c(size_t(sgemm_n) * sgemm_n) {}
  int threads;
  Buffer buf;
  int n;
  std::vector<float> a, b, c;
  std::vector<double> read, sgemm;
};

LimitSampler::LimitSampler(int threads, size_t read_bytes, int sgemm_n) : s_(new State(threads, read_bytes, sgemm_n)) {
  openblas_set_num_threads(threads);
  // Warm-up: OpenBLAS's buffers and the read buffer's first pass, untimed.
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, sgemm_n, sgemm_n, sgemm_n, 1.f, s_->a.data(), sgemm_n,
              s_->b.data(), sgemm_n, 0.f, s_->c.data(), sgemm_n);
}

LimitSampler::~LimitSampler() { delete s_; }

void LimitSampler::sample(bool sgemm) {
  State& s = *s_;
  auto t0 = Clock::now();
  size_t passes = 0;
  do {
    read_pass(s.buf, s.threads);
    ++passes;
  } while (seconds_since(t0) < kMinSampleSeconds);
  s.read.push_back(double(passes) * s.buf.size() / seconds_since(t0) / 1e9);
  if (!sgemm) return;
  openblas_set_num_threads(s.threads);
  auto t1 = Clock::now();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.n, s.n, s.n, 1.f, s.a.data(), s.n, s.b.data(), s.n, 0.f,
              s.c.data(), s.n);
  s.sgemm.push_back(2.0 * s.n * s.n * s.n / seconds_since(t1) / 1e9);
}

double LimitSampler::last_read_gbps() const { return s_->read.empty() ? 0 : s_->read.back(); }
double LimitSampler::last_sgemm_gflops() const { return s_->sgemm.empty() ? 0 : s_->sgemm.back(); }

Measurement LimitSampler::read_gbps() const {
  return summarize(s_->read, std::to_string(s_->buf.size() >> 20) + " MiB");
}

Measurement LimitSampler::sgemm_gflops() const { return summarize(s_->sgemm, std::to_string(s_->n) + "^3"); }

std::string openblas_coretype() {
  const char* v = std::getenv("OPENBLAS_CORETYPE");
  return v && *v ? v : "auto";
}

std::string openblas_description() {
  std::string s = "OPENBLAS_CORETYPE=" + openblas_coretype();
  s += " core=";
  s += openblas_get_corename();
  s += " config=";
  s += openblas_get_config();
  return s;
}

}  // namespace zr::bench
