// Liveness with fake time: heartbeats per interval, dead after N silent intervals, backoff doubling
// to a cap, reset when heard.
#include <gtest/gtest.h>

#include "runtime/liveness.h"

namespace zr {
namespace {

using namespace std::chrono_literals;

const TimePoint kT0 = TimePoint{} + 1h;

// The defaults, by behaviour: a peer silent for kHeartbeatLiveness intervals of kHeartbeatInterval
// is dead, not a moment before; a heartbeat is due once per interval; backoff starts at the initial
// reconnect interval and stops at the cap (the Paranoid Pirate worker's constants).
TEST(RuntimeLiveness, DefaultsFollowThePirateWorker) {
  EXPECT_EQ(kHeartbeatLiveness, 3);
  Liveness l(kT0);
  const Millis silent = kHeartbeatInterval * kHeartbeatLiveness;
  EXPECT_EQ(l.liveness(kT0), kHeartbeatLiveness);
  EXPECT_FALSE(l.dead(kT0 + silent - 1ms));
  EXPECT_TRUE(l.dead(kT0 + silent));
  EXPECT_FALSE(l.tick(kT0 + kHeartbeatInterval - 1ms));
  EXPECT_TRUE(l.tick(kT0 + kHeartbeatInterval));
  EXPECT_EQ(l.reconnect_backoff(), kReconnectIntervalInit);
  Millis last{0};
  for (int i = 0; i < 64; ++i) last = l.reconnect_backoff();
  EXPECT_EQ(last, kReconnectIntervalMax);
}

TEST(RuntimeLiveness, DeadAfterLivenessSilentIntervals) {
  Liveness l(kT0, LivenessConfig{3, 1000ms, 1000ms, 32000ms});
  EXPECT_EQ(l.liveness(kT0), 3);
  EXPECT_EQ(l.liveness(kT0 + 999ms), 3);
  EXPECT_EQ(l.liveness(kT0 + 1000ms), 2);
  EXPECT_EQ(l.liveness(kT0 + 2999ms), 1);
  EXPECT_FALSE(l.dead(kT0 + 2999ms));
  EXPECT_TRUE(l.dead(kT0 + 3000ms));
  EXPECT_EQ(l.liveness(kT0 + 1h), 0);
}

TEST(RuntimeLiveness, HeardRestoresFullLiveness) {
  Liveness l(kT0, LivenessConfig{3, 1000ms, 1000ms, 32000ms});
  l.on_heard(kT0 + 2500ms);
  EXPECT_EQ(l.liveness(kT0 + 2500ms), 3);
  EXPECT_FALSE(l.dead(kT0 + 5499ms));
  EXPECT_TRUE(l.dead(kT0 + 5500ms));
  l.on_heard(kT0 + 1000ms);  // an older time never moves last-heard back
  EXPECT_TRUE(l.dead(kT0 + 5500ms));
}

TEST(RuntimeLiveness, HeartbeatDueOncePerInterval) {
  Liveness l(kT0, LivenessConfig{3, 100ms, 100ms, 1000ms});
  EXPECT_FALSE(l.tick(kT0));
  EXPECT_FALSE(l.tick(kT0 + 99ms));
  EXPECT_TRUE(l.tick(kT0 + 100ms));
  EXPECT_FALSE(l.tick(kT0 + 150ms));
  EXPECT_TRUE(l.tick(kT0 + 200ms));
  EXPECT_TRUE(l.tick(kT0 + 750ms));  // missed beats are not replayed
  EXPECT_FALSE(l.tick(kT0 + 800ms));
  EXPECT_TRUE(l.tick(kT0 + 850ms));
}

TEST(RuntimeLiveness, BackoffDoublesUpToMaxAndResetsWhenHeard) {
  Liveness l(kT0, LivenessConfig{3, 1000ms, 1000ms, 32000ms});
  std::vector<Millis> got;
  for (int i = 0; i < 8; ++i) got.push_back(l.reconnect_backoff());
  EXPECT_EQ(got, (std::vector<Millis>{1000ms, 2000ms, 4000ms, 8000ms, 16000ms, 32000ms, 32000ms, 32000ms}));
  l.on_reconnect(kT0 + 1h);  // a reconnect alone keeps the backoff
  EXPECT_EQ(l.reconnect_backoff(), 32000ms);
  l.on_heard(kT0 + 1h);
  EXPECT_EQ(l.reconnect_backoff(), 1000ms);
  EXPECT_EQ(l.reconnect_backoff(), 2000ms);
}

TEST(RuntimeLiveness, ReconnectRestartsCounting) {
  Liveness l(kT0, LivenessConfig{2, 100ms, 100ms, 100ms});
  EXPECT_TRUE(l.dead(kT0 + 200ms));
  l.on_reconnect(kT0 + 300ms);
  EXPECT_EQ(l.liveness(kT0 + 300ms), 2);
  EXPECT_FALSE(l.tick(kT0 + 399ms));
  EXPECT_TRUE(l.tick(kT0 + 400ms));
  EXPECT_TRUE(l.dead(kT0 + 500ms));
}

TEST(RuntimeLiveness, NextEventIsTheEarlierOfHeartbeatAndDeath) {
  Liveness l(kT0, LivenessConfig{3, 100ms, 100ms, 100ms});
  EXPECT_EQ(l.next_event(), kT0 + 100ms);
  l.tick(kT0 + 100ms);
  l.tick(kT0 + 200ms);
  l.tick(kT0 + 300ms);
  EXPECT_EQ(l.next_event(), kT0 + 300ms);  // death (3 x 100ms) comes before the next beat at 400
}

}  // namespace
}  // namespace zr
