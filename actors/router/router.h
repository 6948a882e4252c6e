// Router: data-parallel load balancing across rollout engines, speaking the engines' own protocol
// (docs/protocol.md §10). A client cannot tell a router from an engine for generate, score, abort
// and sessions.
//
//   caller --generate--> Router --generate (stream: true)--> engine k (the least loaded live one)
//          <--reply-----        <--chunks, reply------------
//
// - Balancing: each request goes to the live, non-updating engine with the fewest samples the
//   router has in flight on it (ties: the engine's last get_load waiting + running, then index).
//   A batch call is split across engines; it stays all or nothing (an error names
//   batch[k] of the caller's batch; the other parts are aborted).
// - Prefix affinity (SGLang's cache-aware routing): a generate whose prompt shares at least half of
//   its chunks with prompts already sent to an engine (PrefixMap) goes there, so the engine's
//   prefix cache serves it, unless that engine has kPrefixBalance more samples in flight than the
//   least loaded one.
// - Sessions: open_session goes to the chosen engine; later turns follow the session there.
// - Liveness: every heartbeat interval each live engine gets a `health` and a `get_load`; any
//   message from it counts as heard. Silent for heartbeat_liveness intervals: it is dead (warned
//   once, never used again) and every request in flight on it is re-routed, keeping its partial
//   output (the router always streams from engines, so it has every token so far).
// - Updating: while an update_weights is in flight to an engine (or mark_updating), new requests
//   go elsewhere; when every live engine is updating they go to the least loaded one anyway (an
//   engine queues them until its commit), never held in the router.
//
// Router is the pure core: no sockets, no threads, no clock. Messages come in through on_call
// (from callers) and on_engine_message (from engine k); what it wants sent accumulates in an outbox
// that the driver drains with take_outbox(). Two drivers: RouterActor (actors/router_actor.h: a runtime Actor with
// one DEALER per engine: `zrollout router`) and Trainer (pumps the core in its own thread while it
// waits for results).
//
// Thread-safety: none; one thread drives a Router. RouterActor: like every Actor (runtime/actor.h).
#pragma once

#include <spdlog/logger.h>
#include <nlohmann/json_fwd.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "actors/router/prefix_map.h"
#include "comm/call_limits.h"
#include "comm/messages.h"
#include "comm/status.h"
#include "model/tokenizer.h"
#include "runtime/clock.h"
#include "runtime/liveness.h"

namespace zr {

// An engine answers health and get_load only between two of its steps, and one step (a long
// prefill on a large model) can take seconds: the timeout is 10 intervals, not ppworker's 3.
inline constexpr Millis kRouterHeartbeatInterval{500};
inline constexpr int kRouterHeartbeatLiveness = 10;

struct RouterOptions {
  Millis heartbeat_interval = kRouterHeartbeatInterval;
  int heartbeat_liveness = kRouterHeartbeatLiveness;  // silent intervals before an engine is dead
  // Tokenizer file (tokenizer.json / tokenizer.model) or model folder of the engines' model.
  // Needed to re-route text prompts with partial output and to rebuild the exact text of a
  // re-routed sample. Empty: the router loads the one in the engines' model_path (get_model_info)
  // when it can read it.
  std::string tokenizer;
  // Call-size and per-caller in-flight caps (`zrollout router` flags), checked before anything is
  // sent to an engine. Unset (the trainer's in-process router): none.
  std::optional<CallLimits> limits;
};

// A message the router wants sent: to engine `engine` when >= 0, else to `caller`.
struct RouterMessage {
  int engine = -1;
  std::string caller;
  std::string op;
  std::string body;  // msgpack
};

class Router {
 public:
  // `log` must outlive the router; null: spdlog's default logger.
  Router(std::vector<std::string> endpoints, RouterOptions opt, TimePoint now, spdlog::logger* logger = nullptr);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // A request from a caller (any op of docs/protocol.md §3 plus get_engines). `caller` is opaque:
  // every reply, chunk and error for it is addressed to the same string. Replies that need no
  // engine (errors, health, get_engines) are in the outbox when this returns. `role` is the
  // caller's CURVE role ("client", "trainer"; "" without CURVE; the driver checked the op against
  // it): a "client" aborts only its own requests, and every role but "trainer" counts against
  // RouterOptions::limits->max_in_flight.
  void on_call(const std::string& caller, const std::string& op, std::string body, TimePoint now,
               std::string_view role = {});
  // A message that arrived from engine k (a reply, chunk or error to one of the router's calls).
  void on_engine_message(int engine, const std::string& op, std::string body, TimePoint now);
  // Heartbeats and deaths. Call at least every next_tick().
  void tick(TimePoint now);
  TimePoint next_tick() const;
  // For drivers that stop reading engines for a while (the trainer between two calls): every live
  // engine gets a full liveness window from `now`, so the pause is not taken for its silence.
  void restart_heartbeats(TimePoint now);

