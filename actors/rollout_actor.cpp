#include "actors/rollout_actor.h"

#include "comm/hop_trace.h"
#include "comm/wire_codec.h"

namespace zr {

namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr auto kRateWindow = std::chrono::seconds(5);  // tokens_per_s averages over this window

ActorOptions actor_options(const RolloutActorOptions& o) {
  ActorOptions a;
  a.rank = o.rank;
  a.curve = o.curve;
  a.max_message_bytes = o.max_message_bytes;
  return a;
}

// The error of request k of a batch names it: "batch[2].sampling_params.top_p: ...".
Status in_batch(const Status& st, size_t k, size_t batch_size) {
  if (batch_size <= 1) return st;
  return make_error(st.code, "batch[" + std::to_string(k) + "]." + st.message);
}

// Bytes an update of every tensor in the dtype the engine serves spans (64-byte aligned offsets,
// as assign_transfer_offsets lays them out): the size of its staging buffers.
uint64_t transfer_bytes_of(const ModelWeights& w) {
  uint64_t end = 0;
  for (const TensorSpec& s : w.specs()) {
    const Weight* cur = w.find(s.name);
    if (!cur) continue;
    uint64_t numel = 1;
    for (int64_t d : s.shape) numel *= static_cast<uint64_t>(d);
    end = ((end + 63) & ~uint64_t{63}) + numel * dtype_size(cur->dtype);
  }
  return end;
}

}  // namespace

RolloutActor::RolloutActor(Context& ctx, std::unique_ptr<Engine> engine, RolloutActorOptions opt)
    : engine_(std::move(engine)), opt_(std::move(opt)), actor_(ctx, opt_.name, actor_options(opt_)) {
  actor_.set_error_body(wire::error_body);
  actor_.set_req_id_of(wire::peek_req_id);
  actor_.set_tick([this] { return tick(); });
  actor_.set_on_stop([this] { drain_on_stop(); });
  register_handlers();
  register_weight_handlers();
  register_text_handlers();
  // The first ipc pull (or broadcast) lands in a fresh buffer and packs into fresh packs: back both
  // now, not in the push (the next buffer is backed after that push commits: on_update_done).
  staging_bytes_ = transfer_bytes_of(engine_->weights());
  staging_.prepare(staging_bytes_, 1, [stager = engine_->pack_stager(), shapes = packed_shapes(engine_->weights())] {
    if (stager) stager.pool->prefault(shapes, stager.compute);
  });
}

RolloutActor::~RolloutActor() { actor_.stop(); }

void RolloutActor::reply_error(const ReplyTo& to, uint64_t req_id, const Status& st) {
  actor_.send_error(to, req_id, st);
}

void RolloutActor::register_handlers() {
  actor_.on<GenerateCall>("generate",
                          [this](GenerateCall& c, Frame&, const ReplyTo& from) { return on_generate(c, from); });
  actor_.on<ScoreCall>("score", [this](ScoreCall& c, Frame&, const ReplyTo& from) { return on_score(c, from); });
  actor_.on<AbortCall>("abort", [this](AbortCall& a, Frame&, const ReplyTo& from) { return on_abort(a, from); });
  actor_.on<ReqIdOnly, LoadReply>("get_load", [this](ReqIdOnly& c, const ReplyTo&) -> Result<LoadReply> {
    EngineStats s = engine_->stats();
    return LoadReply{c.req_id, s.waiting, s.running, s.kv_blocks_used, s.kv_blocks_total, tokens_per_s()};
  });
  actor_.on<ReqIdOnly, HealthReply>("health", [this](ReqIdOnly& c, const ReplyTo&) -> Result<HealthReply> {
    const bool released = engine_->weights_released() || engine_->kv_released();
    return HealthReply{c.req_id, released ? "released" : "serving", engine_->weight_version()};
  });
  actor_.on<ReqIdOnly, ModelInfoReply>("get_model_info",
                                       [this](ReqIdOnly& c, const ReplyTo&) -> Result<ModelInfoReply> {
                                         const ModelConfig& m = engine_->config();
                                         return ModelInfoReply{c.req_id,
                                                               m.arch_name,
                                                               m.vocab_size,
                                                               m.max_position_embeddings,
                                                               m.bos_token_id,
                                                               m.eos_token_ids,
                                                               m.pad_token_id,
                                                               engine_->weight_version(),
                                                               opt_.model_path,
                                                               kernels::compute_name(engine_->compute()),
                                                               kv_dtype_name(engine_->kv_dtype()),
                                                               opt_.weights_roots};
                                       });
  actor_.on<ReqIdOnly, SimpleReply>("flush_cache", [this](ReqIdOnly& c, const ReplyTo&) -> Result<SimpleReply> {
    return SimpleReply{c.req_id, {}, engine_->flush_cache()};
  });
  actor_.on<SessionCall, SimpleReply>("open_session", [this](SessionCall& c, const ReplyTo&) -> Result<SimpleReply> {
    return SimpleReply{c.req_id, engine_->open_session(), 0};
  });
  actor_.on<SessionCall, SimpleReply>("close_session", [this](SessionCall& c, const ReplyTo&) -> Result<SimpleReply> {
    ZR_RETURN_IF_ERROR(engine_->close_session(c.session_id));
    return SimpleReply{c.req_id, {}, 0};
  });
}

