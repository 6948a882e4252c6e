// The router's generate and score calls: splitting a batch across engines, following chunks,
// re-routing the samples of a dead engine with their partial output (router_merge.cpp puts a
// sample's output together). docs/protocol.md §10 states what a re-routed sample looks like.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "actors/router/router.h"
#include "actors/router/router_state.h"
#include "comm/wire_codec.h"

namespace zr {

using nlohmann::json;
using router_detail::add_span;

namespace {

// The error of request k of a batch names it, as an engine does: "batch[2].sampling_params.top_p".
Status in_batch(const Status& st, size_t k, size_t batch_size) {
  if (batch_size <= 1) return st;
  return make_error(st.code, "batch[" + std::to_string(k) + "]." + st.message);
}

// The schedule as it stands after `done` generated tokens, so a continuation goes on from there.
void shift_schedule(SamplingParams& sp, int done) {
  auto& s = sp.processors.temperature_schedule;
  if (!s || done <= 0) return;
  if (done >= s->warmup_tokens) {
    s->initial = s->final;
    s->warmup_tokens = 0;
    return;
  }
  s->initial += (s->final - s->initial) * static_cast<float>(done) / static_cast<float>(s->warmup_tokens);
  s->warmup_tokens -= done;
}

}  // namespace

bool Router::is_stop_token(const Req& r, int id) const {
  const SamplingParams& sp = r.gen.sampling_params;
  if (std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), id) != sp.stop_token_ids.end()) return true;
  if (sp.ignore_eos) return false;
  const ModelInfoReply* info = model_info();
  return info && std::find(info->eos_token_ids.begin(), info->eos_token_ids.end(), id) != info->eos_token_ids.end();
}

std::string Router::fresh_engine_rid(const std::string& rid) {
  std::string out;
  do out = rid + "~" + std::to_string(next_reroute_++);
  while (rids_.count(out) || score_rids_.count(out));
  return out;
}

// ---- generate

Status Router::check_limits(const std::string& caller, std::string_view role, size_t prompts, int max_n) const {
  if (!opt_.limits) return {};
  std::optional<size_t> have;
  if (counts_in_flight(role)) {
    auto it = in_flight_.find(caller);
    have = it == in_flight_.end() ? 0 : it->second;
  }
  return check_call_limits(*opt_.limits, prompts, max_n, have);
}

void Router::count_in_flight(Call& c, std::string_view role) {
  if (!opt_.limits || !counts_in_flight(role)) return;
  c.counted = c.is_score ? c.score.batch.size() : c.reqs.size();
  in_flight_[c.caller] += c.counted;
}

void Router::on_generate(const std::string& caller, std::string body, TimePoint now, std::string_view role) {
  auto call = wire::decode_generate(body);
  if (!call.ok()) return reply_error(caller, wire::peek_req_id(body), call.status());
  int max_n = 0;
  for (const GenerateRequest& g : call->batch) max_n = std::max(max_n, g.sampling_params.n);
  if (Status st = check_limits(caller, role, call->batch.size(), max_n); !st.ok())
    return reply_error(caller, call->req_id, st);
  auto c = std::make_unique<Call>();
  c->id = next_call_++;
  c->caller = caller;
  c->req_id = call->req_id;
  c->start = now;
  c->batch_size = call->batch.size();
  std::vector<int> extra(engines_.size(), 0);  // this batch's samples, for balancing within it
  std::vector<int> engine_of;
  for (size_t k = 0; k < call->batch.size(); ++k) {
    GenerateRequest& g = call->batch[k];
    int engine = -1;
    std::string engine_sid;
    Status st = admit(*c, g, engine, engine_sid, extra);
    if (!st.ok()) return reply_error(caller, c->req_id, in_batch(st, k, call->batch.size()));
    auto r = std::make_shared<Req>();
    r->call = c->id;
    r->index = k;
    r->seq = next_seq_++;
    r->start = now;
    r->engine_sid = std::move(engine_sid);
    r->samples.resize(g.sampling_params.n);
    r->pending = g.sampling_params.n;
    r->gen = std::move(g);
    extra[engine] += r->gen.sampling_params.n;
    engine_of.push_back(engine);
    c->reqs.push_back(std::move(r));
  }
  for (const auto& r : c->reqs) rids_[r->gen.rid] = r;
  c->pending = static_cast<int>(c->reqs.size());
  count_in_flight(*c, role);
  Call& ref = *c;
  calls_[c->id] = std::move(c);
  for (int k = 0; k < static_cast<int>(engines_.size()); ++k) {
    std::vector<std::shared_ptr<Req>> part;
    for (size_t i = 0; i < ref.reqs.size(); ++i)
      if (engine_of[i] == k) part.push_back(ref.reqs[i]);
    if (!part.empty()) send_generate(k, std::move(part));
  }
}

