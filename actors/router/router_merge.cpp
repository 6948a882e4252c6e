// A routed sample's output put together: from what the router holds (a sample that finished on a
// dead engine, or ends here aborted), or the partial output of dead engines followed by a
// continuation's, with the text rebuilt across the seam when the router has the tokenizer.
#include <algorithm>

#include "actors/router/router.h"
#include "actors/router/router_state.h"

namespace zr {

using router_detail::add_span;
using router_detail::append;
using router_detail::slice;

// A sample's output from what the router holds (no engine reply): it finished on a dead engine,
// or ends here aborted. Logprob lists the router never received are empty.
SampleOutput Router::local_output(Req& r, int i, FinishReason why, TimePoint now) {
  Sample& s = r.samples[i];
  SampleOutput o;
  o.rid = r.gen.rid;
  o.index = i;
  o.output_ids = s.ids;
  if (s.cut >= 0 && s.cut < static_cast<int>(o.output_ids.size())) o.output_ids.resize(s.cut);
  const int n = static_cast<int>(o.output_ids.size());
  MetaInfo& m = o.meta_info;
  o.return_logprob = r.gen.return_logprob;
  if (o.return_logprob) m.output_token_logprobs = slice(s.lps, 0, n);
  o.has_top = o.return_logprob && r.gen.top_logprobs_num > 0;
  o.has_ids = o.return_logprob && !r.gen.token_ids_logprob.empty();
  if (o.has_top) m.output_top_logprobs.resize(n);
  if (o.has_ids) m.output_token_ids_logprobs.resize(n);
  o.has_input_logprobs = o.return_logprob && r.gen.logprob_start_len >= 0;
  m.weight_version_spans = s.spans;
  int64_t version = s.spans.empty() ? 0 : s.spans.back().version;
  if (auto j = jobs_.find(s.job); j != jobs_.end()) version = engines_[j->second->engine].weight_version;
  if (n > s.base) add_span(m.weight_version_spans, s.base, version);
  if (s.tracker) rebuild_text(r, s, o, why);
  else o.text = s.text;
  if (why.type == FinishReason::Type::length) why.length = static_cast<int>(o.output_ids.size());
  m.finish_reason = std::move(why);
  m.id = r.gen.rid;
  m.prompt_tokens = static_cast<int>(!r.prompt.empty() ? r.prompt.size() : r.gen.input_ids.size());
  m.completion_tokens = static_cast<int>(o.output_ids.size());
  m.weight_version = m.weight_version_spans.empty() ? version : m.weight_version_spans.back().version;
  m.e2e_latency = std::chrono::duration<double>(now - r.start).count();
  return o;
}

// The text of a re-routed sample from all its ids, as an engine builds it. A stop string that
// completed across the seam (no engine could see it) ends the sample there: ids, per-token lists
// and spans are cut after it and the finish reason is that stop string.
void Router::rebuild_text(const Req& r, Sample& s, SampleOutput& o, FinishReason& why) const {
  for (int t = static_cast<int>(s.tracker->consumed());
       t < static_cast<int>(o.output_ids.size()) && !s.tracker->matched(); ++t)
    if (s.tracker->push(o.output_ids[t], is_stop_token(r, o.output_ids[t]))) {
      s.cut = t + 1;
      break;
    }
  if (s.tracker->matched()) {
    MetaInfo& m = o.meta_info;
    const size_t n = std::min(static_cast<size_t>(s.cut >= 0 ? s.cut : 0), o.output_ids.size());
    o.output_ids.resize(n);
    if (m.output_token_logprobs.size() > n) m.output_token_logprobs.resize(n);
    if (m.output_top_logprobs.size() > n) m.output_top_logprobs.resize(n);
    if (m.output_token_ids_logprobs.size() > n) m.output_token_ids_logprobs.resize(n);
    while (m.weight_version_spans.size() > 1 && m.weight_version_spans.back().first_token_index >= static_cast<int>(n))
      m.weight_version_spans.pop_back();
    why = FinishReason{FinishReason::Type::stop, *s.tracker->matched(), 0, {}};
  }
  s.tracker->finish();
  o.text = s.tracker->text();
}

// Partial output (ids[0, base), from the dead engines) + the continuation's.
SampleOutput Router::merge_continuation(Req& r, int i, SampleOutput cont, TimePoint now) {
  Sample& s = r.samples[i];
  const int b = s.base;
  const MetaInfo& c = cont.meta_info;
  const int p = r.prompt.empty() ? c.prompt_tokens - b : static_cast<int>(r.prompt.size());
  SampleOutput o;
  o.rid = r.gen.rid;
  o.index = i;
  o.return_logprob = cont.return_logprob;
  o.has_top = cont.has_top;
  o.has_ids = cont.has_ids;
  o.has_input_logprobs = r.gen.return_logprob && r.gen.logprob_start_len >= 0;
  MetaInfo& m = o.meta_info;
  o.output_ids = slice(s.ids, 0, b);
  append(o.output_ids, cont.output_ids);
  if (o.return_logprob) {
    m.output_token_logprobs = slice(s.lps, 0, b);
    append(m.output_token_logprobs, c.output_token_logprobs);
  }
  // The partial tokens' top / token-id lists: the continuation's prompt lists at their positions.
  const int lc = s.cont_logprob_start;
  auto partial_lists = [&](const std::vector<std::vector<TokenLogprob>>& in) {
    return lc < 0 ? std::vector<std::vector<TokenLogprob>>(b) : slice(in, p - lc, b);
  };
  if (o.has_top) {
    m.output_top_logprobs = partial_lists(c.input_top_logprobs);
    append(m.output_top_logprobs, c.output_top_logprobs);
  }
  if (o.has_ids) {
    m.output_token_ids_logprobs = partial_lists(c.input_token_ids_logprobs);
    append(m.output_token_ids_logprobs, c.output_token_ids_logprobs);
  }
  if (o.has_input_logprobs) {
    const int count = p - r.gen.logprob_start_len;
    m.input_token_logprobs = slice(c.input_token_logprobs, 0, count);
    if (!c.input_top_logprobs.empty()) m.input_top_logprobs = slice(c.input_top_logprobs, 0, count);
    if (!c.input_token_ids_logprobs.empty()) m.input_token_ids_logprobs = slice(c.input_token_ids_logprobs, 0, count);
  }
  m.weight_version_spans = s.spans;
  for (const WeightVersionSpan& sp : c.weight_version_spans)
    add_span(m.weight_version_spans, sp.first_token_index + b, sp.version);
  FinishReason why = s.inferred ? *s.inferred : c.finish_reason;
  if (s.tracker) rebuild_text(r, s, o, why);
  else o.text = s.text.substr(0, s.text_base) + cont.text;
  const int n = static_cast<int>(o.output_ids.size());
  if (why.type == FinishReason::Type::length) why.length = n;
  m.finish_reason = std::move(why);
  m.id = r.gen.rid;
  m.prompt_tokens = p;
  m.completion_tokens = n;
  m.cached_tokens = std::min(c.cached_tokens, p);
  m.weight_version = c.weight_version;
  m.e2e_latency = std::chrono::duration<double>(now - r.start).count();
  return o;
}

}  // namespace zr
