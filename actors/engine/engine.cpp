#include "actors/engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <random>
#include <thread>

#include "actors/engine/engine_state.h"
#include "actors/engine/request_validation.h"
#include "actors/engine/tp_group.h"

namespace zr {

namespace {

TokenLogprob to_token_lp(int id, float lp) { return TokenLogprob{lp, id, std::nullopt}; }

std::vector<TokenLogprob> to_list(const std::vector<std::pair<int, float>>& v) {
  std::vector<TokenLogprob> out;
  out.reserve(v.size());
  for (auto [id, lp] : v) out.push_back(to_token_lp(id, lp));
  return out;
}

}  // namespace

// return_text_in_logprobs: each entry's token decoded alone, special tokens kept, as SGLang's
// tokenizer.batch_decode(ids) gives it. Entries that already carry text are left alone.
void fill_logprob_texts(const Tokenizer& tok, std::vector<TokenLogprob>& lps) {
  for (TokenLogprob& t : lps)
    if (!t.text) t.text = tok.decode(std::span<const int>(&t.token_id, 1), /*skip_special_tokens=*/false);
}

void fill_logprob_texts(const Tokenizer& tok, MetaInfo& m) {
  fill_logprob_texts(tok, m.output_token_logprobs);
  fill_logprob_texts(tok, m.input_token_logprobs);
  for (auto* lists :
       {&m.output_top_logprobs, &m.input_top_logprobs, &m.output_token_ids_logprobs, &m.input_token_ids_logprobs})
    for (auto& l : *lists) fill_logprob_texts(tok, l);
}

Result<std::unique_ptr<Engine>> Engine::load(const std::string& dir, const EngineOptions& opt) {
  auto cfg = ModelConfig::from_dir(dir);
  if (!cfg.ok()) return cfg.status();
  TpShard shard = opt.tp ? opt.tp->shard() : TpShard{};
  auto w = ModelWeights::load_dir(*cfg, dir, shard);
  if (!w.ok()) return w.status();
  if (opt.compute == kernels::Compute::bf16) w->round_matrices_to_bf16();
  if (opt.copy_weights)
    if (auto copied = w->copy_to_anonymous_memory(); !copied.ok()) return copied.status();
  auto tok = Tokenizer::load(dir);
  if (!tok.ok()) return tok.status();
  if (!tok->has_text())
    spdlog::info("engine: no tokenizer in {}: token-only mode (input_ids in, text fields empty)", dir);
  auto eng = std::unique_ptr<Engine>(new Engine(std::move(w).value(), std::move(tok).value(), opt));
  eng->model_dir_ = dir;
  return eng;
}

Engine::Engine(ModelWeights w, Tokenizer tok, const EngineOptions& opt)
    : weights_(std::move(w)),
      tok_(std::move(tok)),
      opt_(opt),
      kv_(std::make_unique<KvCache>(local_config(weights_.config(), opt.tp ? opt.tp->shard() : TpShard{}),
                                    opt.kv_block_size, opt.kv_cache_bytes, opt.kv_dtype)),
      sched_(opt.scheduler, kv_->num_blocks(), kv_->block_size()),
      update_(opt.tp) {
  int threads = opt.threads > 0 ? opt.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  pool_ = std::make_unique<ThreadPool>(threads);
  const TpShard shard = opt.tp ? opt.tp->shard() : TpShard{};
  if (opt.kv_prefault) prefault_kv();
  tf_ = std::make_unique<Transformer>(&weights_, kv_.get(), pool_.get(), opt.tp, opt.compute);
  spdlog::info("engine: {} threads, {} compute, KV cache {} {} blocks x {} tokens ({:.1f} MiB), max_running {}{}",
               threads, kernels::compute_name(opt.compute), kv_dtype_name(opt.kv_dtype), kv_->num_blocks(),
               kv_->block_size(), kv_->bytes() / 1048576.0, opt.scheduler.max_running,
               opt.tp ? fmt::format(", tensor parallel over {} ranks", shard.size) : std::string());
}

void Engine::prefault_kv() {
  auto t0 = std::chrono::steady_clock::now();
  size_t bytes = kv_->prefault();
  spdlog::info("engine: KV cache pages faulted in ({:.1f} MiB in {:.0f} ms)", bytes / 1048576.0,
               std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
}

Engine::~Engine() {
  if (opt_.tp) opt_.tp->send(TpCommand{TpCommand::Kind::shutdown, 0, {}, {}});
}

EngineStats Engine::stats() const {
  // Blocks only the prefix cache holds are free on demand: not "used".
  const int used = sched_.blocks().num_used() - sched_.prefix_cache().num_idle();
  return {sched_.num_waiting(),       sched_.num_running(),        used, sched_.blocks().num_blocks(), preemptions_,
          sched_.prefix_hit_tokens(), sched_.prefix_cache().size()};
}

Status Engine::check_rid(const std::string& rid) const {
  if (active_rids_.count(rid)) return make_error(ErrorCode::duplicate_rid, "rid: '" + rid + "' is already in flight");
  return {};
}

Status Engine::submit(GenerateRequest req) {
  ZR_RETURN_IF_ERROR(serving_check());
  if (req.text && !req.input_ids.empty()) req.text.reset();  // input_ids takes precedence, as in SGLang
  ZR_RETURN_IF_ERROR(validate_text_use(req, tok_.has_text(), opt_.detokenize && req.detokenize));
  std::shared_ptr<Session> session;
  if (req.text) req.input_ids = tok_.encode(*req.text, /*add_bos=*/req.session_id.empty());
  ZR_RETURN_IF_ERROR(check_rid(req.rid));
  ZR_RETURN_IF_ERROR(attach_session(req, session));  // prepends the session's tokens
  if (Status st = validate_generate(req, config()); !st.ok()) {
    if (session) session->busy = false;
    return st;
  }
  if (kv_->blocks_for(static_cast<int>(req.input_ids.size()) + 1) > kv_->num_blocks()) {
    if (session) session->busy = false;
    return make_error(ErrorCode::too_long, "input_ids: the prompt does not fit the KV cache budget");
  }
  if (Status st = clip_max_new_tokens(req, config(), kv_->num_blocks() * kv_->block_size()); !st.ok()) {
    if (session) session->busy = false;
    return st;
  }
  auto r = std::make_shared<Request>();
  r->gen = std::move(req);
  r->start = Clock::now();
  r->session = session;
  const SamplingParams& sp = r->gen.sampling_params;
  r->seed = sp.seed ? *sp.seed : std::random_device{}() * 0x100000001ull;
  r->live_samples = sp.n;
  if (r->gen.return_logprob && r->gen.logprob_start_len >= 0) {
    int count = static_cast<int>(r->gen.input_ids.size()) - r->gen.logprob_start_len;
    r->input_lp.resize(count);
    r->input_top.resize(r->gen.top_logprobs_num > 0 ? count : 0);
    r->input_ids.resize(r->gen.token_ids_logprob.empty() ? 0 : count);
    for (int i = 0; i < count; ++i) r->input_lp[i].token_id = r->gen.input_ids[r->gen.logprob_start_len + i];
  } else {
    r->input_done = true;
  }
  active_rids_.insert(r->gen.rid);
  std::vector<int> tokens = r->gen.input_ids;
  enqueue(std::move(r), std::move(tokens), session.get());
  return {};
}

Status Engine::submit_score(ScoreRequest req) {
  ZR_RETURN_IF_ERROR(serving_check());
  ZR_RETURN_IF_ERROR(validate_score(req, config()));
  ZR_RETURN_IF_ERROR(check_rid(req.rid));
  int total = static_cast<int>(req.input_ids.size() + req.completion_ids.size());
  if (kv_->blocks_for(total) > kv_->num_blocks())
    return make_error(ErrorCode::too_long, "completion_ids: prompt + completion do not fit the KV cache budget");
  auto r = std::make_shared<Request>();
  r->is_score = true;
  r->score = std::move(req);
  r->start = Clock::now();
  r->score_out.rid = r->score.rid;
  r->score_out.weight_version = weight_version_;
  r->score_out.logprobs.resize(r->score.completion_ids.size());
  if (r->score.top_logprobs_num > 0) r->score_out.top_logprobs.resize(r->score.completion_ids.size());
  std::vector<int> tokens = r->score.input_ids;
  tokens.insert(tokens.end(), r->score.completion_ids.begin(), r->score.completion_ids.end());
  r->gen.input_ids = r->score.input_ids;
  r->input_done = true;
  active_rids_.insert(r->score.rid);
  enqueue(std::move(r), std::move(tokens));
  return {};
}

std::unique_ptr<TextStreamer> Engine::make_text_streamer(const GenerateRequest& r) const {
  const SamplingParams& sp = r.sampling_params;
  return std::make_unique<TextStreamer>(text_tokenizer(r),
                                        TextStreamerOptions{sp.stop, sp.skip_special_tokens, sp.no_stop_trim});
}

int64_t Engine::enqueue(std::shared_ptr<Request> req, std::vector<int> tokens, const Session* session) {
  auto s = std::make_unique<Sequence>();
  s->id = next_seq_id_++;
  s->prompt_len = static_cast<int>(req->gen.input_ids.size());
  s->tokens = std::move(tokens);
  s->text = make_text_streamer(req->gen);
  s->req = std::move(req);
  int64_t id = s->id;
  // Prefix-cache reuse stops where logits are first needed: a score's completion, prompt logprobs.
  const Request& r = *s->req;
  int reuse_limit = Scheduler::kNoLimit;
  if (r.is_score) reuse_limit = s->prompt_len - 1;
  else if (!r.input_done) reuse_limit = std::max(r.gen.logprob_start_len, 1) - 1;
  s->meta.cached_tokens = sched_.add(id, s->tokens, reuse_limit, session ? session->key : Scheduler::kNoKey);
  seqs_[id] = std::move(s);
  return id;
}

SeqChunk Engine::make_chunk(const Sequence& s, int start, int count) const {
  const Request& r = *s.req;
  const int total = static_cast<int>(s.tokens.size());
  int first = total - 1;  // the row that samples the next token
  if (r.is_score) first = s.prompt_len - 1;
  else if (!r.input_done) first = std::max(r.gen.logprob_start_len, 1) - 1;
  int begin = std::clamp(first - start, 0, count);
  return SeqChunk{s.tokens.data() + start, count, start, &sched_.table(s.id), begin};
}

// Turns the logits rows of one scheduled chunk into jobs: input logprobs, score logprobs, and the
// sampling of the next token (forking the n samples the first time a prompt completes).
void Engine::consume_rows(Sequence& s, int start, int count, const float* logits, std::vector<SampleJob>& jobs) {
  Request& r = *s.req;
  const int V = config().vocab_size, total = static_cast<int>(s.tokens.size());
  const int begin = make_chunk(s, start, count).logits_begin;
  for (int i = begin; i < count; ++i) {
    const int pos = start + i;
    const float* row = logits + static_cast<size_t>(i - begin) * V;
    if (pos + 1 < total && pos + 1 >= s.prompt_len && r.is_score) {
      jobs.push_back({SampleJob::Kind::score, &s, row, s.tokens[pos + 1], pos + 1 - s.prompt_len, {}});
    } else if (pos + 1 < s.prompt_len && !r.input_done && pos + 1 >= r.gen.logprob_start_len) {
      jobs.push_back({SampleJob::Kind::input, &s, row, s.tokens[pos + 1], pos + 1 - r.gen.logprob_start_len, {}});
    } else if (pos == total - 1 && !r.is_score && r.gen.sampling_params.max_new_tokens > 0) {
      if (!r.forked && r.gen.sampling_params.n > 1) fork_samples(s, row, jobs);
      else jobs.push_back({SampleJob::Kind::sample, &s, row, -1, 0, {}});
      r.forked = true;
    }
  }
  if (start + count >= s.prompt_len) r.input_done = true;
}

// Sample 0 continues as `parent`; samples 1..n-1 draw their first token from the same logits row
// with their own seeds, and share its prompt KV blocks once they join the scheduler (step()).
void Engine::fork_samples(Sequence& parent, const float* row, std::vector<SampleJob>& jobs) {
  jobs.push_back({SampleJob::Kind::sample, &parent, row, -1, 0, {}});
  Request& r = *parent.req;
  for (int i = 1; i < r.gen.sampling_params.n; ++i) {
    auto c = std::make_unique<Sequence>();
    c->id = next_seq_id_++;
    c->req = parent.req;
    c->index = i;
    c->tokens = parent.tokens;
    c->prompt_len = parent.prompt_len;
    c->text = make_text_streamer(r.gen);
    c->meta.cached_tokens = parent.prompt_len;
    jobs.push_back({SampleJob::Kind::sample, c.get(), row, -1, 0, {}});
    new_forks_.emplace_back(c->id, parent.id);
    seqs_[c->id] = std::move(c);
  }
}

// Jobs are independent (each reads its own logits row and writes its own result): run them on
// the pool, each thread with its own scratch.
void Engine::run_jobs(std::vector<SampleJob>& jobs) {
  const int V = config().vocab_size;
  const std::vector<int>& eos = config().eos_token_ids;
  int tasks = std::min<int>(static_cast<int>(jobs.size()), pool_->size() * 4);
  pool_->parallel_for(tasks, [&](int t) {
    thread_local SamplerScratch scratch;
    for (size_t j = t; j < jobs.size(); j += tasks) {
      SampleJob& job = jobs[j];
      Request& r = *job.seq->req;
      LogprobOptions lo = r.lo();
      if (job.kind == SampleJob::Kind::sample) {
        const Sequence& s = *job.seq;
        SampleContext ctx{&r.gen.sampling_params,
                          {s.tokens.data(), static_cast<size_t>(s.prompt_len)},
                          {s.tokens.data() + s.prompt_len, static_cast<size_t>(s.num_outputs())},
                          r.seed + static_cast<uint64_t>(s.index)};
        job.result = sample_token(job.row, V, eos, ctx, lo, scratch);
      } else {
        lo.enabled = true;
        job.result = position_logprob(job.row, V, r.lp_temperature(), job.token, lo, scratch);
      }
    }
  });
}

// Appends a sampled token and checks the stop conditions; true when the sample is finished
// (its reason in s.meta.finish_reason).
bool Engine::apply_token(Sequence& s, const SampledToken& t, StepOutputs& out) {
  const Request& r = *s.req;
  const SamplingParams& sp = r.gen.sampling_params;
  s.tokens.push_back(t.token);
  auto& spans = s.meta.weight_version_spans;  // the weights that produced each token
  if (spans.empty() || spans.back().version != weight_version_) spans.push_back({s.num_outputs() - 1, weight_version_});
  if (r.gen.return_logprob) {
    s.meta.output_token_logprobs.push_back(to_token_lp(t.token, t.logprob));
    if (r.gen.top_logprobs_num > 0) s.meta.output_top_logprobs.push_back(to_list(t.top));
    if (!r.gen.token_ids_logprob.empty()) s.meta.output_token_ids_logprobs.push_back(to_list(t.ids));
  }
  FinishReason& fr = s.meta.finish_reason;
  const auto& eos = config().eos_token_ids;
  const bool stop_token =
      std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), t.token) != sp.stop_token_ids.end() ||
      (!sp.ignore_eos && std::find(eos.begin(), eos.end(), t.token) != eos.end());
  const bool stop_string = s.text->push(t.token, stop_token);
  if (stop_token || stop_string) {
    fr.type = FinishReason::Type::stop;
    if (stop_token) fr.matched = t.token;
    else fr.matched = *s.text->matched();
    return true;
  }
  if (s.num_outputs() >= sp.max_new_tokens || static_cast<int>(s.tokens.size()) >= config().max_position_embeddings) {
    fr.type = FinishReason::Type::length;
    fr.length = s.num_outputs();
    return true;
  }
  if (r.gen.stream) emit_chunk(s, /*final=*/false, out);
  return false;
}