// What only the router can check (the rest is the engine's): rid unique here, the session, an
// engine to run it on.
Status Router::admit(const Call& c, const GenerateRequest& g, int& engine, std::string& engine_sid,
                     const std::vector<int>& extra) {
  if (g.rid.empty()) return make_error(ErrorCode::invalid_argument, "rid: must be a non-empty string");
  bool in_call = false;
  for (const auto& r : c.reqs) in_call = in_call || r->gen.rid == g.rid;
  if (in_call || rids_.count(g.rid) || score_rids_.count(g.rid))
    return make_error(ErrorCode::duplicate_rid, "rid: '" + g.rid + "' is already in flight");
  if (!g.session_id.empty()) {
    auto it = sessions_.find(g.session_id);
    if (it == sessions_.end()) return make_error(ErrorCode::not_found, "session_id: no session '" + g.session_id + "'");
    if (it->second.lost)
      return make_error(ErrorCode::unavailable, "session_id: session '" + g.session_id + "' was on " +
                                                    engine_name(it->second.engine) +
                                                    ", which stopped answering heartbeats: its tokens and KV are "
                                                    "gone (open a new session)");
    engine = it->second.engine;
    engine_sid = it->second.engine_sid;
    return {};
  }
  engine = pick_for_prompt(g, extra);
  if (engine < 0) return make_error(ErrorCode::unavailable, "no live engine behind this router");
  return {};
}

int Router::pick_for_prompt(const GenerateRequest& g, const std::vector<int>& extra) {
  const int base = pick({}, &extra);
  if (base < 0) return base;
  const std::vector<uint64_t> keys = PrefixMap::keys(g.input_ids, g.input_ids.empty() && g.text ? *g.text : "");
  auto load = [&](int k) { return engines_[k].in_flight_samples + extra[k]; };
  int best = base, best_match = prefix_map_.match(base, keys);
  for (int k = 0; k < static_cast<int>(engines_.size()); ++k) {
    if (k == base || !usable(k) || engines_[k].updating() != engines_[base].updating()) continue;
    const int m = prefix_map_.match(k, keys);
    if (m > best_match && load(k) <= load(base) + kPrefixBalance) best = k, best_match = m;
  }
  if (best_match * 2 < static_cast<int>(keys.size())) best = base;  // too little shared: balance load
  prefix_map_.insert(best, keys);
  return best;
}

// The requests as the caller sent them, but streamed (the router follows every token).
void Router::send_generate(int k, std::vector<std::shared_ptr<Req>> reqs) {
  const uint64_t id = next_req_id_++;
  auto job = std::make_unique<Job>();
  job->kind = Job::Kind::generate;
  job->call = reqs.at(0)->call;
  GenerateCall gc{id, {}};
  for (auto& r : reqs) {
    GenerateRequest g = r->gen;
    g.stream = true;
    if (!g.session_id.empty()) g.session_id = r->engine_sid;
    gc.batch.push_back(std::move(g));
    job->by_rid[r->gen.rid] = job->entries.size();
    job->entries.push_back({r, -1, r->gen.rid, std::nullopt});
    job->requests += 1;
    job->samples += r->gen.sampling_params.n;
    for (Sample& s : r->samples) {
      s.job = id;
      s.engine_rid = r->gen.rid;
    }
  }
  engines_[k].in_flight += job->requests;
  engines_[k].in_flight_samples += job->samples;
  if (Call* c = find_call(job->call)) ++c->jobs_open;
  send_job(id, k, "generate", wire::encode(gc), std::move(job));
}

void Router::send_continuation(const std::shared_ptr<Req>& r, int i, GenerateRequest cont, int exclude, TimePoint now) {
  const int k = pick({exclude});
  if (k < 0) return finish_sample_abort(*r, i, "no live engine left to continue on", now);
  const uint64_t id = next_req_id_++;
  Sample& s = r->samples[i];
  s.job = id;
  s.engine_rid = cont.rid;
  s.abort_sent = false;
  auto job = std::make_unique<Job>();
  job->kind = Job::Kind::generate;
  job->call = r->call;
  job->by_rid[cont.rid] = 0;
  job->entries.push_back({r, i, cont.rid, cont});
  job->requests = job->samples = 1;
  engines_[k].in_flight += 1;
  engines_[k].in_flight_samples += 1;
  if (Call* c = find_call(r->call)) ++c->jobs_open;
  send_job(id, k, "generate", wire::encode(GenerateCall{id, {std::move(cont)}}), std::move(job));
}

