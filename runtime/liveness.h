// Heartbeat bookkeeping for one peer, after the ZeroMQ guide's Paranoid Pirate worker (ppworker.c):
// a heartbeat goes out every interval; every message heard from the peer restores its liveness to
// full; each interval without one costs a unit of liveness; at zero the peer is dead and the caller
// reconnects after a backoff that doubles from an initial to a maximal delay and is reset when the
// peer is heard again.
//
// Pure logic: no sockets and no clock; every call takes `now`, so tests drive it with fake time.
// Not thread-safe (one owner: the actor thread of the watching actor).
#pragma once

#include "runtime/clock.h"

namespace zr {

inline constexpr int kHeartbeatLiveness = 3;           // HEARTBEAT_LIVENESS: 3-5 is reasonable
inline constexpr Millis kHeartbeatInterval{1000};      // HEARTBEAT_INTERVAL
inline constexpr Millis kReconnectIntervalInit{1000};  // INTERVAL_INIT: first reconnect delay
inline constexpr Millis kReconnectIntervalMax{32000};  // INTERVAL_MAX: backoff cap

struct LivenessConfig {
  int liveness = kHeartbeatLiveness;  // silent intervals before the peer counts as dead
  Millis interval = kHeartbeatInterval;
  Millis backoff_init = kReconnectIntervalInit;
  Millis backoff_max = kReconnectIntervalMax;
};

class Liveness {
 public:
  explicit Liveness(TimePoint now, LivenessConfig cfg = {});

  // Any message from the peer: liveness back to full, reconnect backoff back to its initial value.
  void on_heard(TimePoint now);
  // True when a heartbeat is due (then the next one is due an interval later; missed ones are not
  // replayed). The first is due one interval after construction or reconnect.
  bool tick(TimePoint now);
  // Units of liveness left: cfg.liveness minus the whole intervals since the peer was last heard.
  int liveness(TimePoint now) const;
  bool dead(TimePoint now) const { return liveness(now) <= 0; }
  // The delay before the next reconnect attempt: backoff_init, then doubling up to backoff_max.
  Millis reconnect_backoff();
  // After reconnecting: liveness full again (the backoff is kept until the peer is heard).
  void on_reconnect(TimePoint now);
  // The earliest time at which tick() or dead() may change its answer (for poll timeouts).
  TimePoint next_event() const;

  const LivenessConfig& config() const { return cfg_; }

 private:
  LivenessConfig cfg_;
  TimePoint last_heard_;
  TimePoint next_heartbeat_;
  Millis backoff_;
};

}  // namespace zr
