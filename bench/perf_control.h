// bench_engine --perf-ctl FIFO: profile only the steady decode steps of a row. Run under
//   mkfifo ctl && perf record -D -1 --control fifo:ctl -- bench_engine --perf-ctl ctl ...
// perf starts with its events off; the bench writes "enable" after the row's first full decode
// step (prefill and start-up stay out of the profile) and "disable" after its last step.
#pragma once

#include <cstdio>
#include <string>

namespace zr::bench {

class PerfControl {
 public:
  void open(const std::string& fifo) {
    if (!fifo.empty()) f_ = std::fopen(fifo.c_str(), "w");  // blocks until perf has it open
    if (!fifo.empty() && !f_) std::fprintf(stderr, "--perf-ctl %s: cannot open\n", fifo.c_str());
  }
  ~PerfControl() {
    if (f_) std::fclose(f_);
  }
  void enable() { send("enable"); }
  void disable() { send("disable"); }

 private:
  void send(const char* cmd) {
    if (!f_) return;
    std::fprintf(f_, "%s\n", cmd);
    std::fflush(f_);
  }
  std::FILE* f_ = nullptr;
};

}  // namespace zr::bench
