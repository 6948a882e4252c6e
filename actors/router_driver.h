// RouterDriver: runs a sans-IO Router (actors/router/router.h) on a runtime Actor. It connects one
// DEALER peer per engine, feeds what the engines send to the router, ticks it on the actor's timer,
// and sends what the router queued: engine messages on their DEALER (a full queue keeps the rest,
// in order, for the actor's next tick), messages for callers to `to_caller`.
//
// The one driver of both shells: RouterActor (callers on the actor's ROUTER socket, the actor on
// its own thread) and Trainer (the trainer's own calls, the actor stepped with run_once() on the
// caller's thread while it waits for the engines).
// The router's tokenizer (Router::take_tokenizer_load) is read here, never on the actor loop:
// RouterOptions::tokenizer at construction, on the owner thread before the loop runs (the engines
// then get a fresh liveness window); the engines' model folder, learnt from their get_model_info,
// on a loader thread whose result the actor's tick hands to the router (a large tokenizer.json
// takes seconds, longer under a sanitizer, while the engines' heartbeats must still be read).
// Ownership: borrows the Actor and the Router, which the shell owns and keeps alive longer; owns
// the loader thread (joined by the destructor, which so waits for a load in progress).
// Thread-safety: as the Actor (its owner thread, or the actor thread once started).
#pragma once

#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "actors/router/router.h"
#include "runtime/actor.h"

namespace zr {

class RouterDriver {
 public:
  using ToCaller = std::function<void(RouterMessage&)>;
  // Registers the engines' reply ops, the actor's tick and the router's timer (every quarter of a
  // heartbeat interval: liveness moves in whole intervals).
  RouterDriver(Actor& actor, Router& router, Millis heartbeat_interval, ToCaller to_caller);
  ~RouterDriver();
  RouterDriver(const RouterDriver&) = delete;
  RouterDriver& operator=(const RouterDriver&) = delete;

  // A DEALER to every engine endpoint, in the router's engine order (the engines need not be up).
  // `keys_for` (optional) gives the CURVE client keys for an endpoint (an engine serving with keys;
  // disabled keys: plain). Errors: invalid_argument naming the endpoint.
  using KeysFor = std::function<CurveClientKeys(const std::string& endpoint)>;
  Status connect(const std::vector<std::string>& engines, const KeysFor& keys_for = {});
  // Sends what the router queued. Messages to an engine that died are dropped.
  void flush();

 private:
  bool tick();  // retries full queues; true while some are still full
  void start_tokenizer_load(std::string path);
  void finish_tokenizer_load();  // hands a finished load to the router

  Actor& actor_;
  Router& router_;
  ToCaller to_caller_;
  std::vector<PeerId> peers_;
  std::vector<std::vector<RouterMessage>> unsent_;  // per engine: its DEALER's queue was full
  std::string loading_path_;                        // the loader thread's, while loading_ is valid
  std::future<Result<Tokenizer>> loading_;
  std::thread loader_;
};

}  // namespace zr
