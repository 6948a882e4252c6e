// PhaseProbe: wall time and minor page faults of one phase of a weight transfer, on the calling
// thread (getrusage(RUSAGE_THREAD)): the perf-free way to see which step touches pages for the
// first time. Printed (spdlog warn) only when ZR_WEIGHT_PHASES is set in the environment, so the
// hot path costs two getrusage calls and nothing else.
#pragma once

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdlib>

namespace zr {

// A timestamp on the host's monotonic clock (steady_clock: CLOCK_MONOTONIC, the same in every
// process of the host), logged under ZR_WEIGHT_PHASES: the steps of one publish across the trainer
// and the engines line up by subtracting marks ("phase mark engine: update received at 812.345 ms").
inline void phase_mark(const char* what);

class PhaseProbe {
 public:
  explicit PhaseProbe(const char* what) : what_(what), t0_(std::chrono::steady_clock::now()) {
    rusage ru{};
    getrusage(RUSAGE_THREAD, &ru);
    f0_ = ru.ru_minflt;
    ivcsw0_ = ru.ru_nivcsw;
    cpu0_ = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
    sys0_ = ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3;
  }
  ~PhaseProbe() {
    if (!enabled()) return;
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
    rusage ru{};
    getrusage(RUSAGE_THREAD, &ru);
    const double cpu =
        (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3 - cpu0_;
    const double sys = ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3 - sys0_;
    spdlog::warn("phase {}: {:.1f} ms, cpu {:.1f} ms (sys {:.1f}), {} minor faults, {} invol. switches", what_, ms, cpu,
                 sys, ru.ru_minflt - f0_, ru.ru_nivcsw - ivcsw0_);
  }
  PhaseProbe(const PhaseProbe&) = delete;
  PhaseProbe& operator=(const PhaseProbe&) = delete;
  static bool enabled() {
    static const bool on = std::getenv("ZR_WEIGHT_PHASES") != nullptr;
    return on;
  }

 private:
  static long faults() {
    rusage ru{};
    getrusage(RUSAGE_THREAD, &ru);
    return ru.ru_minflt;
  }
  const char* what_;
  std::chrono::steady_clock::time_point t0_;
  long f0_ = 0, ivcsw0_ = 0;
  double cpu0_ = 0, sys0_ = 0;
};

inline void phase_mark(const char* what) {
  if (!PhaseProbe::enabled()) return;
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
  spdlog::warn("phase mark {} at {:.3f} ms", what, ms);
}

}  // namespace zr
