// The msgpack encoders of the hot path, straight from the structs (comm/wire_writer.h): a generate
// or score call (client), its reply and stream chunks (server). Each writes the fields its
// to_json twin writes, under the same conditions, so the bytes decode to the same json
// (WireCodec.DirectEncodersMatchTheJsonForm); docs/protocol.md describes the fields.
#include <cmath>
#include <map>

#include "comm/json_codec.h"
#include "comm/wire_codec.h"
#include "comm/wire_sampling.h"
#include "comm/wire_writer.h"

namespace zr::wire {

using detail::MsgWriter;

namespace {

void put_ids(MsgWriter& w, const std::vector<int>& ids, const EncodeOptions& opt) {
  opt.ids_as_bin ? w.bin_ids(ids) : w.ints(ids);
}

// The fields that differ from SamplingParams' defaults (comm/wire_sampling.h lists them).
void put_sampling(MsgWriter& w, MsgWriter::Map& parent, const SamplingParams& p) {
  bool any = false;
  for_each_sampling_field(p, [&](const char*, const auto&) { any = true; });
  if (!any) return;
  w.key(parent, "sampling_params");
  MsgWriter::Map m = w.begin_map();
  for_each_sampling_field(p, [&](const char* k, const auto& v) {
    using T = std::decay_t<decltype(v)>;
    w.key(m, k);
    if constexpr (std::is_same_v<T, int>) w.i64(v);
    else if constexpr (std::is_same_v<T, double>) w.f64(v);
    else if constexpr (std::is_same_v<T, bool>) w.boolean(v);
    else if constexpr (std::is_same_v<T, uint64_t>) w.u64(v);
    else if constexpr (std::is_same_v<T, std::vector<std::string>>) w.strs(v);
    else if constexpr (std::is_same_v<T, std::vector<int>>) w.ints(v);
    else {
      std::map<std::string, double> bias;  // one entry per id, the last one winning, as in the json form
      for (auto [id, b] : v) bias[std::to_string(id)] = json_float(b);
      MsgWriter::Map b = w.begin_map();
      for (const auto& [bk, bv] : bias) w.key(b, bk).f64(bv);
      w.end_map(b);
    }
  });
  w.end_map(m);
}

void put_processors(MsgWriter& w, MsgWriter::Map& parent, const LogitProcessors& lp) {
  if (!lp.allowed_token_ids && lp.disallowed_token_ids.empty() && !lp.temperature_schedule) return;
  MsgWriter::Map m = w.key(parent, "logit_processors").begin_map();
  if (lp.allowed_token_ids) w.key(m, "allowed_token_ids").ints(*lp.allowed_token_ids);
  if (!lp.disallowed_token_ids.empty()) w.key(m, "disallowed_token_ids").ints(lp.disallowed_token_ids);
  if (const auto& t = lp.temperature_schedule) {
    MsgWriter::Map s = w.key(m, "temperature_schedule").begin_map();
    w.key(s, "initial").f64(json_float(t->initial));
    w.key(s, "final").f64(json_float(t->final));
    w.key(s, "warmup_tokens").i64(t->warmup_tokens);
    w.end_map(s);
  }
  w.end_map(m);
}

const char* logprob_mode_name(LogprobMode m) {
  return m == LogprobMode::raw ? "raw" : m == LogprobMode::processed ? "processed" : "default";
}

// The members of one request (to_json(GenerateRequest)) into the open map m.
void put_request(MsgWriter& w, MsgWriter::Map& m, const GenerateRequest& r, const EncodeOptions& opt) {
  w.key(m, "rid").str(r.rid);
  if (r.text) w.key(m, "text").str(*r.text);
  if (!r.input_ids.empty() || !r.text) put_ids(w.key(m, "input_ids"), r.input_ids, opt);
  put_sampling(w, m, r.sampling_params);
  put_processors(w, m, r.sampling_params.processors);
  if (r.return_logprob) w.key(m, "return_logprob").boolean(true);
  if (r.logprob_start_len != -1) w.key(m, "logprob_start_len").i64(r.logprob_start_len);
  if (r.top_logprobs_num != 0) w.key(m, "top_logprobs_num").i64(r.top_logprobs_num);
  if (!r.token_ids_logprob.empty()) w.key(m, "token_ids_logprob").ints(r.token_ids_logprob);
  if (r.logprob_mode != LogprobMode::default_mode) w.key(m, "logprob_mode").str(logprob_mode_name(r.logprob_mode));
  if (r.stream) w.key(m, "stream").boolean(true);
  if (!r.session_id.empty()) w.key(m, "session_id").str(r.session_id);
  if (!r.detokenize) w.key(m, "detokenize").boolean(false);
  if (r.return_text_in_logprobs) w.key(m, "return_text_in_logprobs").boolean(true);
}

void put_request(MsgWriter& w, MsgWriter::Map& m, const ScoreRequest& r, const EncodeOptions& opt) {
  w.key(m, "rid").str(r.rid);
  put_ids(w.key(m, "input_ids"), r.input_ids, opt);
  put_ids(w.key(m, "completion_ids"), r.completion_ids, opt);
  if (r.temperature != 1.0f) w.key(m, "temperature").f64(json_float(r.temperature));
  if (r.top_logprobs_num != 0) w.key(m, "top_logprobs_num").i64(r.top_logprobs_num);
}

// One request: its fields beside req_id; otherwise {req_id, batch: [...]} (call_json).
template <class Call>
std::string encode_call(const Call& c, const EncodeOptions& opt) {
  MsgWriter w;
  MsgWriter::Map m = w.begin_map();
  w.key(m, "req_id").u64(c.req_id);
  if (c.batch.size() == 1) {
    put_request(w, m, c.batch[0], opt);
  } else {
    w.key(m, "batch").array(c.batch.size());
    for (const auto& r : c.batch) {
      MsgWriter::Map e = w.begin_map();
      put_request(w, e, r, opt);
      w.end_map(e);
    }
  }
  w.end_map(m);
  return w.take();
}

// [logprob|null, token_id, text|null]; a non-finite logprob is null.
void put_token_lp(MsgWriter& w, const TokenLogprob& t) {
  w.array(3);
  t.logprob&& std::isfinite(*t.logprob) ? w.f64(json_float(*t.logprob)) : w.nil();
  w.i64(t.token_id);
  t.text ? w.str(*t.text) : w.nil();
}

void put_lp_list(MsgWriter& w, const std::vector<TokenLogprob>& v) {
  w.array(v.size());
  for (const auto& t : v) put_token_lp(w, t);
}

void put_lp_lists(MsgWriter& w, const std::vector<std::vector<TokenLogprob>>& v) {
  w.array(v.size());
  for (const auto& l : v) put_lp_list(w, l);
}

void put_finish_reason(MsgWriter& w, const FinishReason& f) {
  if (f.type == FinishReason::Type::none) {
    w.nil();
    return;
  }
  MsgWriter::Map m = w.begin_map();
  switch (f.type) {
    case FinishReason::Type::stop:
      w.key(m, "type").str("stop");
      w.key(m, "matched");
      if (std::holds_alternative<int>(f.matched)) w.i64(std::get<int>(f.matched));
      else if (std::holds_alternative<std::string>(f.matched)) w.str(std::get<std::string>(f.matched));
      else w.nil();
      break;
    case FinishReason::Type::length:
      w.key(m, "type").str("length");
      w.key(m, "length").i64(f.length);
      break;
    default:
      w.key(m, "type").str("abort");
      w.key(m, "message").str(f.message);
      break;
  }
  w.end_map(m);
}

void put_meta_info(MsgWriter& w, const SampleOutput& o) {
  const MetaInfo& mi = o.meta_info;
  MsgWriter::Map m = w.begin_map();
  w.key(m, "id").str(mi.id);
  put_finish_reason(w.key(m, "finish_reason"), mi.finish_reason);
  w.key(m, "prompt_tokens").i64(mi.prompt_tokens);
  w.key(m, "completion_tokens").i64(mi.completion_tokens);
  w.key(m, "cached_tokens").i64(mi.cached_tokens);
  w.key(m, "weight_version").i64(mi.weight_version);
  w.key(m, "e2e_latency").f64(mi.e2e_latency);
  w.key(m, "weight_version_spans").array(mi.weight_version_spans.size());
  for (const auto& s : mi.weight_version_spans) w.array(2).i64(s.first_token_index).i64(s.version);
  if (o.return_logprob) {
    put_lp_list(w.key(m, "output_token_logprobs"), mi.output_token_logprobs);
    if (o.has_top) put_lp_lists(w.key(m, "output_top_logprobs"), mi.output_top_logprobs);
    if (o.has_ids) put_lp_lists(w.key(m, "output_token_ids_logprobs"), mi.output_token_ids_logprobs);
    if (o.has_input_logprobs) {
      put_lp_list(w.key(m, "input_token_logprobs"), mi.input_token_logprobs);
      if (o.has_top) put_lp_lists(w.key(m, "input_top_logprobs"), mi.input_top_logprobs);
      if (o.has_ids) put_lp_lists(w.key(m, "input_token_ids_logprobs"), mi.input_token_ids_logprobs);
    }
  }
  w.end_map(m);
}

// comm/json_codec's to_json(SampleOutput).
void put_sample_output(MsgWriter& w, const SampleOutput& o) {
  MsgWriter::Map m = w.begin_map();
  w.key(m, "rid").str(o.rid);
  w.key(m, "index").i64(o.index);
  w.key(m, "text").str(o.text);
  w.key(m, "output_ids").ints(o.output_ids);
  put_meta_info(w.key(m, "meta_info"), o);
  w.end_map(m);
}

// null stands for a non-finite logprob.
void put_score_lp(MsgWriter& w, float v) { std::isfinite(v) ? w.f64(json_float(v)) : w.nil(); }

// comm/json_codec's to_json(ScoreOutput).
void put_score_output(MsgWriter& w, const ScoreOutput& o) {
  MsgWriter::Map m = w.begin_map();
  w.key(m, "rid").str(o.rid);
  w.key(m, "logprobs").array(o.logprobs.size());
  for (float v : o.logprobs) put_score_lp(w, v);
  w.key(m, "weight_version").i64(o.weight_version);
  if (!o.top_logprobs.empty()) {
    w.key(m, "top_logprobs").array(o.top_logprobs.size());
    for (const auto& row : o.top_logprobs) {
      w.array(row.size());
      for (auto [id, lp] : row) {
        w.array(2);
        put_score_lp(w, lp);
        w.i64(id);
      }
    }
  }
  w.end_map(m);
}

template <class Reply, class Put>
std::string encode_reply(const Reply& r, Put put) {
  MsgWriter w;
  MsgWriter::Map m = w.begin_map();
  w.key(m, "req_id").u64(r.req_id);
  w.key(m, "outputs").array(r.outputs.size());
  for (const auto& o : r.outputs) put(w, o);
  w.end_map(m);
  return w.take();
}

}  // namespace

std::string encode(const GenerateCall& c, const EncodeOptions& opt) { return encode_call(c, opt); }
std::string encode(const ScoreCall& c, const EncodeOptions& opt) { return encode_call(c, opt); }
std::string encode(const GenerateReply& r) { return encode_reply(r, put_sample_output); }
std::string encode(const ScoreReply& r) { return encode_reply(r, put_score_output); }

std::string encode_chunk(uint64_t req_id, const StreamChunk& c) {
  MsgWriter w;
  MsgWriter::Map m = w.begin_map();
  w.key(m, "req_id").u64(req_id);
  w.key(m, "rid").str(c.rid);
  w.key(m, "index").i64(c.index);
  w.key(m, "text").str(c.text);
  w.key(m, "output_ids").ints(c.output_ids);
  put_lp_list(w.key(m, "output_token_logprobs"), c.output_token_logprobs);
  w.end_map(m);
  return w.take();
}

}  // namespace zr::wire
