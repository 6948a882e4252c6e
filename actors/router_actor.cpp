// RouterActor: the Router core driven by a runtime Actor. Callers reach its ROUTER socket; each
// engine is a DEALER peer. Every handler feeds the core and then sends what it queued.
#include <algorithm>

#include "actors/router_actor.h"
#include "comm/wire_codec.h"

namespace zr {

namespace {

// What callers may send (docs/protocol.md §3, §10). "shutdown" has its own handler.
const char* const kCallerOps[] = {"generate",       "score",          "abort",         "get_load",
                                  "health",         "get_model_info", "flush_cache",   "open_session",
                                  "close_session",  "update_weights", "get_weight_version",
                                  "get_weights_checksum", "release_memory", "resume_memory", "get_engines",
                                  "tokenize",       "detokenize"};
// What engines send back to the router's calls.
const char* const kEngineOps[] = {"generate.chunk",     "generate.reply",       "score.reply",
                                  "abort.reply",        "get_load.reply",       "health.reply",
                                  "get_model_info.reply", "flush_cache.reply",  "open_session.reply",
                                  "close_session.reply", "update_weights.reply", "get_weight_version.reply",
                                  "get_weights_checksum.reply", "release_memory.reply", "resume_memory.reply",
                                  "shutdown.reply",     "tokenize.reply",       "detokenize.reply",
                                  "error"};

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
  for (const auto& e : engines) {
    std::optional<CurveClientKeys> keys;
    if (a->opt_.engine_curve_for) keys = a->opt_.engine_curve_for(e);
    auto p = a->actor_.connect_peer(e, keys);
    if (!p.ok()) return p.status();
    a->peers_.push_back(*p);
  }
  return a;
}

RouterActor::RouterActor(Context& ctx, std::vector<std::string> engines, RouterActorOptions opt)
    : opt_(std::move(opt)),
      actor_(ctx, opt_.name, actor_options(opt_)),
      router_(engines, opt_.router, actor_.now(), &actor_.log()),
      unsent_(engines.size()) {
  actor_.set_error_body(wire::error_body);
  actor_.set_req_id_of(wire::peek_req_id);
  actor_.set_tick([this] { return tick(); });
  actor_.set_on_stop([this] {
    router_.shutdown("router '" + opt_.name + "' is shutting down", actor_.now());
    flush();
  });
  // Liveness moves in whole intervals: a quarter of one is fine-grained enough.
  actor_.add_timer(std::max(Millis{1}, opt_.router.heartbeat_interval / 4), [this] {
    router_.tick(actor_.now());
    flush();
  });
  register_handlers();
}

RouterActor::~RouterActor() { actor_.stop(); }

void RouterActor::register_handlers() {
  for (const char* name : kCallerOps) {
    actor_.on(name, [this, op = std::string(name)](Frame& f, const ReplyTo& from) {
      if (!from.via_router()) return;  // engines only answer
      router_.on_call(from.routing_id, op, std::move(f.body), actor_.now());
      flush();
    });
  }
  actor_.on("shutdown", [this](Frame& f, const ReplyTo& from) {
    if (!from.via_router()) return;
    if (!opt_.on_shutdown) {
      router_.on_call(from.routing_id, "shutdown", std::move(f.body), actor_.now());
      return flush();
    }
    actor_.send(from, "shutdown.reply", wire::encode_req_id_only(wire::peek_req_id(f.body)));
    actor_.log().info("shutdown requested");
    opt_.on_shutdown();
  });
  for (const char* name : kEngineOps) {
    actor_.on(name, [this, op = std::string(name)](Frame& f, const ReplyTo& from) {
      if (from.via_router()) {  // a reply op sent as a request: unknown, as on an engine
        if (op != "error")
          actor_.send_error(from, wire::peek_req_id(f.body), make_error(ErrorCode::unknown_op, "unknown op '" + op + "'"));
        return;
      }
      auto it = std::find(peers_.begin(), peers_.end(), from.peer);
      if (it == peers_.end()) return;
      router_.on_engine_message(static_cast<int>(it - peers_.begin()), op, std::move(f.body), actor_.now());
      flush();
    });
  }
}

// Sends what the core queued. A DEALER whose queue is full keeps the rest, in order, for the next
// tick; messages to an engine that died are dropped.
void RouterActor::flush() {
  for (RouterMessage& m : router_.take_outbox()) {
    if (m.engine < 0) {
      actor_.send_to(m.caller, std::move(m.op), std::move(m.body));
      continue;
    }
    auto& q = unsent_[m.engine];
    if (q.empty() && actor_.send_peer(peers_[m.engine], m.op, m.body).ok()) continue;
    if (router_.alive(m.engine)) q.push_back(std::move(m));
  }
}

bool RouterActor::tick() {
  bool more = false;
  for (size_t k = 0; k < unsent_.size(); ++k) {
    auto& q = unsent_[k];
    if (!router_.alive(static_cast<int>(k))) q.clear();
    size_t sent = 0;
    while (sent < q.size() && actor_.send_peer(peers_[k], q[sent].op, q[sent].body).ok()) ++sent;
    q.erase(q.begin(), q.begin() + static_cast<long>(sent));
    more = more || !q.empty();
  }
  return more;
}

}  // namespace zr