  // Sends op/body (whose req_id is the caller's) to engine k; its reply or error goes to `caller`
  // with the caller's req_id, or error `unavailable` when the engine is or becomes dead.
  // update_weights marks the engine updating until it answers.
  void call_engine(int engine, const std::string& caller, const std::string& op, std::string body, TimePoint now);
  void mark_updating(int engine, bool updating);

  // Ends every call in flight now (the router is going away): generate calls answer with their
  // partial outputs (finish_reason abort), other calls with `unavailable`; engine work is aborted.
  void shutdown(const std::string& why, TimePoint now);

  std::vector<EngineState> engines() const;
  size_t num_engines() const;
  bool alive(int engine) const;
  size_t calls_in_flight() const;
  std::vector<RouterMessage> take_outbox();
  bool outbox_empty() const { return outbox_.empty(); }

  // The tokenizer is read by the driver, never inside the core (a large tokenizer.json takes
  // seconds, and an event loop stuck that long misses its engines' heartbeats). The file or folder
  // to load, once: RouterOptions::tokenizer from the start, else the model_path of the first
  // get_model_info reply; nullopt when nothing (more) is wanted. on_tokenizer_loaded() hands back
  // what loading `path` gave. Until then the router has no tokenizer (re-routing a text prompt
  // with partial output fails, as when the engines' model folder cannot be read).
  std::optional<std::string> take_tokenizer_load();
  void on_tokenizer_loaded(const std::string& path, Result<Tokenizer> tok);
  bool has_tokenizer() const { return tokenizer_.has_value(); }

 private:
  struct Engine;
  struct Call;
  struct Req;
  struct Sample;
  struct Job;
  struct FanOut;
  struct AbortOp;
  struct Session {
    int engine = 0;
    std::string engine_sid;  // the engine's own id for it
    bool lost = false;       // its engine died: its tokens and KV are gone
  };
  enum class JobKind {
    generate,
    score,
    forward,
    open_session,
    close_session,
    fan_out,
    abort,
    health,
    load,
    info,
    ignore
  };
  using json = nlohmann::json;

  // ---- router.cpp: engines, liveness, dispatch, death
  spdlog::logger& log() const;
  std::string engine_name(int k) const;
  bool usable(int k) const;
  int sessions_on(int k) const;
  int pick(const std::vector<int>& exclude = {}, const std::vector<int>* extra = nullptr) const;
  // pick() unless an engine believed to hold the prompt's prefix is loaded within kPrefixBalance.
  int pick_for_prompt(const GenerateRequest& g, const std::vector<int>& extra);
  Call* find_call(uint64_t id);
  const ModelInfoReply* model_info() const;
  void send_engine(int engine, const std::string& op, std::string body);
  void send_job(uint64_t id, int engine, const std::string& op, std::string body, std::unique_ptr<Job> job);
  void reply(const std::string& caller, const std::string& op, std::string body);
  void reply_error(const std::string& caller, uint64_t req_id, const Status& st);
  void close_job(const Job& job);
  void on_heartbeat_reply(int k, uint64_t id, const Job& job, const std::string& op, const json& body);
  void want_tokenizer(const std::string& path);
  void declare_dead(int k, TimePoint now);
  void dispatch_engine_message(int k, const std::string& op, const std::string& body, TimePoint now);
  // ---- router_control.cpp: forwarded calls, health, fan-outs, sessions, abort
  void forward(int engine, const std::string& caller, uint64_t caller_req_id, const std::string& op, std::string body,
               JobKind kind, std::string session = {});
  void on_forward_reply(const Job& job, const std::string& op, json body);
  void on_health(const std::string& caller, uint64_t req_id);
  void fan_out(const std::string& caller, const std::string& op, std::string_view body, uint64_t req_id);
  void on_fan_out_part(FanOut& f, int k, const json* body, const Status& error);
  void finish_fan_out(FanOut& f);
  void on_open_session(const std::string& caller, std::string_view body);
  void on_close_session(const std::string& caller, std::string_view body);
  void on_abort(const std::string& caller, std::string_view body, bool own_only);
  void on_abort_part(const std::shared_ptr<AbortOp>& a, const std::string& caller_rid, bool aborted);
  void finish_abort(const std::shared_ptr<AbortOp>& a);