void Engine::finish(Sequence& s, FinishReason why, StepOutputs& out) {
  Request& r = *s.req;
  s.text->finish();  // after a stop string: nothing (the text ends at it)
  if (r.gen.stream) emit_chunk(s, /*final=*/true, out);
  if (r.session) detach_session(s, why.type != FinishReason::Type::abort);
  SampleOutput o;
  o.rid = r.gen.rid;
  o.index = s.index;
  o.text = s.text->release_text();
  o.output_ids.assign(s.tokens.begin() + s.prompt_len, s.tokens.end());
  o.meta_info = std::move(s.meta);
  MetaInfo& m = o.meta_info;
  m.id = r.gen.rid;
  m.finish_reason = std::move(why);
  m.prompt_tokens = s.prompt_len;
  m.completion_tokens = static_cast<int>(o.output_ids.size());
  m.weight_version = weight_version_;
  m.e2e_latency = std::chrono::duration<double>(Clock::now() - r.start).count();
  o.return_logprob = r.gen.return_logprob;
  o.has_top = r.gen.top_logprobs_num > 0;
  o.has_ids = !r.gen.token_ids_logprob.empty();
  if (r.gen.return_logprob && r.gen.logprob_start_len >= 0) {
    o.has_input_logprobs = true;
    m.input_token_logprobs = r.input_lp;
    m.input_top_logprobs = r.input_top;
    m.input_token_ids_logprobs = r.input_ids;
  }
  if (r.gen.return_text_in_logprobs) fill_logprob_texts(text_tokenizer(r.gen), m);
  out.finished.push_back(std::move(o));
  s.done = true;
  if (--r.live_samples == 0) active_rids_.erase(r.gen.rid);
}