void Router::on_chunk(Job& job, const json& body) {
  auto ch = wire::stream_chunk_from_json(body);
  if (!ch.ok()) return;
  auto it = job.by_rid.find(ch->rid);
  if (it == job.by_rid.end()) return;
  const Job::Entry& en = job.entries[it->second];
  Req& r = *en.req;
  Call* c = find_call(r.call);
  const int i = en.sample >= 0 ? en.sample : ch->index;
  if (!c || i < 0 || i >= static_cast<int>(r.samples.size()) || r.samples[i].out) return;
  Sample& s = r.samples[i];
  StreamChunk out{r.gen.rid, i, "", {}, {}};
  for (size_t t = 0; t < ch->output_ids.size(); ++t) {
    const int pos = static_cast<int>(s.ids.size());
    s.ids.push_back(ch->output_ids[t]);
    if (r.gen.return_logprob)
      s.lps.push_back(t < ch->output_token_logprobs.size() ? ch->output_token_logprobs[t] : TokenLogprob{});
    if (s.cut >= 0) continue;  // past a stop string the router found: the engine is being stopped
    out.output_ids.push_back(ch->output_ids[t]);
    if (r.gen.return_logprob) out.output_token_logprobs.push_back(s.lps.back());
    if (s.tracker && s.tracker->push(ch->output_ids[t], is_stop_token(r, ch->output_ids[t]))) {
      s.cut = pos + 1;  // a stop string across the seam: the engine could not see it
      if (!s.abort_sent)
        send_engine(job.engine, "abort", wire::encode(AbortCall{next_req_id_++, s.engine_rid, "", false}));
      s.abort_sent = true;
    }
  }
  if (s.tracker) {
    const size_t end = s.tracker->streamable();
    if (end > s.streamed) out.text = s.tracker->text().substr(s.streamed, end - s.streamed);
    s.streamed = std::max(s.streamed, end);
  } else {
    s.text += ch->text;
    out.text = ch->text;
  }
  if (r.gen.stream && !c->failed && (!out.text.empty() || !out.output_ids.empty()))
    reply(c->caller, "generate.chunk", wire::encode_chunk(c->req_id, out));
}

void Router::on_generate_reply(Job& job, const json& body, TimePoint now) {
  auto rep = wire::generate_reply_from_json(body);
  if (!rep.ok()) {
    const int k = job.engine;
    return on_generate_error(std::make_unique<Job>(std::move(job)), k,
                             make_error(ErrorCode::internal, "unreadable generate.reply: " + rep.status().message),
                             now);
  }
  const uint64_t call = job.call;
  for (SampleOutput& o : rep->outputs) {
    auto it = job.by_rid.find(o.rid);
    if (it == job.by_rid.end()) continue;
    const Job::Entry& en = job.entries[it->second];
    Req& r = *en.req;
    const int i = en.sample >= 0 ? en.sample : o.index;
    if (!find_call(r.call) || i < 0 || i >= static_cast<int>(r.samples.size()) || r.samples[i].out) continue;
    if (en.sample < 0 && r.samples[i].base == 0 && !r.samples[i].tracker) {  // a first run: the engine's output as is
      o.rid = r.gen.rid;
      o.meta_info.id = r.gen.rid;
      finish_sample(r, i, std::move(o), now);
    } else {
      finish_sample(r, i, merge_continuation(r, i, std::move(o), now), now);
    }
  }
  if (Call* c = find_call(call)) maybe_complete(*c);
}

