// The router's core: engines and their liveness, picking, dispatching what callers and engines
// send, an engine's death, shutdown. Control ops are in router_control.cpp, generate and score in
// router_generate.cpp.
#include "actors/router/router.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <tuple>
#include <utility>

#include "actors/router/router_state.h"
#include "comm/wire_codec.h"
#include "comm/wire_weights.h"

namespace zr {

using nlohmann::json;

namespace {

// Ops answered with one reply merged from every live engine's.
bool is_fan_out(const std::string& op) {
  return op == "get_load" || op == "flush_cache" || op == "get_weight_version" || op == "update_weights" ||
         op == "release_memory" || op == "resume_memory";
}

Status validate_fan_out(const std::string& op, std::string_view body) {
  if (op == "update_weights") return wire::decode_update_weights(body).status();
  if (op == "release_memory" || op == "resume_memory") return wire::decode_memory(body).status();
  return wire::decode_req_id_only(body).status();
}

}  // namespace

Router::Router(std::vector<std::string> endpoints, RouterOptions opt, TimePoint now, spdlog::logger* logger)
    : opt_(std::move(opt)), log_(logger) {
  LivenessConfig cfg;
  cfg.interval = opt_.heartbeat_interval;
  cfg.liveness = opt_.heartbeat_liveness;
  engines_.reserve(endpoints.size());
  for (auto& e : endpoints) engines_.emplace_back(std::move(e), now, cfg);
  want_tokenizer(opt_.tokenizer);
  // Load, status and model info from the start, not one interval later.
  for (int k = 0; k < static_cast<int>(engines_.size()); ++k) {
    for (const char* op : {"health", "get_load", "get_model_info"}) {
      auto job = std::make_unique<Job>();
      job->kind = std::string(op) == "health"     ? Job::Kind::health
                  : std::string(op) == "get_load" ? Job::Kind::load
                                                  : Job::Kind::info;
      uint64_t id = next_req_id_++;
      send_job(id, k, op, wire::encode_req_id_only(id), std::move(job));
    }
  }
}

Router::~Router() = default;

spdlog::logger& Router::log() const { return log_ ? *log_ : *spdlog::default_logger_raw(); }

size_t Router::num_engines() const { return engines_.size(); }

std::string Router::engine_name(int k) const {
  return "engine " + std::to_string(k) + " (" + engines_.at(k).endpoint + ")";
}

bool Router::alive(int k) const { return k >= 0 && k < static_cast<int>(engines_.size()) && engines_[k].alive; }

bool Router::usable(int k) const {
  const Engine& e = engines_[k];
  return e.alive && (e.status.empty() || e.status == "serving");
}

int Router::sessions_on(int k) const {
  int n = 0;
  for (const auto& [sid, s] : sessions_) n += s.engine == k && !s.lost;
  return n;
}

// The least loaded usable engine: not updating first, then fewest samples in flight here, then
// fewest sessions (so sessions spread), then the engine's own last waiting + running, then index.
int Router::pick(const std::vector<int>& exclude, const std::vector<int>* extra) const {
  int best = -1;
  std::tuple<bool, int, int, int, int> best_key;
  for (int k = 0; k < static_cast<int>(engines_.size()); ++k) {
    if (!usable(k) || std::find(exclude.begin(), exclude.end(), k) != exclude.end()) continue;
    const Engine& e = engines_[k];
    auto key = std::make_tuple(e.updating(), e.in_flight_samples + (extra ? (*extra)[k] : 0), sessions_on(k),
                               e.load.waiting + e.load.running, k);
    if (best < 0 || key < best_key) best = k, best_key = key;
  }
  return best;
}

Router::Call* Router::find_call(uint64_t id) {
  auto it = calls_.find(id);
  return it == calls_.end() ? nullptr : it->second.get();
}

const ModelInfoReply* Router::model_info() const {
  for (const Engine& e : engines_)
    if (e.info) return &*e.info;
  return nullptr;
}

// ---- sending

void Router::send_engine(int engine, const std::string& op, std::string body) {
  outbox_.push_back({engine, {}, op, std::move(body)});
}

void Router::send_job(uint64_t id, int engine, const std::string& op, std::string body, std::unique_ptr<Job> job) {
  job->engine = engine;
  jobs_[id] = std::move(job);
  send_engine(engine, op, std::move(body));
}

void Router::reply(const std::string& caller, const std::string& op, std::string body) {
  outbox_.push_back({-1, caller, op, std::move(body)});
}

void Router::reply_error(const std::string& caller, uint64_t req_id, const Status& st) {
  reply(caller, "error", wire::error_body(req_id, st));
}

std::vector<RouterMessage> Router::take_outbox() {
  std::vector<RouterMessage> out;
  out.swap(outbox_);
  return out;
}

void Router::close_job(const Job& j) {
  Engine& e = engines_[j.engine];
  e.in_flight -= j.requests;
  e.in_flight_samples -= j.samples;
  if (Call* c = find_call(j.call)) --c->jobs_open;
}

// ---- state

std::vector<EngineState> Router::engines() const {
  std::vector<EngineState> out;
  for (int k = 0; k < static_cast<int>(engines_.size()); ++k) {
    const Engine& e = engines_[k];
    out.push_back({k, e.endpoint, e.alive, e.updating(), e.status, e.in_flight, e.in_flight_samples, e.load.waiting,
                   e.load.running, e.weight_version, e.rerouted, e.finished, sessions_on(k)});
  }
  return out;
}

size_t Router::calls_in_flight() const { return calls_.size(); }

void Router::mark_updating(int engine, bool updating) {
  if (engine >= 0 && engine < static_cast<int>(engines_.size())) engines_[engine].marked_updating = updating;
}

// ---- liveness

void Router::tick(TimePoint now) {
  for (int k = 0; k < static_cast<int>(engines_.size()); ++k) {
    Engine& e = engines_[k];
    if (!e.alive) continue;
    if (e.liveness.dead(now)) {
      declare_dead(k, now);
      continue;
    }
    if (!e.liveness.tick(now)) continue;
    std::vector<std::pair<const char*, Job::Kind>> beats = {{"health", Job::Kind::health},
                                                            {"get_load", Job::Kind::load}};
    if (!e.info) beats.emplace_back("get_model_info", Job::Kind::info);
    for (const auto& [op, kind] : beats) {
      auto job = std::make_unique<Job>();
      job->kind = kind;
      uint64_t id = next_req_id_++;
      send_job(id, k, op, wire::encode_req_id_only(id), std::move(job));
    }
  }
}

TimePoint Router::next_tick() const {
  TimePoint next = TimePoint::max();
  for (const Engine& e : engines_)
    if (e.alive) next = std::min(next, e.liveness.next_event());
  return next;
}

void Router::restart_heartbeats(TimePoint now) {
  for (Engine& e : engines_)
    if (e.alive) e.liveness.on_reconnect(now);
}

void Router::on_heartbeat_reply(int k, uint64_t id, const Job& job, const std::string& op, const json& body) {
  Engine& e = engines_[k];
  if (op == "error") {
    if (job.kind == Job::Kind::health) e.status = "unavailable";  // e.g. a router with no live engine
    return;
  }
  if (job.kind == Job::Kind::health) {
    if (id < e.status_after) return;  // sent before a memory op or commit that set the status
    if (auto h = wire::health_reply_from_json(body); h.ok()) {
      e.status = h->status;
      e.weight_version = h->weight_version;
    }
  } else if (job.kind == Job::Kind::load) {
    if (auto l = wire::load_reply_from_json(body); l.ok()) e.load = *l;
  } else if (job.kind == Job::Kind::info) {
    if (auto i = wire::model_info_reply_from_json(body); i.ok()) {
      e.info = *i;
      want_tokenizer(i->model_path);  // without --tokenizer: the engines' own, when readable here
    }
  }
}

void Router::want_tokenizer(const std::string& path) {
  if (tokenizer_tried_ || path.empty()) return;
  tokenizer_tried_ = true;
  tokenizer_wanted_ = path;
}

std::optional<std::string> Router::take_tokenizer_load() {
  if (tokenizer_wanted_.empty()) return std::nullopt;
  return std::exchange(tokenizer_wanted_, {});
}

// --tokenizer that cannot be read is the operator's mistake (a warning); a model folder without
// one this process can read (another host, token-only model) is expected (info).
void Router::on_tokenizer_loaded(const std::string& path, Result<Tokenizer> tok) {
  const bool asked = path == opt_.tokenizer;
  if (tok.ok() && tok->has_text()) {
    tokenizer_.emplace(std::move(tok).value());
    log().info("router: tokenizer from {} (for re-routing)", path);
  } else if (asked) {
    log().warn("router: {} (re-routing text prompts with partial output is off)",
               tok.ok() ? "no tokenizer in " + path : tok.status().to_string());
  } else {
    log().info("router: no tokenizer ({}): a text prompt with partial output cannot be re-routed",
               tok.ok() ? "none in the model folder" : tok.status().message);
  }
}

// ---- messages from engines

void Router::on_engine_message(int k, const std::string& op, std::string body, TimePoint now) {
  if (k < 0 || k >= static_cast<int>(engines_.size()) || !engines_[k].alive) return;  // the dead stay dead
  engines_[k].liveness.on_heard(now);
  try {
    dispatch_engine_message(k, op, body, now);
  } catch (const std::exception& e) {  // a reply of the wrong shape must not take the router down
    log().warn("router: dropped '{}' from {}: {}", op, engine_name(k), e.what());
  }
}

void Router::dispatch_engine_message(int k, const std::string& op, const std::string& body, TimePoint now) {
  auto j = wire::unpack_body(body);
  if (!j.ok()) return log().warn("router: {} sent an unreadable '{}': {}", engine_name(k), op, j.status().message);
  uint64_t id = 0;
  if (auto it = j->find("req_id"); it != j->end() && it->is_number_unsigned()) id = it->get<uint64_t>();
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second->engine != k) return;  // a late answer to something already settled
  if (op == "generate.chunk") {
    if (it->second->kind == Job::Kind::generate) on_chunk(*it->second, *j);
    return;
  }
  std::unique_ptr<Job> job = std::move(it->second);
  jobs_.erase(it);
  const Status err = op == "error" ? wire::status_from_error_json(*j) : Status{};
  switch (job->kind) {
    case Job::Kind::generate:
      close_job(*job);
      if (!err.ok()) on_generate_error(std::move(job), k, err, now);
      else engines_[k].finished += job->requests, on_generate_reply(*job, *j, now);
      break;
    case Job::Kind::score:
      close_job(*job);
      if (err.ok()) engines_[k].finished += job->requests;
      on_score_reply(*job, op, std::move(*j), k, now);
      break;
    case Job::Kind::forward:
    case Job::Kind::open_session:
    case Job::Kind::close_session:
      on_forward_reply(*job, op, std::move(*j));
      break;
    case Job::Kind::fan_out:
      on_fan_out_part(*job->fan_out, k, err.ok() ? &*j : nullptr, err);
      break;
    case Job::Kind::abort: {
      bool aborted = false;
      if (auto a = wire::abort_reply_from_json(*j); err.ok() && a.ok()) aborted = !a->aborted.empty();
      on_abort_part(job->abort, job->caller_rid, aborted);
      break;
    }
    case Job::Kind::health:
    case Job::Kind::load:
    case Job::Kind::info:
      on_heartbeat_reply(k, id, *job, op, *j);
      break;
    case Job::Kind::ignore:
      break;
  }
}