// The engine's tokenizer, on the actor thread (a text of a few MB takes milliseconds).
void RolloutActor::register_text_handlers() {
  actor_.on<TokenizeCall, TokenizeReply>("tokenize", [this](TokenizeCall& c, const ReplyTo&) -> Result<TokenizeReply> {
    const Tokenizer& tok = engine_->tokenizer();
    if (!tok.has_text()) return make_error(ErrorCode::invalid_argument, "text: this model has no tokenizer");
    return TokenizeReply{c.req_id, tok.encode(c.text, c.add_special_tokens)};
  });
  actor_.on<DetokenizeCall, DetokenizeReply>(
      "detokenize", [this](DetokenizeCall& c, const ReplyTo&) -> Result<DetokenizeReply> {
        const Tokenizer& tok = engine_->tokenizer();
        if (!tok.has_text()) return make_error(ErrorCode::invalid_argument, "input_ids: this model has no tokenizer");
        const int vocab = engine_->config().vocab_size;
        for (size_t i = 0; i < c.input_ids.size(); ++i)
          if (c.input_ids[i] < 0 || c.input_ids[i] >= vocab)
            return make_error(ErrorCode::out_of_range,
                              "input_ids[" + std::to_string(i) + "]: token id " + std::to_string(c.input_ids[i]) +
                                  " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
        return DetokenizeReply{c.req_id, tok.decode(c.input_ids, c.skip_special_tokens)};
      });
}

// A call is all or nothing: when request k is refused, the ones before it are withdrawn silently
// and the call gets one error (the returned one).
Status RolloutActor::refuse_call(const Call& c, const Status& st) {
  StepOutputs discard;
  for (const auto& done : c.rids) {
    engine_->abort(AbortCall{0, done, "", false}, discard);
    call_of_rid_.erase(done);
  }
  return st;
}

Status RolloutActor::check_limits(size_t prompts, int max_n, const ReplyTo& from) const {
  std::optional<size_t> have;
  if (from.via_router() && counts_in_flight(from.user_id)) {
    auto it = in_flight_.find(from.routing_id);
    have = it == in_flight_.end() ? 0 : static_cast<size_t>(it->second);
  }
  return check_call_limits(opt_.limits, prompts, max_n, have);
}

void RolloutActor::count_in_flight(Call& c, int delta) {
  if (!c.to.via_router() || (delta > 0) == c.counted) return;
  c.counted = delta > 0;
  int& n = in_flight_[c.to.routing_id];
  n += delta;
  if (n <= 0) in_flight_.erase(c.to.routing_id);
}

Status RolloutActor::on_generate(GenerateCall& call, const ReplyTo& from) {
  int max_n = 0;
  for (const auto& r : call.batch) max_n = std::max(max_n, r.sampling_params.n);
  ZR_RETURN_IF_ERROR(check_limits(call.batch.size(), max_n, from));
  auto c = std::make_shared<Call>();
  c->req_id = call.req_id;
  c->to = from;
  for (size_t k = 0; k < call.batch.size(); ++k) {
    GenerateRequest& r = call.batch[k];
    const std::string rid = r.rid;
    const int n = r.sampling_params.n;
    Status st = call_of_rid_.count(rid)
                    ? make_error(ErrorCode::duplicate_rid, "rid: '" + rid + "' is already in flight")
                    : engine_->submit(std::move(r));
    if (!st.ok()) return refuse_call(*c, in_batch(st, k, call.batch.size()));
    c->rids.push_back(rid);
    c->samples[rid].resize(n);
    c->pending += n;
    call_of_rid_[rid] = c;
  }
  count_in_flight(*c, static_cast<int>(c->rids.size()));
  hop_trace::mark(hop_trace::Hop::engine_submitted);
  return {};
}

Status RolloutActor::on_score(ScoreCall& call, const ReplyTo& from) {
  ZR_RETURN_IF_ERROR(check_limits(call.batch.size(), 1, from));
  auto c = std::make_shared<Call>();
  c->req_id = call.req_id;
  c->to = from;
  c->score = true;
  for (size_t k = 0; k < call.batch.size(); ++k) {
    const std::string rid = call.batch[k].rid;
    Status st = call_of_rid_.count(rid)
                    ? make_error(ErrorCode::duplicate_rid, "rid: '" + rid + "' is already in flight")
                    : engine_->submit_score(std::move(call.batch[k]));
    if (!st.ok()) return refuse_call(*c, in_batch(st, k, call.batch.size()));
    c->rids.push_back(rid);
    c->scores[rid];
    ++c->pending;
    call_of_rid_[rid] = c;
  }
  count_in_flight(*c, static_cast<int>(c->rids.size()));
  return {};
}

Status RolloutActor::on_abort(const AbortCall& a, const ReplyTo& from) {
  StepOutputs out;
  AbortReply reply{a.req_id, {}};
  if (from.user_id == "client") {
    // A client key aborts only its own requests: those whose call came on this connection.
    for (const auto& [rid, call] : call_of_rid_) {
      if (!call->to.via_router() || call->to.routing_id != from.routing_id) continue;
      if (!a.all && rid != a.rid && (a.rid_prefix.empty() || rid.rfind(a.rid_prefix, 0) != 0)) continue;
      for (auto& r : engine_->abort(AbortCall{0, rid, "", false}, out)) reply.aborted.push_back(std::move(r));
    }
  } else {
    reply.aborted = engine_->abort(a, out);
  }
  route(out);  // the aborted requests answer their own calls with partial outputs first
  actor_.send(from, "abort.reply", wire::encode(reply));
  return {};
}

bool RolloutActor::tick() {
  if (engine_->idle()) return false;  // a stage in progress wakes the loop when it is done
  StepOutputs out;
  hop_trace::mark(hop_trace::Hop::step_start);
  engine_->step(out);
  hop_trace::mark(hop_trace::Hop::step_end);
  if (out.tokens_generated > 0) generated_.emplace_back(SteadyClock::now(), out.tokens_generated);
  // Parked before the replies go out: a worker spinning for the next job would hold one of the
  // cores the replies' socket threads (ours, ZeroMQ's, the client's) need right now.
  if (opt_.park_idle_threads && engine_->idle()) engine_->park_threads();
  route(out);
  return !engine_->idle();
}

void RolloutActor::route(StepOutputs& out) {
  for (const UpdateOutcome& o : out.updates) on_update_done(o);
  for (const StreamChunk& ch : out.chunks) {
    auto it = call_of_rid_.find(ch.rid);
    if (it != call_of_rid_.end())
      actor_.send(it->second->to, "generate.chunk", wire::encode_chunk(it->second->req_id, ch));
  }
  for (SampleOutput& o : out.finished) {
    auto it = call_of_rid_.find(o.rid);
    if (it == call_of_rid_.end()) continue;
    std::string rid = o.rid;
    it->second->samples[rid][o.index] = std::move(o);
    --it->second->pending;
    complete(rid);
  }
  for (ScoreOutput& s : out.scores) {
    auto it = call_of_rid_.find(s.rid);
    if (it == call_of_rid_.end()) continue;
    std::string rid = s.rid;
    it->second->scores[rid] = std::move(s);
    --it->second->pending;
    complete(rid);
  }
  for (const std::string& rid : out.aborted_scores) {
    auto it = call_of_rid_.find(rid);
    if (it == call_of_rid_.end()) continue;
    it->second->error = make_error(ErrorCode::aborted, "rid: '" + rid + "' was aborted");
    --it->second->pending;
    complete(rid);
  }
}

// Sends the call's reply once nothing of it is pending.
void RolloutActor::complete(const std::string& rid) {
  std::shared_ptr<Call> c = call_of_rid_.at(rid);
  if (c->pending > 0) return;
  for (const auto& r : c->rids) call_of_rid_.erase(r);
  count_in_flight(*c, -static_cast<int>(c->rids.size()));
  if (!c->error.ok()) return reply_error(c->to, c->req_id, c->error);
  if (c->score) {
    ScoreReply reply{c->req_id, {}};
    for (const auto& r : c->rids) reply.outputs.push_back(std::move(*c->scores[r]));
    actor_.send(c->to, "score.reply", wire::encode(reply));
    return;
  }
  GenerateReply reply{c->req_id, {}};
  for (const auto& r : c->rids)
    for (auto& s : c->samples[r]) reply.outputs.push_back(std::move(*s));
  std::string body = wire::encode(reply);
  hop_trace::mark(hop_trace::Hop::reply_encoded);
  actor_.send(c->to, "generate.reply", std::move(body));
  hop_trace::mark(hop_trace::Hop::reply_sent);
}

// SIGTERM / stop(): no new work is read; in-flight requests get drain_timeout to finish, then the
// rest are aborted; every call is answered before the actor exits.
void RolloutActor::drain_on_stop() {
  auto deadline = SteadyClock::now() + opt_.drain_timeout;
  if (!engine_->idle())
    actor_.log().info("draining {} running, {} waiting", engine_->stats().running, engine_->stats().waiting);
  while (!engine_->idle() && SteadyClock::now() < deadline) tick();
  StepOutputs out;
  auto aborted = engine_->abort(AbortCall{0, "", "", true}, out);
  if (!aborted.empty()) actor_.log().warn("drain timeout: aborted {} request(s)", aborted.size());
  route(out);
}

double RolloutActor::tokens_per_s() {
  auto now = SteadyClock::now();
  while (!generated_.empty() && now - generated_.front().first > kRateWindow) generated_.pop_front();
  int total = 0;
  for (const auto& g : generated_) total += g.second;
  return total / std::chrono::duration<double>(kRateWindow).count();
}

}  // namespace zr