void Router::on_generate_error(std::unique_ptr<Job> job, int k, const Status& st, TimePoint now) {
  const uint64_t call = job->call;
  if (!find_call(call)) return;
  if (st.code == ErrorCode::unavailable) {  // draining or released: elsewhere, if there is anywhere
    engines_[k].status = "unavailable";     // until its next health reply says otherwise
    for (Job::Entry& en : job->entries) {
      Call* c = find_call(call);
      if (!c || c->failed) break;
      if (en.cont) {
        send_continuation(en.req, en.sample, *en.cont, k, now);
        continue;
      }
      const int other = pick({k});
      if (other < 0) fail_call(*c, en.req->index, make_error(st.code, st.message));
      else send_generate(other, {en.req});
    }
  } else if (job->entries.size() == 1 && job->entries[0].cont) {
    const Job::Entry& en = job->entries[0];
    finish_sample_abort(*en.req, en.sample, engine_name(k) + " refused the continuation: " + st.message, now);
  } else if (Call* c = find_call(call)) {
    // The caller's own request was refused: name it as in the caller's batch.
    size_t j = 0;
    std::string msg = st.message;
    if (job->entries.size() > 1 && msg.rfind("batch[", 0) == 0) {
      const size_t close = msg.find("].");
      const size_t at = close == std::string::npos ? 0 : std::strtoul(msg.c_str() + 6, nullptr, 10);
      if (close != std::string::npos && at < job->entries.size()) j = at, msg = msg.substr(close + 2);
    }
    const Req& r = *job->entries[j].req;
    if (!r.engine_sid.empty())
      for (size_t at; (at = msg.find("'" + r.engine_sid + "'")) != std::string::npos;)
        msg.replace(at, r.engine_sid.size() + 2, "'" + r.gen.session_id + "'");
    fail_call(*c, r.index, in_batch(make_error(st.code, msg), r.index, c->batch_size));
  }
  if (Call* c = find_call(call)) maybe_complete(*c);
}

// ---- re-routing

void Router::reroute_job(const Job& job, int dead, TimePoint now) {
  const uint64_t call = job.call;
  Call* c = find_call(call);
  if (!c || c->failed) {
    if (c) maybe_complete(*c);
    return;
  }
  for (const Job::Entry& en : job.entries) {
    if (!find_call(call)) break;
    // In case it only seemed dead: stop it wasting work on requests now running elsewhere.
    send_engine(dead, "abort", wire::encode(AbortCall{next_req_id_++, en.engine_rid, "", false}));
    std::vector<int> samples;
    for (int i = 0; i < static_cast<int>(en.req->samples.size()); ++i)
      if ((en.sample < 0 || en.sample == i) && !en.req->samples[i].out) samples.push_back(i);
    reroute_samples(en.req, samples, dead, now);
  }
  if (Call* c2 = find_call(call)) maybe_complete(*c2);
}

void Router::reroute_samples(const std::shared_ptr<Req>& r, const std::vector<int>& samples, int dead, TimePoint now) {
  for (int i : samples) {  // the weights that produced what the dead engine sent
    Sample& s = r->samples[i];
    if (static_cast<int>(s.ids.size()) > s.base) add_span(s.spans, s.base, engines_[dead].weight_version);
  }
  if (r->aborting) {
    for (int i : samples) finish_sample_abort(*r, i, "aborted by request", now);
    return;
  }
  if (!r->gen.session_id.empty()) {
    for (int i : samples)
      finish_sample_abort(
          *r, i,
          engine_name(dead) + " stopped answering heartbeats: session '" + r->gen.session_id + "' is lost with it",
          now);
    return;
  }
  bool untouched = !r->split && static_cast<int>(samples.size()) == r->gen.sampling_params.n;
  for (int i : samples) untouched = untouched && r->samples[i].ids.empty();
  if (untouched) {  // nothing generated yet: the same request again (n samples, one prefill)
    const int k = pick({dead});
    if (k >= 0) return send_generate(k, {r});
    for (int i : samples) finish_sample_abort(*r, i, "no live engine left to continue on", now);
    return;
  }
  r->split = true;
  for (int i : samples) continue_sample(r, i, dead, now);
}

