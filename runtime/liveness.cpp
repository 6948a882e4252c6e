#include "runtime/liveness.h"

#include <algorithm>

#include "comm/status.h"

namespace zr {

Liveness::Liveness(TimePoint now, LivenessConfig cfg)
    : cfg_(cfg), last_heard_(now), next_heartbeat_(now + cfg.interval), backoff_(cfg.backoff_init) {
  ZR_CHECK(cfg_.liveness > 0);
  ZR_CHECK(cfg_.interval > Millis{0});
  ZR_CHECK(cfg_.backoff_init > Millis{0} && cfg_.backoff_max >= cfg_.backoff_init);
}

void Liveness::on_heard(TimePoint now) {
  last_heard_ = std::max(last_heard_, now);
  backoff_ = cfg_.backoff_init;
}

bool Liveness::tick(TimePoint now) {
  if (now < next_heartbeat_) return false;
  next_heartbeat_ += cfg_.interval;
  if (next_heartbeat_ <= now) next_heartbeat_ = now + cfg_.interval;
  return true;
}

int Liveness::liveness(TimePoint now) const {
  if (now <= last_heard_) return cfg_.liveness;
  auto missed = (now - last_heard_) / cfg_.interval;
  return missed >= cfg_.liveness ? 0 : cfg_.liveness - static_cast<int>(missed);
}

Millis Liveness::reconnect_backoff() {
  Millis d = backoff_;
  backoff_ = std::min(backoff_ * 2, cfg_.backoff_max);
  return d;
}

void Liveness::on_reconnect(TimePoint now) {
  last_heard_ = now;
  next_heartbeat_ = now + cfg_.interval;
}

TimePoint Liveness::next_event() const {
  return std::min(next_heartbeat_, last_heard_ + cfg_.liveness * cfg_.interval);
}

}  // namespace zr
