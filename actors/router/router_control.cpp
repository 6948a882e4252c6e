// The router's control ops: calls forwarded to one engine, health, fan-outs to every live engine,
// sessions, abort.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <tuple>

#include "actors/router/router.h"
#include "actors/router/router_state.h"
#include "comm/wire_codec.h"
#include "comm/wire_weights.h"

namespace zr {

using nlohmann::json;

namespace {

// A request body as the engine gets it: the caller's fields, the router's req_id.
Result<json> with_req_id(std::string_view body, uint64_t id) {
  auto j = wire::unpack_body(body);
  if (!j.ok()) return j.status();
  (*j)["req_id"] = id;
  return j;
}

}  // namespace

void Router::call_engine(int engine, const std::string& caller, const std::string& op, std::string body, TimePoint) {
  const uint64_t caller_id = wire::peek_req_id(body);
  if (engine < 0 || engine >= static_cast<int>(engines_.size()))
    return reply_error(caller, caller_id,
                       make_error(ErrorCode::invalid_argument, "engine: no engine " + std::to_string(engine)));
  if (!engines_[engine].alive)
    return reply_error(caller, caller_id,
                       make_error(ErrorCode::unavailable, engine_name(engine) + " stopped answering heartbeats"));
  forward(engine, caller, caller_id, op, std::move(body), Job::Kind::forward);
}

void Router::forward(int engine, const std::string& caller, uint64_t caller_req_id, const std::string& op,
                     std::string body, Job::Kind kind, std::string session) {
  const uint64_t id = next_req_id_++;
  auto j = with_req_id(body, id);
  if (!j.ok()) return reply_error(caller, caller_req_id, j.status());
  auto job = std::make_unique<Job>();
  job->kind = kind;
  job->caller = caller;
  job->caller_req_id = caller_req_id;
  job->op = op;
  job->session = std::move(session);
  if (op == "update_weights") ++engines_[engine].updates_in_flight;
  send_job(id, engine, op, wire::pack_body(*j), std::move(job));
}

void Router::on_forward_reply(const Job& job, const std::string& op, json body) {
  const int k = job.engine;
  if (job.op == "update_weights") --engines_[k].updates_in_flight;
  if (job.op == "update_weights" || job.op == "flush_cache") prefix_map_.forget(k);  // its cache was emptied
  if (op != "error" && job.op == "update_weights") {  // as in on_fan_out_part: a commit may serve again
    engines_[k].status_after = next_req_id_;
    if (engines_[k].status == "released") engines_[k].status = "";
  }
  body["req_id"] = job.caller_req_id;
  if (op != "error" && job.kind == Job::Kind::open_session) {
    const std::string engine_sid = body.value("session_id", std::string());
    const std::string sid = "e" + std::to_string(k) + "-" + engine_sid;
    sessions_[sid] = Session{k, engine_sid, false};
    body["session_id"] = sid;
  } else if (job.kind == Job::Kind::close_session) {
    if (op == "error") {  // the engine names its own id: name the caller's
      auto it = sessions_.find(job.session);
      std::string msg = body.value("message", std::string());
      const std::string engine_sid = it != sessions_.end() ? it->second.engine_sid : std::string();
      for (size_t at; !engine_sid.empty() && (at = msg.find("'" + engine_sid + "'")) != std::string::npos;)
        msg.replace(at, engine_sid.size() + 2, "'" + job.session + "'");
      body["message"] = msg;
    } else {
      sessions_.erase(job.session);
    }
  }
  reply(job.caller, op, wire::pack_body(body));
}

void Router::on_health(const std::string& caller, uint64_t req_id) {
  HealthReply h{req_id, "", 0};
  bool any = false;
  for (int k = 0; k < static_cast<int>(engines_.size()); ++k) {
    const Engine& e = engines_[k];
    if (!e.alive) continue;
    h.weight_version = any ? std::min(h.weight_version, e.weight_version) : e.weight_version;
    if (usable(k)) h.status = "serving";
    else if (h.status.empty()) h.status = e.status;
    any = true;
  }
  if (!any) return reply_error(caller, req_id, make_error(ErrorCode::unavailable, "no live engine behind this router"));
  reply(caller, "health.reply", wire::encode(h));
}

// ---- fan-outs: the same op to every live engine, one merged reply

void Router::fan_out(const std::string& caller, const std::string& op, std::string_view body, uint64_t req_id) {
  auto f = std::make_shared<FanOut>();
  f->caller = caller;
  f->req_id = req_id;
  f->op = op;
  for (int k = 0; k < static_cast<int>(engines_.size()); ++k) {
    if (!engines_[k].alive) continue;
    const uint64_t id = next_req_id_++;
    auto j = with_req_id(body, id);
    if (!j.ok()) return reply_error(caller, req_id, j.status());
    auto job = std::make_unique<Job>();
    job->kind = Job::Kind::fan_out;
    job->fan_out = f;
    if (op == "update_weights") ++engines_[k].updates_in_flight;
    ++f->pending;
    send_job(id, k, op, wire::pack_body(*j), std::move(job));
  }
  if (f->pending == 0)
    reply_error(caller, req_id, make_error(ErrorCode::unavailable, "no live engine behind this router"));
}

void Router::on_fan_out_part(FanOut& f, int k, const json* body, const Status& error) {
  if (f.op == "update_weights" && engines_[k].alive) --engines_[k].updates_in_flight;
  if (f.op == "update_weights" || f.op == "flush_cache") prefix_map_.forget(k);  // its cache was emptied
  if (!error.ok() && f.error.ok()) f.error = make_error(error.code, engine_name(k) + ": " + error.message);
  if (body) f.replies.emplace_back(k, *body);
  // Memory ops and commits change whether an engine serves: take it from the reply rather than
  // wait for the next heartbeat, so a generate right after resume + update is routed.
  // A health sent before this reply may still be in flight: its status is older, so it is ignored.
  if (body && (f.op == "release_memory" || f.op == "resume_memory" || f.op == "update_weights"))
    engines_[k].status_after = next_req_id_;
  if (body && (f.op == "release_memory" || f.op == "resume_memory")) {
    if (auto r = wire::memory_reply_from_json(*body); r.ok())
      engines_[k].status = r->released.empty() ? "serving" : "released";
  } else if (body && f.op == "update_weights" && engines_[k].status == "released") {
    engines_[k].status = "";  // unknown until its next health: a commit of every tensor serves again
  }
  if (--f.pending == 0) finish_fan_out(f);
}

void Router::finish_fan_out(FanOut& f) {
  for (int k : f.lost) log().warn("{}: {} stopped answering before it replied", f.op, engine_name(k));
  if (!f.error.ok()) return reply_error(f.caller, f.req_id, f.error);
  if (f.replies.empty())
    return reply_error(f.caller, f.req_id, make_error(ErrorCode::unavailable, "no live engine behind this router"));
  std::string body;
  if (f.op == "get_load") {
    LoadReply sum{f.req_id, 0, 0, 0, 0, 0};
    for (const auto& [k, j] : f.replies)
      if (auto l = wire::load_reply_from_json(j); l.ok()) {
        sum.waiting += l->waiting;
        sum.running += l->running;
        sum.kv_blocks_used += l->kv_blocks_used;
        sum.kv_blocks_total += l->kv_blocks_total;
        sum.tokens_per_s += l->tokens_per_s;
      }
    body = wire::encode(sum);
  } else if (f.op == "flush_cache") {
    SimpleReply sum{f.req_id, {}, 0};
    for (const auto& [k, j] : f.replies)
      if (auto r = wire::simple_reply_from_json("flush_cache", j); r.ok()) sum.value += r->value;
    body = wire::encode_simple_reply("flush_cache", sum);
  } else if (f.op == "get_weight_version") {  // the oldest weights a request may meet here
    WeightVersionReply v{f.req_id, 0, {}};
    bool first = true;
    for (const auto& [k, j] : f.replies) {
      auto r = wire::weight_version_reply_from_json(j);
      if (!r.ok()) continue;
      v.version = first ? r->version : std::min(v.version, r->version);
      for (const auto& name : r->shm_in_use)  // a segment any engine serves from is in use
        if (std::find(v.shm_in_use.begin(), v.shm_in_use.end(), name) == v.shm_in_use.end())
          v.shm_in_use.push_back(name);
      first = false;
    }
    body = wire::encode(v);
  } else if (f.op == "update_weights") {
    UpdateWeightsReply m{f.req_id, 0, 0, 0, 0, 0, {}};
    bool first = true;
    for (const auto& [k, j] : f.replies) {
      auto r = wire::update_weights_reply_from_json(j);
      if (!r.ok()) continue;
      m.version = first ? r->version : std::min(m.version, r->version);
      m.bytes = std::max(m.bytes, r->bytes);
      m.stage_seconds = std::max(m.stage_seconds, r->stage_seconds);
      m.commit_seconds = std::max(m.commit_seconds, r->commit_seconds);
      m.zero_copy_tensors = first ? r->zero_copy_tensors : std::min(m.zero_copy_tensors, r->zero_copy_tensors);
      for (const auto& name : r->shm_in_use)  // a segment any engine serves from is in use
        if (std::find(m.shm_in_use.begin(), m.shm_in_use.end(), name) == m.shm_in_use.end())
          m.shm_in_use.push_back(name);
      first = false;
    }
    body = wire::encode(m);
  } else {  // release_memory, resume_memory
    // Bytes add up; the version is the oldest served (null if any engine serves none); released
    // is the union, so a caller sees any engine that still waits for a push.
    MemoryReply sum{f.req_id, 0, std::nullopt, {}};
    bool first = true, none_served = false;
    for (const auto& [k, j] : f.replies) {
      auto r = wire::memory_reply_from_json(j);
      if (!r.ok()) continue;
      sum.bytes += r->bytes;
      if (!r->version) none_served = true;
      else if (first || (sum.version && *r->version < *sum.version)) sum.version = r->version;
      for (const auto& t : r->released)
        if (std::find(sum.released.begin(), sum.released.end(), t) == sum.released.end()) sum.released.push_back(t);
      first = false;
    }
    if (none_served) sum.version.reset();
    body = wire::encode(sum);
  }
  reply(f.caller, f.op + ".reply", std::move(body));
}

// ---- sessions: they live on one engine; the router's id names the engine

void Router::on_open_session(const std::string& caller, std::string_view body) {
  auto c = wire::decode_open_session(body);
  if (!c.ok()) return reply_error(caller, wire::peek_req_id(body), c.status());
  int k = pick();
  if (k < 0)
    return reply_error(caller, c->req_id, make_error(ErrorCode::unavailable, "no live engine behind this router"));
  forward(k, caller, c->req_id, "open_session", std::string(body), Job::Kind::open_session);
}

void Router::on_close_session(const std::string& caller, std::string_view body) {
  auto c = wire::decode_close_session(body);
  if (!c.ok()) return reply_error(caller, wire::peek_req_id(body), c.status());
  auto it = sessions_.find(c->session_id);
  if (it == sessions_.end())
    return reply_error(caller, c->req_id,
                       make_error(ErrorCode::not_found, "session_id: no session '" + c->session_id + "'"));
  if (it->second.lost) {  // gone with its engine: closing it only forgets it
    sessions_.erase(it);
    return reply(caller, "close_session.reply",
                 wire::encode_simple_reply("close_session", SimpleReply{c->req_id, {}, 0}));
  }
  SessionCall to_engine{0, it->second.engine_sid};
  forward(it->second.engine, caller, c->req_id, "close_session", wire::encode(to_engine), Job::Kind::close_session,
          c->session_id);
}

// ---- abort: each matching request's engine calls are aborted where they run; the reply waits for
// every engine's, so the aborted calls' replies go out first (as from an engine).

// `own_only` (a client key): only requests whose call came from `caller` match, as on an engine.
void Router::on_abort(const std::string& caller, std::string_view body, bool own_only) {
  auto a = wire::decode_abort(body);
  if (!a.ok()) return reply_error(caller, wire::peek_req_id(body), a.status());
  auto op = std::make_shared<AbortOp>();
  op->caller = caller;
  op->req_id = a->req_id;
  auto matches = [&](const std::string& rid, uint64_t call) {
    if (own_only) {
      const Call* c = find_call(call);
      if (!c || c->caller != caller) return false;
    }
    if (a->all) return true;
    if (!a->rid.empty()) return rid == a->rid;
    return !a->rid_prefix.empty() && rid.compare(0, a->rid_prefix.size(), a->rid_prefix) == 0;
  };
  std::vector<std::tuple<int, std::string, std::string>> targets;  // (engine, engine rid, caller rid)
  for (auto& [rid, r] : rids_) {
    if (!matches(rid, r->call)) continue;
    op->matched.emplace_back(r->seq, rid);
    r->aborting = true;
    std::set<uint64_t> jobs;
    for (const Sample& s : r->samples)
      if (!s.out && s.job && jobs.insert(s.job).second) {
        auto j = jobs_.find(s.job);
        if (j != jobs_.end()) targets.emplace_back(j->second->engine, s.engine_rid, rid);
      }
  }
  for (auto& [rid, ref] : score_rids_) {
    if (!matches(rid, ref.first)) continue;
    op->matched.emplace_back(ref.second, rid);
    Call* c = find_call(ref.first);
    if (!c) continue;
    c->score_aborting = true;
    for (const auto& [id, job] : jobs_)
      if (job->kind == Job::Kind::score && job->call == c->id) targets.emplace_back(job->engine, rid, rid);
  }
  for (const auto& [k, engine_rid, rid] : targets) {
    const uint64_t id = next_req_id_++;
    auto job = std::make_unique<Job>();
    job->kind = Job::Kind::abort;
    job->abort = op;
    job->caller_rid = rid;
    ++op->pending;
    send_job(id, k, "abort", wire::encode(AbortCall{id, engine_rid, "", false}), std::move(job));
  }
  if (op->pending == 0) finish_abort(op);
}

void Router::on_abort_part(const std::shared_ptr<AbortOp>& a, const std::string& caller_rid, bool aborted) {
  if (aborted) a->aborted.insert(caller_rid);
  if (--a->pending == 0) finish_abort(a);
}

void Router::finish_abort(const std::shared_ptr<AbortOp>& a) {
  std::sort(a->matched.begin(), a->matched.end());
  AbortReply r{a->req_id, {}};
  for (const auto& [seq, rid] : a->matched)
    if (a->aborted.count(rid)) r.aborted.push_back(rid);
  reply(a->caller, "abort.reply", wire::encode(r));
}

}  // namespace zr
