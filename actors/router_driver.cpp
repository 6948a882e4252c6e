#include "actors/router_driver.h"

#include <algorithm>
#include <chrono>
#include <exception>

#include "comm/wire_codec.h"

namespace zr {

namespace {

// What engines send back to the router's calls.
const char* const kEngineOps[] = {"generate.chunk",
                                  "generate.reply",
                                  "score.reply",
                                  "abort.reply",
                                  "get_load.reply",
                                  "health.reply",
                                  "get_model_info.reply",
                                  "flush_cache.reply",
                                  "open_session.reply",
                                  "close_session.reply",
                                  "update_weights.reply",
                                  "get_weight_version.reply",
                                  "get_weights_checksum.reply",
                                  "release_memory.reply",
                                  "resume_memory.reply",
                                  "shutdown.reply",
                                  "tokenize.reply",
                                  "detokenize.reply",
                                  "error"};

}  // namespace

RouterDriver::RouterDriver(Actor& actor, Router& router, Millis heartbeat_interval, ToCaller to_caller)
    : actor_(actor), router_(router), to_caller_(std::move(to_caller)) {
  for (const char* name : kEngineOps) {
    actor_.on(name, [this, op = std::string(name)](Frame& f, const ReplyTo& from) {
      if (from.via_router()) {  // a reply op sent as a request: unknown, as on an engine
        if (op != "error")
          actor_.send_error(from, wire::peek_req_id(f.body),
                            make_error(ErrorCode::unknown_op, "unknown op '" + op + "'"));
        return;
      }
      auto it = std::find(peers_.begin(), peers_.end(), from.peer);
      if (it == peers_.end()) return;
      router_.on_engine_message(static_cast<int>(it - peers_.begin()), op, std::move(f.body), actor_.now());
      flush();
    });
  }
  actor_.set_tick([this] { return tick(); });
  actor_.add_timer(std::max(Millis{1}, heartbeat_interval / 4), [this] {
    router_.tick(actor_.now());
    flush();
  });
  if (auto path = router_.take_tokenizer_load()) {  // --tokenizer: before the loop, on the owner thread
    router_.on_tokenizer_loaded(*path, Tokenizer::load(*path));
    router_.restart_heartbeats(actor_.now());  // the load's time is not the engines' silence
  }
}

RouterDriver::~RouterDriver() {
  if (loader_.joinable()) loader_.join();
}

void RouterDriver::start_tokenizer_load(std::string path) {
  std::promise<Result<Tokenizer>> done;
  loading_ = done.get_future();
  loading_path_ = path;
  // The promise is set before the wake, so the tick the wake causes finds the result ready.
  loader_ = std::thread([this, done = std::move(done), path = std::move(path)]() mutable {
    try {
      done.set_value(Tokenizer::load(path));
    } catch (const std::exception& e) {  // e.g. bad_alloc: the router goes on without a tokenizer
      done.set_value(make_error(ErrorCode::internal, path + ": " + e.what()));
    }
    actor_.wake();
  });
}

void RouterDriver::finish_tokenizer_load() {
  if (!loading_.valid() || loading_.wait_for(std::chrono::seconds{0}) != std::future_status::ready) return;
  loader_.join();
  router_.on_tokenizer_loaded(loading_path_, loading_.get());
}

Status RouterDriver::connect(const std::vector<std::string>& engines, const KeysFor& keys_for) {
  for (const auto& e : engines) {
    std::optional<CurveClientKeys> keys;
    if (keys_for) keys = keys_for(e);
    if (keys && !keys->enabled()) keys.reset();
    auto p = actor_.connect_peer(e, keys);
    if (!p.ok()) return make_error(p.status().code, "engine " + e + ": " + p.status().message);
    peers_.push_back(*p);
  }
  unsent_.resize(peers_.size());
  return {};
}

void RouterDriver::flush() {
  if (auto path = router_.take_tokenizer_load()) start_tokenizer_load(std::move(*path));
  for (RouterMessage& m : router_.take_outbox()) {
    if (m.engine < 0) {
      to_caller_(m);
      continue;
    }
    auto& q = unsent_[m.engine];
    if (q.empty() && actor_.send_peer(peers_[m.engine], m.op, m.body).ok()) continue;
    if (router_.alive(m.engine)) q.push_back(std::move(m));
  }
}

bool RouterDriver::tick() {
  finish_tokenizer_load();
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