// ---- an engine stops answering

void Router::declare_dead(int k, TimePoint now) {
  Engine& e = engines_[k];
  e.alive = false;
  prefix_map_.forget(k);
  for (auto& [sid, s] : sessions_)
    if (s.engine == k) s.lost = true;
  std::vector<uint64_t> ids;
  for (const auto& [id, job] : jobs_)
    if (job->engine == k) ids.push_back(id);
  std::sort(ids.begin(), ids.end());  // the order they were sent in
  const Status gone = make_error(ErrorCode::unavailable, engine_name(k) + " stopped answering heartbeats");
  int rerouted = 0;
  for (uint64_t id : ids) {
    std::unique_ptr<Job> job = std::move(jobs_.at(id));
    jobs_.erase(id);
    switch (job->kind) {
      case Job::Kind::generate:
        close_job(*job);
        if (find_call(job->call)) rerouted += static_cast<int>(job->entries.size());
        reroute_job(*job, k, now);
        break;
      case Job::Kind::score:
        close_job(*job);
        if (Call* c = find_call(job->call)) {
          ++rerouted;
          if (c->score_aborting) {
            reply_error(c->caller, c->req_id,
                        make_error(ErrorCode::aborted, "rid: '" + c->score.batch.at(0).rid + "' was aborted"));
            end_call(*c);
          } else {
            c->refused_by.push_back(k);
            send_score(*c, k);
          }
        }
        break;
      case Job::Kind::forward:
      case Job::Kind::open_session:
      case Job::Kind::close_session:
        if (job->op == "update_weights") --e.updates_in_flight;
        reply_error(job->caller, job->caller_req_id, gone);
        break;
      case Job::Kind::fan_out:
        job->fan_out->lost.push_back(k);
        on_fan_out_part(*job->fan_out, k, nullptr, {});
        break;
      case Job::Kind::abort:
        on_abort_part(job->abort, job->caller_rid, true);  // its requests end aborted here
        break;
      default:
        break;
    }
  }
  e.in_flight = e.in_flight_samples = e.updates_in_flight = 0;
  e.rerouted += rerouted;
  log().warn("{} stopped answering heartbeats: {} requests re-routed", engine_name(k), rerouted);
}