void Engine::finish_score(Sequence& s, StepOutputs& out) {
  out.scores.push_back(std::move(s.req->score_out));
  s.done = true;
  active_rids_.erase(s.req->score.rid);
}

void Engine::drop_starved(const StepPlan& plan, StepOutputs& out) {
  for (int64_t id : plan.starved) {
    Sequence& s = *seqs_.at(id);
    sched_.remove(id);
    finish(s, FinishReason{FinishReason::Type::abort, {}, 0, "KV cache exhausted"}, out);
    seqs_.erase(id);
  }
}

// Writes job results to their destinations in plan order; returns the ids that got a token.
std::unordered_set<int64_t> Engine::apply_results(std::vector<SampleJob>& jobs, StepOutputs& out) {
  std::unordered_set<int64_t> appended;
  for (SampleJob& job : jobs) {
    Sequence& s = *job.seq;
    Request& r = *s.req;
    const SampledToken& res = job.result;
    switch (job.kind) {
      case SampleJob::Kind::score:
        r.score_out.logprobs[job.slot] = res.logprob;
        if (!r.score_out.top_logprobs.empty()) r.score_out.top_logprobs[job.slot] = res.top;
        break;
      case SampleJob::Kind::input:
        r.input_lp[job.slot].logprob = res.logprob;
        if (!r.input_top.empty()) r.input_top[job.slot] = to_list(res.top);
        if (!r.input_ids.empty()) r.input_ids[job.slot] = to_list(res.ids);
        break;
      case SampleJob::Kind::sample:
        ++out.tokens_generated;
        appended.insert(s.id);
        if (apply_token(s, res, out)) finish(s, s.meta.finish_reason, out);
        break;
    }
  }
  return appended;
}