  // ---- router_generate.cpp: generate and score calls, chunks, re-routing; router_merge.cpp: outputs
  bool is_stop_token(const Req& r, int id) const;
  std::string fresh_engine_rid(const std::string& rid);
  // RouterOptions::limits for a call from `caller`; the call's requests count in flight when it is
  // accepted (count_in_flight) until end_call.
  Status check_limits(const std::string& caller, std::string_view role, size_t prompts, int max_n) const;
  void count_in_flight(Call& c, std::string_view role);
  void on_generate(const std::string& caller, std::string body, TimePoint now, std::string_view role);
  Status admit(const Call& c, const GenerateRequest& g, int& engine, std::string& engine_sid,
               const std::vector<int>& extra);
  void send_generate(int engine, std::vector<std::shared_ptr<Req>> reqs);
  void send_continuation(const std::shared_ptr<Req>& r, int sample, GenerateRequest cont, int exclude, TimePoint now);
  void on_chunk(Job& job, const json& body);
  void on_generate_reply(Job& job, const json& body, TimePoint now);
  void on_generate_error(std::unique_ptr<Job> job, int k, const Status& st, TimePoint now);
  void reroute_job(const Job& job, int dead, TimePoint now);
  void reroute_samples(const std::shared_ptr<Req>& r, const std::vector<int>& samples, int dead, TimePoint now);
  void continue_sample(const std::shared_ptr<Req>& r, int sample, int dead, TimePoint now);
  SampleOutput local_output(Req& r, int sample, FinishReason why, TimePoint now);
  SampleOutput merge_continuation(Req& r, int sample, SampleOutput cont, TimePoint now);
  void rebuild_text(const Req& r, Sample& s, SampleOutput& o, FinishReason& why) const;
  void finish_sample_abort(Req& r, int sample, const std::string& why, TimePoint now);
  void finish_sample(Req& r, int sample, SampleOutput out, TimePoint now);
  void fail_call(Call& c, size_t k, Status st);
  void maybe_complete(Call& c);
  void end_call(Call& c);
  void on_score(const std::string& caller, std::string body, TimePoint now, std::string_view role);
  void send_score(Call& c, int exclude);
  void on_score_reply(const Job& job, const std::string& op, json body, int k, TimePoint now);

  RouterOptions opt_;
  spdlog::logger* log_;
  std::vector<Engine> engines_;
  std::optional<Tokenizer> tokenizer_;
  bool tokenizer_tried_ = false;  // a load was asked for (take_tokenizer_load)
  std::string tokenizer_wanted_;  // asked for, not yet taken by the driver
  uint64_t next_req_id_ = 1;      // the router's req_ids towards engines (one sequence for all)
  uint64_t next_call_ = 1;
  uint64_t next_seq_ = 1;  // arrival order of requests, for abort replies
  uint64_t next_reroute_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Job>> jobs_;  // by the router's req_id
  std::map<uint64_t, std::unique_ptr<Call>> calls_;
  std::unordered_map<std::string, std::shared_ptr<Req>> rids_;  // caller rid -> request in flight
  // caller rid -> (score call, arrival) in flight
  std::unordered_map<std::string, std::pair<uint64_t, uint64_t>> score_rids_;
  std::map<std::string, Session> sessions_;            // router session id -> its engine
  std::unordered_map<std::string, size_t> in_flight_;  // caller -> requests of its counted calls
  std::vector<RouterMessage> outbox_;
  PrefixMap prefix_map_;  // which engine was sent which prompt prefixes
};

// Samples in flight an engine holding the prefix may have beyond the least loaded engine and still
// be chosen for it (SGLang's balance_abs_threshold is 32 requests).
inline constexpr int kPrefixBalance = 32;

}  // namespace zr
