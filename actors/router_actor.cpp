// RouterActor: the Router core driven by a runtime Actor through the RouterDriver. Callers reach
// its ROUTER socket; each engine is a DEALER peer. Every handler feeds the core and then sends what
// it queued.
#include <algorithm>

#include "actors/router_actor.h"
#include "comm/wire_codec.h"

namespace zr {

namespace {

// What callers may send (docs/protocol.md §3, §10). "shutdown" has its own handler.
const char* const kCallerOps[] = {"generate",
                                  "score",
                                  "abort",
                                  "get_load",
                                  "health",
                                  "get_model_info",
                                  "flush_cache",
                                  "open_session",
                                  "close_session",
                                  "update_weights",
                                  "get_weight_version",
                                  "get_weights_checksum",
                                  "release_memory",
                                  "resume_memory",
                                  "get_engines",
                                  "tokenize",
                                  "detokenize"};

ActorOptions actor_options(const RouterActorOptions& o) {
  ActorOptions a;
  a.rank = o.rank;
  a.curve = o.curve;
  a.max_message_bytes = o.max_message_bytes;
  return a;
}

}  // namespace

Result<std::unique_ptr<RouterActor>> RouterActor::create(Context& ctx, std::vector<std::string> engines,
                                                         RouterActorOptions opt) {
  if (engines.empty()) return make_error(ErrorCode::invalid_argument, "engine: give at least one engine endpoint");
  auto a = std::unique_ptr<RouterActor>(new RouterActor(ctx, engines, std::move(opt)));
  ZR_RETURN_IF_ERROR(a->driver_.connect(engines, a->opt_.engine_curve_for));
  return a;
}

RouterActor::RouterActor(Context& ctx, std::vector<std::string> engines, RouterActorOptions opt)
    : opt_(std::move(opt)),
      actor_(ctx, opt_.name, actor_options(opt_)),
      router_(engines, opt_.router, actor_.now(), &actor_.log()),
      driver_(actor_, router_, opt_.router.heartbeat_interval,
              [this](RouterMessage& m) { actor_.send_to(m.caller, std::move(m.op), std::move(m.body)); }) {
  actor_.set_error_body(wire::error_body);
  actor_.set_req_id_of(wire::peek_req_id);
  actor_.set_on_stop([this] {
    router_.shutdown("router '" + opt_.name + "' is shutting down", actor_.now());
    driver_.flush();
  });
  register_handlers();
}

RouterActor::~RouterActor() { actor_.stop(); }

void RouterActor::register_handlers() {
  for (const char* name : kCallerOps) {
    actor_.on(name, [this, op = std::string(name)](Frame& f, const ReplyTo& from) {
      if (!from.via_router()) return;  // engines only answer
      router_.on_call(from.routing_id, op, std::move(f.body), actor_.now(), from.user_id);
      driver_.flush();
    });
  }
  actor_.on("shutdown", [this](Frame& f, const ReplyTo& from) {
    if (!from.via_router()) return;
    if (!opt_.on_shutdown) {
      router_.on_call(from.routing_id, "shutdown", std::move(f.body), actor_.now(), from.user_id);
      return driver_.flush();
    }
    actor_.send(from, "shutdown.reply", wire::encode_req_id_only(wire::peek_req_id(f.body)));
    actor_.log().info("shutdown requested");
    opt_.on_shutdown();
  });
}

}  // namespace zr