void Engine::step(StepOutputs& out) {
  advance_update(out);
  StepPlan plan = sched_.schedule();
  preemptions_ += static_cast<int64_t>(plan.preempted.size());
  // Copy-on-write copies of this plan, before any forward writes (TP followers replay them first).
  std::vector<std::pair<int, int>> copies = sched_.take_copies();
  for (auto [src, dst] : copies) kv_->copy_block(src, dst);
  drop_starved(plan, out);
  if (plan.empty()) return;

  std::vector<SeqChunk> chunks;
  chunks.reserve(plan.seqs.size());
  for (const ScheduledSeq& p : plan.seqs) {
    Sequence& s = *seqs_.at(p.id);
    s.meta.cached_tokens = std::max(s.meta.cached_tokens, p.cached);  // a prefix-cache hit at admission
    chunks.push_back(make_chunk(s, p.start, p.count));
  }
  logits_.clear();
  if (opt_.tp) opt_.tp->send(TpCommand{TpCommand::Kind::forward, 0, encode_forward(chunks, copies), {}});
  tf_->forward(chunks, logits_);

  std::vector<SampleJob> jobs;
  new_forks_.clear();
  size_t row = 0;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const ScheduledSeq& p = plan.seqs[i];
    consume_rows(*seqs_.at(p.id), p.start, p.count, logits_.data() + row * config().vocab_size, jobs);
    row += chunks[i].num_tokens - chunks[i].logits_begin;
    out.tokens_processed += p.count;
  }
  run_jobs(jobs);
  std::unordered_set<int64_t> appended = apply_results(jobs, out);
  for (const auto& [child, parent] : new_forks_) {  // the parent is still in the scheduler here
    const Sequence& c = *seqs_.at(child);
    if (!c.done) sched_.fork(parent, child, c.prompt_len, c.tokens);
  }

  // Requests that end with their prompt: score, and generate with max_new_tokens 0.
  std::vector<SeqUpdate> updates;
  for (const ScheduledSeq& p : plan.seqs) {
    Sequence& s = *seqs_.at(p.id);
    bool prompt_complete = p.start + p.count >= s.prompt_len;
    if (!s.done && prompt_complete && s.req->is_score && p.start + p.count >= static_cast<int>(s.tokens.size()))
      finish_score(s, out);
    else if (!s.done && prompt_complete && !s.req->is_score && s.req->gen.sampling_params.max_new_tokens == 0)
      finish(s, FinishReason{FinishReason::Type::length, {}, 0, {}}, out);
    const bool grew = appended.count(p.id) != 0;
    updates.push_back({p.id, grew ? 1 : 0, s.done, grew ? s.tokens.back() : -1});
  }
  sched_.update_from_output(updates);  // frees the KV of finished sequences
  reap(plan);
}

// Drops the state of every sequence that finished this step (the scheduler freed their KV).
void Engine::reap(const StepPlan& plan) {
  auto drop = [this](int64_t id) {
    auto it = seqs_.find(id);
    if (it == seqs_.end() || !it->second->done) return;
    seqs_.erase(it);
  };
  for (const ScheduledSeq& p : plan.seqs) drop(p.id);
  for (const auto& f : new_forks_) drop(f.first);
}

}  // namespace zr
