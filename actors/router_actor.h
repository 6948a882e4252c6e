// RouterActor: the sans-IO Router core (actors/router/router.h) driven by a runtime Actor through
// the RouterDriver (as the Trainer's router is). Callers reach its ROUTER socket; each engine is a
// DEALER peer.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "actors/router/router.h"
#include "actors/router_driver.h"
#include "runtime/actor.h"
#include "runtime/context.h"

namespace zr {

// `zrollout router`: a Router behind an Actor's ROUTER socket, one DEALER per engine.
struct RouterActorOptions {
  std::string name = "router";
  std::optional<int> rank;
  RouterOptions router;
  // Op "shutdown": called after the reply is sent (the CLI raises SIGTERM). Unset: the op is
  // answered `unsupported` (an in-process router is stopped by its owner).
  std::function<void()> on_shutdown;
  std::optional<CurveServerKeys> curve;  // CURVE on the router's own ROUTER (its callers)
  int64_t max_message_bytes = -1;        // ZMQ_MAXMSGSIZE of the router's ROUTER
  // The keys to reach the engine at `endpoint` (a trainer key: the router calls weight ops).
  std::function<CurveClientKeys(const std::string& endpoint)> engine_curve_for;
};

// Ownership: owns its Actor and Router. Thread-safety: as Actor (configure, then start() or
// run_once() from the owner thread).
class RouterActor {
 public:
  // Connects a DEALER to every engine endpoint (the engines need not be up yet).
  static Result<std::unique_ptr<RouterActor>> create(Context& ctx, std::vector<std::string> engines,
                                                     RouterActorOptions opt = {});
  ~RouterActor();

  Status bind(const std::string& endpoint) { return actor_.bind(endpoint); }
  const std::string& endpoint() const { return actor_.endpoint(); }
  void start() { actor_.start(); }
  void stop() { actor_.stop(); }  // in-flight calls answer with partial outputs / unavailable
  bool run_once(Millis max_wait = Millis{0}) { return actor_.run_once(max_wait); }

 private:
  RouterActor(Context& ctx, std::vector<std::string> engines, RouterActorOptions opt);
  void register_handlers();

  RouterActorOptions opt_;
  Actor actor_;
  Router router_;
  RouterDriver driver_;  // the engines' side: DEALERs, replies, ticks
};

}  // namespace zr
