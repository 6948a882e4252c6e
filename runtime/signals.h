// Shutdown by SIGINT / SIGTERM without signal handlers: the signals are blocked and the main thread
// collects them synchronously (sigtimedwait), so no code runs in signal context and no flag is
// shared between threads.
//
//   install_shutdown_signals();          // first thing in main, before any thread starts
//   Context ctx; Actor a(ctx, "rollout"); ...; a.start();
//   wait_for_shutdown_signal();          // blocks until SIGINT or SIGTERM
//   a.stop();                            // on_stop finishes or aborts in-flight work and replies
//   return 0;
//
// Threads inherit the signal mask of the thread that creates them, so every thread created after
// install_shutdown_signals() leaves these signals pending for the waiter (ZeroMQ's I/O threads block
// all signals themselves). A test may raise(SIGTERM) on the waiting thread or kill(getpid(), SIGTERM)
// from any thread. Thread-safety: both functions act on the calling thread's signal mask; have one
// thread (main) wait.
#pragma once

#include <optional>

#include "runtime/clock.h"

namespace zr {

// Blocks SIGINT and SIGTERM in the calling thread (and so in the threads it creates later).
// Idempotent.
void install_shutdown_signals();

// Waits up to `timeout` (kForever: no limit) for SIGINT or SIGTERM and consumes it. Returns the
// signal number, or nullopt on timeout. The calling thread must have called install_shutdown_signals.
std::optional<int> wait_for_shutdown_signal(Millis timeout = kForever);

}  // namespace zr