// ---- calls from callers

void Router::on_call(const std::string& caller, const std::string& op, std::string body, TimePoint now,
                     std::string_view role) {
  if (op == "generate") return on_generate(caller, std::move(body), now, role);
  if (op == "score") return on_score(caller, std::move(body), now, role);
  if (op == "abort") return on_abort(caller, body, role == "client");
  if (op == "open_session") return on_open_session(caller, body);
  if (op == "close_session") return on_close_session(caller, body);
  if (op == "health" || op == "get_engines" || op == "get_model_info") {
    auto id = wire::decode_req_id_only(body);
    if (!id.ok()) return reply_error(caller, wire::peek_req_id(body), id.status());
    if (op == "health") return on_health(caller, *id);
    if (op == "get_engines") return reply(caller, "get_engines.reply", wire::encode(EnginesReply{*id, engines()}));
    int k = pick();
    if (k < 0) return reply_error(caller, *id, make_error(ErrorCode::unavailable, "no live engine behind this router"));
    return forward(k, caller, *id, op, std::move(body), Job::Kind::forward);
  }
  if (op == "tokenize" || op == "detokenize") {  // any engine: they serve one model
    const uint64_t id = wire::peek_req_id(body);
    int k = pick();
    if (k < 0) return reply_error(caller, id, make_error(ErrorCode::unavailable, "no live engine behind this router"));
    return forward(k, caller, id, op, std::move(body), Job::Kind::forward);
  }
  if (is_fan_out(op)) {
    if (Status st = validate_fan_out(op, body); !st.ok()) return reply_error(caller, wire::peek_req_id(body), st);
    return fan_out(caller, op, body, wire::peek_req_id(body));
  }
  if (op == "get_weights_checksum")
    return reply_error(
        caller, wire::peek_req_id(body),
        make_error(ErrorCode::unsupported, "get_weights_checksum: ask each engine (get_engines lists them)"));
  if (op == "shutdown")
    return reply_error(caller, wire::peek_req_id(body),
                       make_error(ErrorCode::unsupported, "shutdown: this router is stopped by its owner"));
  if (op == "error") return;  // never answer an error
  reply_error(caller, wire::peek_req_id(body), make_error(ErrorCode::unknown_op, "unknown op '" + op + "'"));
}

