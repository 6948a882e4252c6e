// HopTrace: timestamps at each hop of a request through the client and the server, to find where a
// round trip's latency goes (bench_service --hops, or ZR_HOP_TRACE=1 in the environment of a
// process that calls take()). Process-wide: a fixed ring of (hop, steady_clock ns) entries, each
// written with one atomic increment from whichever thread reaches that hop; when off, mark() is
// one relaxed load and a predictable branch. steady_clock is CLOCK_MONOTONIC, so the marks of
// threads of one process (client and in-process server in bench_service) compare directly.
//
// Thread-safety: mark() from any thread; take() when no request is in flight (it resets the ring).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace zr::hop_trace {

// In the order a 1-token generate passes them.
enum class Hop : uint8_t {
  client_call,       // caller thread: Client::generate entered (before encode)
  client_queued,     // caller thread: call encoded and queued, about to signal the I/O thread
  io_send,           // client I/O thread: took the call off its queue
  io_sent,           // client I/O thread: the frames are on the DEALER
  actor_recv,        // actor thread: the frame came off the ROUTER
  actor_decoded,     // actor thread: the body decoded (typed handler)
  engine_submitted,  // actor thread: the requests are in the engine
  step_start,        // actor thread: engine step begins (tick)
  step_end,          // actor thread: engine step returned
  reply_encoded,     // actor thread: the reply body is encoded
  reply_sent,        // actor thread: the reply is on the ROUTER
  io_received,       // client I/O thread: the reply came off the DEALER
  io_resolved,       // client I/O thread: the reply decoded, about to set the caller's promise
  client_returned,   // caller thread: generate() returns
  kCount
};

inline const char* hop_name(Hop h) {
  static constexpr const char* kNames[] = {
      "client_call", "client_queued", "io_send",       "io_sent",    "actor_recv",  "actor_decoded", "engine_submitted",
      "step_start",  "step_end",      "reply_encoded", "reply_sent", "io_received", "io_resolved",   "client_returned"};
  static_assert(sizeof kNames / sizeof kNames[0] == static_cast<size_t>(Hop::kCount));
  return kNames[static_cast<size_t>(h)];
}

struct Entry {
  Hop hop;
  int64_t ns;  // steady_clock
};

namespace detail {
constexpr size_t kRing = 1 << 14;
struct State {
  std::atomic<bool> on{std::getenv("ZR_HOP_TRACE") != nullptr};
  std::atomic<uint64_t> next{0};
  std::array<Entry, kRing> ring{};
};
inline State& state() {
  static State s;
  return s;
}
}  // namespace detail

inline void set_enabled(bool on) { detail::state().on.store(on, std::memory_order_relaxed); }
inline bool enabled() { return detail::state().on.load(std::memory_order_relaxed); }

inline void mark(Hop h) {
  detail::State& s = detail::state();
  if (!s.on.load(std::memory_order_relaxed)) return;
  const int64_t ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  s.ring[s.next.fetch_add(1, std::memory_order_relaxed) % detail::kRing] = Entry{h, ns};
}

// The entries marked since the last take(), oldest first (at most the ring's size), and a reset.
inline std::vector<Entry> take() {
  detail::State& s = detail::state();
  const uint64_t n = s.next.exchange(0, std::memory_order_acq_rel);
  std::vector<Entry> out;
  for (uint64_t i = n > detail::kRing ? n - detail::kRing : 0; i < n; ++i) out.push_back(s.ring[i % detail::kRing]);
  return out;
}

}  // namespace zr::hop_trace
