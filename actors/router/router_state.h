// Private to the router's .cpp files: what the router keeps per engine, per caller call, per
// request and per sample, and per call it has in flight to an engine (a "job").
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "actors/router/router.h"
#include "model/text_streamer.h"

namespace zr {

struct Router::Engine {
  Engine(std::string ep, TimePoint now, LivenessConfig cfg) : endpoint(std::move(ep)), liveness(now, cfg) {}
  std::string endpoint;
  bool alive = true;
  bool marked_updating = false;  // mark_updating()
  int updates_in_flight = 0;     // update_weights sent, not answered
  std::string status;            // last health status
  uint64_t status_after = 0;     // health replies to requests with a smaller id are stale: ignored
  Liveness liveness;
  LoadReply load;              // last get_load
  int64_t weight_version = 0;  // last health
  std::optional<ModelInfoReply> info;
  int in_flight = 0, in_flight_samples = 0, rerouted = 0, finished = 0;
  bool updating() const { return marked_updating || updates_in_flight > 0; }
};

// One sample of a caller's request. ids/lps/text grow with every chunk from whichever engine runs
// it; after a re-route, ids[0, base) are part of the continuation's prompt.
struct Router::Sample {
  std::vector<int> ids;
  std::vector<TokenLogprob> lps;  // return_logprob: one per id
  std::string text;               // chunk texts as the engines sent them
  int base = 0;
  size_t text_base = 0;                  // text.size() at the last re-route (no tokenizer)
  std::vector<WeightVersionSpan> spans;  // versions of ids[0, base)
  uint64_t job = 0;                      // the router's req_id of its engine call; 0: none
  std::string engine_rid;                // its rid there
  std::optional<FinishReason> inferred;  // it had finished on a dead engine (known from its tokens)
  int cont_logprob_start = -1;           // logprob_start_len of the current continuation
  // Re-routed with a tokenizer: the router builds the text from all ids, as an engine does (so it
  // does not depend on where the seam is).
  std::unique_ptr<TextStreamer> tracker;
  size_t streamed = 0;  // tracker text sent to the caller
  int cut = -1;         // tracker found a stop string: the sample ends after ids[cut - 1]
  bool abort_sent = false;
  std::optional<SampleOutput> out;
};

// One request of a caller's generate call.
struct Router::Req {
  uint64_t call = 0;        // the Call's id (the call may have ended: look it up)
  size_t index = 0;         // in the caller's batch
  uint64_t seq = 0;         // arrival order
  TimePoint start;          // arrival (e2e_latency of re-routed samples)
  GenerateRequest gen;      // as the caller sent it (session_id: the router's)
  std::string engine_sid;   // in a session: the engine's id for it
  std::vector<int> prompt;  // prompt ids, once known (for re-routing)
  bool split = false;       // its samples run as separate continuations
  bool aborting = false;
  std::vector<Sample> samples;
  int pending = 0;  // samples without output
};

struct Router::Call {
  uint64_t id = 0;
  std::string caller;
  uint64_t req_id = 0;
  TimePoint start;
  size_t batch_size = 1;
  std::vector<std::shared_ptr<Req>> reqs;  // generate
  int pending = 0;                         // generate: requests without every output
  int jobs_open = 0;                       // engine calls not yet answered
  bool failed = false;
  size_t error_index = 0;
  Status error;
  // score: the whole call goes to one engine.
  ScoreCall score;
  bool is_score = false;
  bool score_aborting = false;
  std::vector<int> refused_by;  // engines that answered `unavailable`
  size_t counted = 0;           // requests counted in Router::in_flight_ of its caller
};

struct Router::FanOut {
  std::string caller;
  uint64_t req_id = 0;
  std::string op;
  int pending = 0;
  std::vector<std::pair<int, nlohmann::json>> replies;  // (engine, body)
  std::vector<int> lost;                                // died before answering
  Status error;                                         // the first engine error
};

struct Router::AbortOp {
  std::string caller;
  uint64_t req_id = 0;
  int pending = 0;
  std::vector<std::pair<uint64_t, std::string>> matched;  // (arrival, caller rid)
  std::set<std::string> aborted;                          // caller rids an engine aborted
};

// A call the router has in flight to one engine, by the router's req_id.
struct Router::Job {
  using Kind = JobKind;
  struct Entry {
    std::shared_ptr<Req> req;
    int sample = -1;  // -1: the whole request (all n samples); else one continuation
    std::string engine_rid;
    std::optional<GenerateRequest> cont;  // a continuation: the request as sent (to resend it)
  };
  Kind kind = Kind::ignore;
  int engine = -1;
  uint64_t call = 0;  // generate / score
  std::vector<Entry> entries;
  std::unordered_map<std::string, size_t> by_rid;
  int requests = 0, samples = 0;  // counted in the engine's in_flight
  std::string caller;             // forward, sessions
  uint64_t caller_req_id = 0;
  std::string op;
  std::string session;     // open/close_session: the router's id
  std::string caller_rid;  // abort
  std::shared_ptr<FanOut> fan_out;
  std::shared_ptr<AbortOp> abort;
};

// Small helpers of the router's .cpp files.
namespace router_detail {

// v[from, from + count), positions outside v default-constructed.
template <class T>
inline std::vector<T> slice(const std::vector<T>& v, long from, long count) {
  std::vector<T> out;
  for (long i = from; i < from + count; ++i) out.push_back(i >= 0 && i < static_cast<long>(v.size()) ? v[i] : T{});
  return out;
}

template <class T>
inline void append(std::vector<T>& to, const std::vector<T>& more) {
  to.insert(to.end(), more.begin(), more.end());
}

inline void add_span(std::vector<WeightVersionSpan>& spans, int first, int64_t version) {
  if (spans.empty() || spans.back().version != version) spans.push_back({first, version});
}

}  // namespace router_detail

}  // namespace zr