// Sample i goes on elsewhere as an n=1 request: prompt + its output so far, the tokens it still
// may generate. A sample that had in fact finished (stop token, stop string, length) only needs
// the logprob lists the dead engine did not send: it gets max_new_tokens 0.
void Router::continue_sample(const std::shared_ptr<Req>& rp, int i, int dead, TimePoint now) {
  Req& r = *rp;
  Sample& s = r.samples[i];
  const int q = static_cast<int>(s.ids.size());
  if (r.prompt.empty() && q > 0) {
    if (!r.gen.input_ids.empty()) r.prompt = r.gen.input_ids;
    else if (r.gen.text && tokenizer_) r.prompt = tokenizer_->encode(*r.gen.text, /*add_bos=*/true);
    else
      return finish_sample_abort(r, i,
                                 engine_name(dead) +
                                     " stopped answering heartbeats; continuing a text prompt "
                                     "needs the router's tokenizer (--tokenizer)",
                                 now);
  }
  if (tokenizer_ && !s.tracker && q > 0 && r.gen.detokenize) {  // the router builds this sample's text from now on
    const SamplingParams& sp = r.gen.sampling_params;
    s.tracker = std::make_unique<TextStreamer>(*tokenizer_,
                                               TextStreamerOptions{sp.stop, sp.skip_special_tokens, sp.no_stop_trim});
    for (int t = 0; t < q; ++t)
      if (s.tracker->push(s.ids[t], is_stop_token(r, s.ids[t]))) {
        s.cut = t + 1;
        break;
      }
    s.streamed = s.text.size();  // what the caller has had: the engine's streamable prefix
  }
  const SamplingParams& sp = r.gen.sampling_params;
  const ModelInfoReply* info = model_info();
  if (q > 0 && !s.inferred) {
    const int last = s.ids[std::min(q, s.cut >= 0 ? s.cut : q) - 1];
    if (is_stop_token(r, last)) s.inferred = FinishReason{FinishReason::Type::stop, last, 0, {}};
    else if (s.tracker && s.tracker->matched())
      s.inferred = FinishReason{FinishReason::Type::stop, *s.tracker->matched(), 0, {}};
    else if (q >= sp.max_new_tokens ||
             (info && q >= generation_budget(static_cast<int>(r.prompt.size()), info->context_length)))
      s.inferred = FinishReason{FinishReason::Type::length, {}, q, {}};
  }
  const bool lists = r.gen.return_logprob && (r.gen.top_logprobs_num > 0 || !r.gen.token_ids_logprob.empty());
  const bool input = r.gen.return_logprob && r.gen.logprob_start_len >= 0;
  if (s.inferred && !(lists && q > 0) && !input) return finish_sample(r, i, local_output(r, i, *s.inferred, now), now);

  GenerateRequest g = r.gen;
  g.rid = fresh_engine_rid(r.gen.rid);
  g.stream = true;
  g.session_id.clear();
  SamplingParams& gp = g.sampling_params;
  gp.n = 1;
  if (gp.seed) gp.seed = *gp.seed + static_cast<uint64_t>(i);  // the engine's seed of sample i
  if (q > 0) {
    g.text.reset();
    g.input_ids = r.prompt;
    g.input_ids.insert(g.input_ids.end(), s.ids.begin(), s.ids.end());
    gp.max_new_tokens = s.inferred ? 0 : std::max(0, sp.max_new_tokens - q);
    gp.min_new_tokens = std::min(std::max(0, sp.min_new_tokens - q), gp.max_new_tokens);
    shift_schedule(gp, q);
  }
  g.logprob_start_len = input ? r.gen.logprob_start_len : (lists && q > 0 ? static_cast<int>(r.prompt.size()) : -1);
  s.cont_logprob_start = g.logprob_start_len;
  s.base = q;
  s.text_base = s.text.size();
  send_continuation(rp, i, std::move(g), dead, now);
}

// ---- finishing samples and calls

void Router::finish_sample_abort(Req& r, int i, const std::string& why, TimePoint now) {
  if (r.samples[i].out) return;
  finish_sample(r, i, local_output(r, i, FinishReason{FinishReason::Type::abort, {}, 0, why}, now), now);
}

void Router::finish_sample(Req& r, int i, SampleOutput out, TimePoint) {
  Sample& s = r.samples[i];
  if (s.out) return;
  Call* c = find_call(r.call);
  if (c && r.gen.stream && !c->failed && s.tracker && out.text.size() > s.streamed) {  // the text held back
    StreamChunk last{r.gen.rid, i, out.text.substr(s.streamed), {}, {}};
    reply(c->caller, "generate.chunk", wire::encode_chunk(c->req_id, last));
  }
  s.streamed = out.text.size();
  s.out = std::move(out);
  s.job = 0;
  if (--r.pending == 0 && c) --c->pending;
}

void Router::fail_call(Call& c, size_t k, Status st) {
  if (!c.failed || k < c.error_index) {
    c.error_index = k;
    c.error = std::move(st);
  }
  if (c.failed) return;
  c.failed = true;
  // All or nothing: the other parts of the call stop now; the error goes once every engine answered.
  for (const auto& [id, job] : jobs_)
    if (job->kind == Job::Kind::generate && job->call == c.id)
      for (const Job::Entry& en : job->entries)
        send_engine(job->engine, "abort", wire::encode(AbortCall{next_req_id_++, en.engine_rid, "", false}));
}

