#include "runtime/signals.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "comm/status.h"

namespace zr {
namespace {

sigset_t shutdown_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

}  // namespace

void install_shutdown_signals() {
  sigset_t set = shutdown_set();
  int rc = pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ZR_CHECK_MSG(rc == 0, std::strerror(rc));
}

std::optional<int> wait_for_shutdown_signal(Millis timeout) {
  sigset_t set = shutdown_set();
  sigset_t blocked;
  pthread_sigmask(SIG_BLOCK, nullptr, &blocked);
  ZR_CHECK_MSG(sigismember(&blocked, SIGINT) == 1 && sigismember(&blocked, SIGTERM) == 1,
               "call install_shutdown_signals() on this thread before waiting");
  const TimePoint deadline = SteadyClock::now() + std::max(timeout, Millis{0});
  for (;;) {
    int sig;
    if (timeout < Millis{0}) {
      sig = sigwaitinfo(&set, nullptr);
    } else {
      auto left = std::max(std::chrono::nanoseconds{0}, deadline - SteadyClock::now());
      timespec ts{static_cast<time_t>(left.count() / 1000000000), static_cast<long>(left.count() % 1000000000)};
      sig = sigtimedwait(&set, nullptr, &ts);
    }
    if (sig > 0) return sig;
    if (errno == EAGAIN) return std::nullopt;
    ZR_CHECK_MSG(errno == EINTR, std::strerror(errno));  // another signal's handler ran: wait again
  }
}

}  // namespace zr