// ---- shutdown

void Router::shutdown(const std::string& why, TimePoint now) {
  std::vector<uint64_t> ids;
  for (const auto& [id, job] : jobs_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  const Status st = make_error(ErrorCode::unavailable, why);
  for (uint64_t id : ids) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    std::unique_ptr<Job> job = std::move(it->second);
    jobs_.erase(it);
    switch (job->kind) {
      case Job::Kind::generate:
        close_job(*job);
        for (const Job::Entry& en : job->entries)
          send_engine(job->engine, "abort", wire::encode(AbortCall{next_req_id_++, en.engine_rid, "", false}));
        for (const Job::Entry& en : job->entries) {
          if (!find_call(en.req->call)) continue;
          for (int i = 0; i < static_cast<int>(en.req->samples.size()); ++i)
            if ((en.sample < 0 || en.sample == i) && !en.req->samples[i].out) finish_sample_abort(*en.req, i, why, now);
        }
        if (Call* c = find_call(job->call)) maybe_complete(*c);  // partial outputs, as an engine's abort
        break;
      case Job::Kind::score:
        close_job(*job);
        if (Call* c = find_call(job->call)) {
          for (const ScoreRequest& r : c->score.batch)
            send_engine(job->engine, "abort", wire::encode(AbortCall{next_req_id_++, r.rid, "", false}));
          reply_error(c->caller, c->req_id, st);
          end_call(*c);
        }
        break;
      case Job::Kind::forward:
      case Job::Kind::open_session:
      case Job::Kind::close_session:
        reply_error(job->caller, job->caller_req_id, st);
        break;
      case Job::Kind::fan_out:
        if (job->fan_out->pending > 0) {
          job->fan_out->pending = 0;
          reply_error(job->fan_out->caller, job->fan_out->req_id, st);
        }
        break;
      case Job::Kind::abort:
        on_abort_part(job->abort, job->caller_rid, true);
        break;
      default:
        break;
    }
  }
  // Calls whose every sample had finished but that still waited (a refused batch's other parts).
  while (!calls_.empty()) {
    Call& c = *calls_.begin()->second;
    reply_error(c.caller, c.req_id, c.failed ? c.error : st);
    end_call(c);
  }
}

}  // namespace zr
