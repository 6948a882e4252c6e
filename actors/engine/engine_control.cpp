// Engine control paths beside the step loop: abort, streaming chunks, multi-turn sessions and
// cache flushing.
#include <algorithm>

#include "actors/engine/engine_state.h"

namespace zr {

// The text streamer holds back what could start a stop string (final: it was finished first, so
// nothing is held).
void Engine::emit_chunk(Sequence& s, bool final, StepOutputs& out) {
  const Request& r = *s.req;
  std::string text = s.text->take_chunk();
  size_t ids_end = static_cast<size_t>(s.num_outputs());
  if (!final && text.empty() && ids_end <= s.streamed_ids) return;
  StreamChunk c;
  c.rid = r.gen.rid;
  c.index = s.index;
  c.text = std::move(text);
  c.output_ids.assign(s.tokens.begin() + s.prompt_len + static_cast<long>(s.streamed_ids), s.tokens.end());
  if (r.gen.return_logprob)
    c.output_token_logprobs.assign(s.meta.output_token_logprobs.begin() + static_cast<long>(s.streamed_ids),
                                   s.meta.output_token_logprobs.end());
  if (r.gen.return_text_in_logprobs) fill_logprob_texts(text_tokenizer(r.gen), c.output_token_logprobs);
  s.streamed_ids = ids_end;
  out.chunks.push_back(std::move(c));
}

std::vector<std::string> Engine::abort(const AbortCall& which, StepOutputs& out) {
  auto matches = [&](const std::string& rid) {
    if (which.all) return true;
    if (!which.rid.empty()) return rid == which.rid;
    return !which.rid_prefix.empty() && rid.compare(0, which.rid_prefix.size(), which.rid_prefix) == 0;
  };
  std::vector<int64_t> victims;
  for (auto& [id, s] : seqs_) {
    const std::string& rid = s->req->is_score ? s->req->score.rid : s->req->gen.rid;
    if (!s->done && matches(rid)) victims.push_back(id);
  }
  std::sort(victims.begin(), victims.end());  // submission order (forked samples come later)
  std::vector<std::string> rids;
  for (int64_t id : victims) {
    Sequence& s = *seqs_.at(id);
    const std::string rid = s.req->is_score ? s.req->score.rid : s.req->gen.rid;
    if (std::find(rids.begin(), rids.end(), rid) == rids.end()) rids.push_back(rid);
    abort_sequence(s, out);
    seqs_.erase(id);
  }
  return rids;
}

// Removes one sample now; a request whose samples were not forked yet reports all n of them.
void Engine::abort_sequence(Sequence& s, StepOutputs& out) {
  sched_.remove(s.id);
  Request& r = *s.req;
  if (r.is_score) {
    out.aborted_scores.push_back(r.score.rid);
    active_rids_.erase(r.score.rid);
    s.done = true;
    return;
  }
  const FinishReason why{FinishReason::Type::abort, {}, 0, "aborted by request"};
  const bool unforked = !r.forked && r.gen.sampling_params.n > 1;
  finish(s, why, out);
  if (!unforked) return;
  for (int i = 1; i < r.gen.sampling_params.n; ++i) {  // samples that never started
    Sequence ghost;
    ghost.req = s.req;
    ghost.index = i;
    ghost.tokens.assign(s.tokens.begin(), s.tokens.begin() + s.prompt_len);
    ghost.prompt_len = s.prompt_len;
    ghost.text = make_text_streamer(r.gen);
    finish(ghost, why, out);
  }
}

std::string Engine::open_session() {
  auto s = std::make_shared<Session>();
  s->key = next_session_++;
  s->id = "session-" + std::to_string(s->key);
  s->last_used = Clock::now();
  sessions_[s->id] = s;
  return s->id;
}

Status Engine::close_session(const std::string& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return make_error(ErrorCode::not_found, "session_id: no session '" + id + "'");
  if (it->second->busy)
    return make_error(ErrorCode::invalid_argument, "session_id: '" + id + "' has a turn in flight (abort it first)");
  sched_.drop_cached(it->second->key);
  sessions_.erase(it);
  return {};
}

// Prepends the session's tokens to req.input_ids and marks the session busy.
Status Engine::attach_session(GenerateRequest& req, std::shared_ptr<Session>& session) {
  if (req.session_id.empty()) return {};
  auto it = sessions_.find(req.session_id);
  if (it == sessions_.end()) return make_error(ErrorCode::not_found, "session_id: no session '" + req.session_id + "'");
  if (it->second->busy)
    return make_error(ErrorCode::invalid_argument, "session_id: '" + req.session_id + "' already has a turn in flight");
  if (req.sampling_params.n != 1)
    return make_error(ErrorCode::invalid_argument, "sampling_params.n: must be 1 in a session");
  session = it->second;
  if (session->kv_version != weight_version_) sched_.drop_cached(session->key);  // KV of other weights
  const int prior = static_cast<int>(session->tokens.size());
  if (req.logprob_start_len >= 0) req.logprob_start_len += prior;  // relative to this turn's input
  std::vector<int> full = session->tokens;
  full.insert(full.end(), req.input_ids.begin(), req.input_ids.end());
  req.input_ids = std::move(full);
  session->busy = true;
  return {};
}

// A finished turn leaves its tokens (and, unless aborted, its KV) to the session.
void Engine::detach_session(Sequence& s, bool keep_kv) {
  Session& ses = *s.req->session;
  ses.busy = false;
  ses.last_used = Clock::now();
  ses.tokens = s.tokens;
  if (keep_kv) {  // the last sampled token has no KV yet
    sched_.cache(s.id, ses.key, static_cast<int>(ses.tokens.size()) - 1);
    ses.kv_version = weight_version_;
  }
}

// Only idle sessions' KV is cached (a busy one's is its running turn's).
int Engine::flush_cache() { return sched_.drop_all_cached(); }

}  // namespace zr