void Router::maybe_complete(Call& c) {
  if (c.failed) {
    if (c.jobs_open > 0) return;
    reply_error(c.caller, c.req_id, c.error);
    return end_call(c);
  }
  if (c.pending > 0) return;
  GenerateReply rep{c.req_id, {}};
  for (const auto& r : c.reqs)
    for (Sample& s : r->samples) rep.outputs.push_back(std::move(*s.out));
  reply(c.caller, "generate.reply", wire::encode(rep));
  end_call(c);
}

void Router::end_call(Call& c) {
  if (c.counted > 0) {
    auto it = in_flight_.find(c.caller);
    if (it != in_flight_.end() && (it->second -= std::min(it->second, c.counted)) == 0) in_flight_.erase(it);
  }
  for (const auto& r : c.reqs) {
    auto it = rids_.find(r->gen.rid);
    if (it != rids_.end() && it->second == r) rids_.erase(it);
    r->call = 0;
  }
  for (const ScoreRequest& s : c.score.batch) {
    auto it = score_rids_.find(s.rid);
    if (it != score_rids_.end() && it->second.first == c.id) score_rids_.erase(it);
  }
  calls_.erase(c.id);
}

// ---- score: stateless, so a whole call goes to one engine and again elsewhere if it dies

void Router::on_score(const std::string& caller, std::string body, TimePoint now, std::string_view role) {
  auto call = wire::decode_score(body);
  if (!call.ok()) return reply_error(caller, wire::peek_req_id(body), call.status());
  const size_t n = call->batch.size();
  if (Status st = check_limits(caller, role, n, 1); !st.ok()) return reply_error(caller, call->req_id, st);
  for (size_t k = 0; k < n; ++k) {
    const std::string& rid = call->batch[k].rid;
    if (rid.empty())
      return reply_error(caller, call->req_id,
                         in_batch(make_error(ErrorCode::invalid_argument, "rid: must be a non-empty string"), k, n));
    bool twice = false;
    for (size_t j = 0; j < k; ++j) twice = twice || call->batch[j].rid == rid;
    if (twice || rids_.count(rid) || score_rids_.count(rid))
      return reply_error(
          caller, call->req_id,
          in_batch(make_error(ErrorCode::duplicate_rid, "rid: '" + rid + "' is already in flight"), k, n));
  }
  auto c = std::make_unique<Call>();
  c->id = next_call_++;
  c->caller = caller;
  c->req_id = call->req_id;
  c->start = now;
  c->is_score = true;
  c->batch_size = n;
  c->score = std::move(call).value();
  for (const ScoreRequest& s : c->score.batch) score_rids_[s.rid] = {c->id, next_seq_++};
  count_in_flight(*c, role);
  Call& ref = *c;
  calls_[c->id] = std::move(c);
  send_score(ref, -1);
}

void Router::send_score(Call& c, int exclude) {
  std::vector<int> not_there = c.refused_by;  // engines that said unavailable, and a dead one
  not_there.push_back(exclude);
  const int k = pick(not_there);
  if (k < 0) {
    reply_error(c.caller, c.req_id, make_error(ErrorCode::unavailable, "no live engine behind this router"));
    return end_call(c);
  }
  const uint64_t id = next_req_id_++;
  ScoreCall sc = c.score;
  sc.req_id = id;
  auto job = std::make_unique<Job>();
  job->kind = Job::Kind::score;
  job->call = c.id;
  job->requests = job->samples = static_cast<int>(sc.batch.size());
  engines_[k].in_flight += job->requests;
  engines_[k].in_flight_samples += job->samples;
  ++c.jobs_open;
  send_job(id, k, "score", wire::encode(sc), std::move(job));
}

void Router::on_score_reply(const Job& job, const std::string& op, json body, int k, TimePoint) {
  Call* c = find_call(job.call);
  if (!c) return;
  if (op == "error") {
    const Status st = wire::status_from_error_json(body);
    if (st.code == ErrorCode::unavailable && !c->score_aborting) {
      engines_[k].status = "unavailable";
      c->refused_by.push_back(k);
      return send_score(*c, k);
    }
  }
  body["req_id"] = c->req_id;
  reply(c->caller, op, wire::pack_body(body));
  end_call(*c);
}

}  // namespace zr
