#include "actors/rollout_actor.h"

#include "comm/wire_codec.h"

namespace zr {

namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr auto kRateWindow = std::chrono::seconds(5);  // tokens_per_s averages over this window

ActorOptions actor_options(const RolloutActorOptions& o) {
  ActorOptions a;
  a.rank = o.rank;
  return a;
}

// The error of request k of a batch names it: "batch[2].sampling_params.top_p: ...".
Status in_batch(const Status& st, size_t k, size_t batch_size) {
  if (batch_size <= 1) return st;
  return make_error(st.code, "batch[" + std::to_string(k) + "]." + st.message);
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
}

RolloutActor::~RolloutActor() { actor_.stop(); }

void RolloutActor::reply_error(const ReplyTo& to, uint64_t req_id, const Status& st) {
  actor_.send_error(to, req_id, st);
}

void RolloutActor::register_handlers() {
  actor_.on("generate", [this](Frame& f, const ReplyTo& from) { on_generate(f, from); });
  actor_.on("score", [this](Frame& f, const ReplyTo& from) { on_score(f, from); });
  actor_.on("abort", [this](Frame& f, const ReplyTo& from) { on_abort(f, from); });
  actor_.on("get_load", [this](Frame& f, const ReplyTo& from) {
    auto id = wire::decode_req_id_only(f.body);
    if (!id.ok()) return reply_error(from, wire::peek_req_id(f.body), id.status());
    EngineStats s = engine_->stats();
    LoadReply r{*id, s.waiting, s.running, s.kv_blocks_used, s.kv_blocks_total, tokens_per_s()};
    actor_.send(from, "get_load.reply", wire::encode(r));
  });
  actor_.on("health", [this](Frame& f, const ReplyTo& from) {
    auto id = wire::decode_req_id_only(f.body);
    if (!id.ok()) return reply_error(from, wire::peek_req_id(f.body), id.status());
    const bool released = engine_->weights_released() || engine_->kv_released();
    actor_.send(from, "health.reply",
                wire::encode(HealthReply{*id, released ? "released" : "serving", engine_->weight_version()}));
  });
  actor_.on("get_model_info", [this](Frame& f, const ReplyTo& from) {
    auto id = wire::decode_req_id_only(f.body);
    if (!id.ok()) return reply_error(from, wire::peek_req_id(f.body), id.status());
    const ModelConfig& c = engine_->config();
    ModelInfoReply r{*id, c.arch_name, c.vocab_size, c.max_position_embeddings, c.bos_token_id,
                     c.eos_token_ids, c.pad_token_id, engine_->weight_version(), opt_.model_path};
    actor_.send(from, "get_model_info.reply", wire::encode(r));
  });
  actor_.on("flush_cache", [this](Frame& f, const ReplyTo& from) {
    auto id = wire::decode_req_id_only(f.body);
    if (!id.ok()) return reply_error(from, wire::peek_req_id(f.body), id.status());
    SimpleReply r{*id, {}, engine_->flush_cache()};
    actor_.send(from, "flush_cache.reply", wire::encode_simple_reply("flush_cache", r));
  });
  actor_.on("open_session", [this](Frame& f, const ReplyTo& from) {
    auto c = wire::decode_open_session(f.body);
    if (!c.ok()) return reply_error(from, wire::peek_req_id(f.body), c.status());
    SimpleReply r{c->req_id, engine_->open_session(), 0};
    actor_.send(from, "open_session.reply", wire::encode_simple_reply("open_session", r));
  });
  actor_.on("close_session", [this](Frame& f, const ReplyTo& from) {
    auto c = wire::decode_close_session(f.body);
    if (!c.ok()) return reply_error(from, wire::peek_req_id(f.body), c.status());
    if (Status st = engine_->close_session(c->session_id); !st.ok()) return reply_error(from, c->req_id, st);
    actor_.send(from, "close_session.reply", wire::encode_simple_reply("close_session", SimpleReply{c->req_id, {}, 0}));
  });
}

// The engine's tokenizer, on the actor thread (a text of a few MB takes milliseconds).
void RolloutActor::register_text_handlers() {
  actor_.on("tokenize", [this](Frame& f, const ReplyTo& from) {
    auto c = wire::decode_tokenize(f.body);
    if (!c.ok()) return reply_error(from, wire::peek_req_id(f.body), c.status());
    const Tokenizer& tok = engine_->tokenizer();
    if (!tok.has_text())
      return reply_error(from, c->req_id, make_error(ErrorCode::invalid_argument, "text: this model has no tokenizer"));
    actor_.send(from, "tokenize.reply", wire::encode(TokenizeReply{c->req_id, tok.encode(c->text, c->add_special_tokens)}));
  });
  actor_.on("detokenize", [this](Frame& f, const ReplyTo& from) {
    auto c = wire::decode_detokenize(f.body);
    if (!c.ok()) return reply_error(from, wire::peek_req_id(f.body), c.status());
    const Tokenizer& tok = engine_->tokenizer();
    if (!tok.has_text())
      return reply_error(from, c->req_id, make_error(ErrorCode::invalid_argument, "input_ids: this model has no tokenizer"));
    const int vocab = engine_->config().vocab_size;
    for (size_t i = 0; i < c->input_ids.size(); ++i)
      if (c->input_ids[i] < 0 || c->input_ids[i] >= vocab)
        return reply_error(from, c->req_id,
                           make_error(ErrorCode::out_of_range, "input_ids[" + std::to_string(i) + "]: token id " +
                                                                   std::to_string(c->input_ids[i]) +
                                                                   " is outside the vocabulary [0, " + std::to_string(vocab) + ")"));
    actor_.send(from, "detokenize.reply", wire::encode(DetokenizeReply{c->req_id, tok.decode(c->input_ids, c->skip_special_tokens)}));
  });
}

// A call is all or nothing: when request k is refused, the ones before it are withdrawn silently
// and the call gets one error.
void RolloutActor::refuse_call(const Call& c, const Status& st) {
  StepOutputs discard;
  for (const auto& done : c.rids) {
    engine_->abort(AbortCall{0, done, "", false}, discard);
    call_of_rid_.erase(done);
  }
  reply_error(c.to, c.req_id, st);
}

void RolloutActor::on_generate(Frame& f, const ReplyTo& from) {
  auto call = wire::decode_generate(f.body);
  if (!call.ok()) return reply_error(from, wire::peek_req_id(f.body), call.status());
  auto c = std::make_shared<Call>();
  c->req_id = call->req_id;
  c->to = from;
  for (size_t k = 0; k < call->batch.size(); ++k) {
    GenerateRequest& r = call->batch[k];
    const std::string rid = r.rid;
    const int n = r.sampling_params.n;
    Status st = call_of_rid_.count(rid) ? make_error(ErrorCode::duplicate_rid, "rid: '" + rid + "' is already in flight")
                                        : engine_->submit(std::move(r));
    if (!st.ok()) return refuse_call(*c, in_batch(st, k, call->batch.size()));
    c->rids.push_back(rid);
    c->samples[rid].resize(n);
    c->pending += n;
    call_of_rid_[rid] = c;
  }
}

void RolloutActor::on_score(Frame& f, const ReplyTo& from) {
  auto call = wire::decode_score(f.body);
  if (!call.ok()) return reply_error(from, wire::peek_req_id(f.body), call.status());
  auto c = std::make_shared<Call>();
  c->req_id = call->req_id;
  c->to = from;
  c->score = true;
  for (size_t k = 0; k < call->batch.size(); ++k) {
    const std::string rid = call->batch[k].rid;
    Status st = call_of_rid_.count(rid) ? make_error(ErrorCode::duplicate_rid, "rid: '" + rid + "' is already in flight")
                                        : engine_->submit_score(std::move(call->batch[k]));
    if (!st.ok()) return refuse_call(*c, in_batch(st, k, call->batch.size()));
    c->rids.push_back(rid);
    c->scores[rid];
    ++c->pending;
    call_of_rid_[rid] = c;
  }
}

void RolloutActor::on_abort(Frame& f, const ReplyTo& from) {
  auto a = wire::decode_abort(f.body);
  if (!a.ok()) return reply_error(from, wire::peek_req_id(f.body), a.status());
  StepOutputs out;
  AbortReply reply{a->req_id, engine_->abort(*a, out)};
  route(out);  // the aborted requests answer their own calls with partial outputs first
  actor_.send(from, "abort.reply", wire::encode(reply));
}

bool RolloutActor::tick() {
  if (engine_->idle()) return false;  // a stage in progress wakes the loop when it is done
  StepOutputs out;
  engine_->step(out);
  if (out.tokens_generated > 0) generated_.emplace_back(SteadyClock::now(), out.tokens_generated);
  route(out);
  return !engine_->idle();
}

void RolloutActor::route(StepOutputs& out) {
  for (const UpdateOutcome& o : out.updates) on_update_done(o);
  for (const StreamChunk& ch : out.chunks) {
    auto it = call_of_rid_.find(ch.rid);
    if (it != call_of_rid_.end()) actor_.send(it->second->to, "generate.chunk", wire::encode_chunk(it->second->req_id, ch));
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
  actor_.send(c->to, "generate.reply", wire::encode(reply));
}

// SIGTERM / stop(): no new work is read; in-flight requests get drain_timeout to finish, then the
// rest are aborted; every call is answered before the actor exits.
void RolloutActor::drain_on_stop() {
  auto deadline = SteadyClock::now() + opt_.drain_timeout;
  if (!engine_->idle()) actor_.log().info("draining {} running, {} waiting", engine_->stats().running, engine_->stats().waiting);
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
