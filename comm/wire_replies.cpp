// Reply bodies of the wire codec: encoders (server side) and lenient decoders (client side).
// SampleOutput and ScoreOutput use comm/json_codec's JSON form, the one the CLI writes.
#include <cmath>
#include <limits>

#include "comm/json_codec.h"
#include "comm/wire_codec.h"
#include "comm/wire_fields.h"

namespace zr::wire {

using detail::field_error;
using detail::FieldReader;

namespace {

std::string at(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

json token_lp_json(const TokenLogprob& t) {
  json lp = t.logprob && std::isfinite(*t.logprob) ? json(json_float(*t.logprob)) : json(nullptr);
  return json::array({lp, t.token_id, t.text ? json(*t.text) : json(nullptr)});
}

// [logprob|null, token_id, text|null]
Status read_token_lp(const json& v, const std::string& path, TokenLogprob& out) {
  if (!v.is_array() || v.size() < 2) return field_error(path, "expected [logprob, token_id, text]");
  if (!v[0].is_null()) {
    float lp = 0;
    ZR_RETURN_IF_ERROR(detail::read_value_at(
        v[0], [&] { return at(path, 0); }, lp));
    out.logprob = lp;
  }
  ZR_RETURN_IF_ERROR(detail::read_value_at(
      v[1], [&] { return at(path, 1); }, out.token_id));
  if (v.size() > 2 && !v[2].is_null()) {
    std::string text;
    ZR_RETURN_IF_ERROR(detail::read_value_at(
        v[2], [&] { return at(path, 2); }, text));
    out.text = std::move(text);
  }
  return {};
}

Status read_lp_list(const json& v, const std::string& path, std::vector<TokenLogprob>& out) {
  if (!v.is_array()) return field_error(path, "expected an array");
  out.resize(v.size());
  // The element's path is built only for the message of a wrong element (read it again with it).
  for (size_t i = 0; i < v.size(); ++i)
    if (!read_token_lp(v[i], path, out[i]).ok()) return read_token_lp(v[i], at(path, i), out[i]);
  return {};
}

Status read_lp_lists(const json& v, const std::string& path, std::vector<std::vector<TokenLogprob>>& out) {
  if (!v.is_array()) return field_error(path, "expected an array");
  out.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) ZR_RETURN_IF_ERROR(read_lp_list(v[i], at(path, i), out[i]));
  return {};
}

Status read_finish_reason(const json& v, const std::string& path, FinishReason& out) {
  FieldReader f(v, path + ".", false);
  std::string type;
  f.get("type", type);
  if (!f.ok()) return f.finish();
  if (type == "stop") {
    out.type = FinishReason::Type::stop;
    if (const json* m = f.take("matched")) {
      if (m->is_string()) out.matched = m->get<std::string>();
      else {
        int id = 0;
        ZR_RETURN_IF_ERROR(detail::read_value(*m, f.path("matched"), id));
        out.matched = id;
      }
    }
  } else if (type == "length") {
    out.type = FinishReason::Type::length;
    f.get("length", out.length);
  } else if (type == "abort") {
    out.type = FinishReason::Type::abort;
    f.get("message", out.message);
  } else {
    f.fail("type", "expected 'stop', 'length' or 'abort'");
  }
  return f.finish();
}

Status read_spans(const json& v, const std::string& path, std::vector<WeightVersionSpan>& out) {
  if (!v.is_array()) return field_error(path, "expected an array of [first_token_index, version]");
  out.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_array() || v[i].size() != 2) return field_error(at(path, i), "expected [first_token_index, version]");
    ZR_RETURN_IF_ERROR(detail::read_value(v[i][0], at(at(path, i), 0), out[i].first_token_index));
    ZR_RETURN_IF_ERROR(detail::read_value(v[i][1], at(at(path, i), 1), out[i].version));
  }
  return {};
}

// Reads a logprob field with `read`; returns whether it was present.
template <class T, class Read>
bool read_optional(FieldReader& f, const char* name, T& out, Read read) {
  const json* v = f.take(name);
  if (v) f.fail_status(read(*v, f.path(name), out));
  return v != nullptr;
}

Status read_meta_info(const json& v, const std::string& path, SampleOutput& o) {
  MetaInfo& m = o.meta_info;
  FieldReader f(v, path + ".", false);
  f.get("id", m.id);
  if (const json* fr = f.take("finish_reason"))
    f.fail_status(read_finish_reason(*fr, f.path("finish_reason"), m.finish_reason));
  f.get("prompt_tokens", m.prompt_tokens);
  f.get("completion_tokens", m.completion_tokens);
  f.get("cached_tokens", m.cached_tokens);
  f.get("weight_version", m.weight_version);
  f.get("e2e_latency", m.e2e_latency);
  read_optional(f, "weight_version_spans", m.weight_version_spans, read_spans);
  o.return_logprob = read_optional(f, "output_token_logprobs", m.output_token_logprobs, read_lp_list);
  o.has_top = read_optional(f, "output_top_logprobs", m.output_top_logprobs, read_lp_lists);
  o.has_ids = read_optional(f, "output_token_ids_logprobs", m.output_token_ids_logprobs, read_lp_lists);
  o.has_input_logprobs = read_optional(f, "input_token_logprobs", m.input_token_logprobs, read_lp_list);
  read_optional(f, "input_top_logprobs", m.input_top_logprobs, read_lp_lists);
  read_optional(f, "input_token_ids_logprobs", m.input_token_ids_logprobs, read_lp_lists);
  return f.finish();
}

Status read_sample_output(const json& j, const std::string& path, SampleOutput& o) {
  FieldReader f(j, path.empty() ? "" : path + ".", false);
  f.get("rid", o.rid);
  f.get("index", o.index);
  f.get("text", o.text);
  f.get("output_ids", o.output_ids);
  if (const json* m = f.take("meta_info")) f.fail_status(read_meta_info(*m, f.path("meta_info"), o));
  return f.finish();
}

// null stands for a non-finite logprob (-inf: the token was masked).
Status read_score_lp(const json& v, const std::string& path, float& out) {
  if (v.is_null()) {
    out = -std::numeric_limits<float>::infinity();
    return {};
  }
  return detail::read_value(v, path, out);
}

Status read_score_output(const json& j, const std::string& path, ScoreOutput& o) {
  FieldReader f(j, path.empty() ? "" : path + ".", false);
  f.get("rid", o.rid);
  f.get("weight_version", o.weight_version);
  if (const json* v = f.take("logprobs")) {
    if (!v->is_array()) return field_error(f.path("logprobs"), "expected an array");
    o.logprobs.resize(v->size());
    for (size_t i = 0; i < v->size(); ++i)
      ZR_RETURN_IF_ERROR(read_score_lp((*v)[i], at(f.path("logprobs"), i), o.logprobs[i]));
  }
  if (const json* v = f.take("top_logprobs")) {
    const std::string p = f.path("top_logprobs");
    if (!v->is_array()) return field_error(p, "expected an array");
    o.top_logprobs.resize(v->size());
    for (size_t i = 0; i < v->size(); ++i) {
      const json& row = (*v)[i];
      if (!row.is_array()) return field_error(at(p, i), "expected an array of [logprob, token_id]");
      for (size_t k = 0; k < row.size(); ++k) {
        const std::string e = at(at(p, i), k);
        if (!row[k].is_array() || row[k].size() != 2) return field_error(e, "expected [logprob, token_id]");
        std::pair<int, float> pr;
        ZR_RETURN_IF_ERROR(read_score_lp(row[k][0], at(e, 0), pr.second));
        ZR_RETURN_IF_ERROR(detail::read_value(row[k][1], at(e, 1), pr.first));
        o.top_logprobs[i].push_back(pr);
      }
    }
  }
  return f.finish();
}

template <class T, class Read>
Status read_outputs(FieldReader& f, std::vector<T>& out, Read read) {
  const json* v = f.take("outputs");
  if (!v) return f.finish();
  if (!v->is_array()) return field_error("outputs", "expected an array");
  out.resize(v->size());
  for (size_t i = 0; i < v->size(); ++i) ZR_RETURN_IF_ERROR(read((*v)[i], at("outputs", i), out[i]));
  return f.finish();
}

template <class T>
Result<T> done(const FieldReader& f, T value) {
  Status st = f.finish();
  if (!st.ok()) return st;
  return value;
}

}  // namespace

// ---- encoders ----------------------------------------------------------------------------------

json to_json(const GenerateReply& r) {
  json outs = json::array();
  for (const auto& o : r.outputs) outs.push_back(zr::to_json(o));
  return {{"req_id", r.req_id}, {"outputs", std::move(outs)}};
}

json chunk_to_json(uint64_t req_id, const StreamChunk& c) {
  json lps = json::array();
  for (const auto& t : c.output_token_logprobs) lps.push_back(token_lp_json(t));
  return {{"req_id", req_id},           {"rid", c.rid},
          {"index", c.index},           {"text", c.text},
          {"output_ids", c.output_ids}, {"output_token_logprobs", std::move(lps)}};
}

json to_json(const ScoreReply& r) {
  json outs = json::array();
  for (const auto& o : r.outputs) outs.push_back(zr::to_json(o));
  return {{"req_id", r.req_id}, {"outputs", std::move(outs)}};
}

json to_json(const AbortReply& r) { return {{"req_id", r.req_id}, {"aborted", r.aborted}}; }

json to_json(const LoadReply& r) {
  return {{"req_id", r.req_id},
          {"waiting", r.waiting},
          {"running", r.running},
          {"kv_blocks_used", r.kv_blocks_used},
          {"kv_blocks_total", r.kv_blocks_total},
          {"tokens_per_s", r.tokens_per_s}};
}

json to_json(const HealthReply& r) {
  return {{"req_id", r.req_id}, {"status", r.status}, {"weight_version", r.weight_version}};
}

json to_json(const ModelInfoReply& r) {
  return {{"req_id", r.req_id},
          {"architecture", r.architecture},
          {"vocab_size", r.vocab_size},
          {"context_length", r.context_length},
          {"bos_token_id", r.bos_token_id},
          {"eos_token_ids", r.eos_token_ids},
          {"pad_token_id", r.pad_token_id},
          {"weight_version", r.weight_version},
          {"model_path", r.model_path},
          {"compute", r.compute},
          {"kv_dtype", r.kv_dtype},
          {"weights_roots", r.weights_roots}};
}

json to_json(const ErrorReply& r) { return {{"req_id", r.req_id}, {"code", r.code}, {"message", r.message}}; }

json simple_reply_to_json(std::string_view op, const SimpleReply& r) {
  json j = {{"req_id", r.req_id}};
  if (op == "flush_cache") j["freed_blocks"] = r.value;
  else if (op == "open_session") j["session_id"] = r.session_id;
  return j;
}

json to_json(const EnginesReply& r) {
  json engines = json::array();
  for (const EngineState& e : r.engines)
    engines.push_back({{"index", e.index},
                       {"endpoint", e.endpoint},
                       {"alive", e.alive},
                       {"updating", e.updating},
                       {"status", e.status},
                       {"in_flight", e.in_flight},
                       {"in_flight_samples", e.in_flight_samples},
                       {"waiting", e.waiting},
                       {"running", e.running},
                       {"weight_version", e.weight_version},
                       {"rerouted", e.rerouted},
                       {"finished", e.finished},
                       {"sessions", e.sessions}});
  return {{"req_id", r.req_id}, {"engines", std::move(engines)}};
}

json to_json(const TokenizeReply& r) { return {{"req_id", r.req_id}, {"input_ids", r.input_ids}}; }
json to_json(const DetokenizeReply& r) { return {{"req_id", r.req_id}, {"text", r.text}}; }

std::string encode(const AbortReply& r) { return pack_body(to_json(r)); }
std::string encode(const LoadReply& r) { return pack_body(to_json(r)); }
std::string encode(const HealthReply& r) { return pack_body(to_json(r)); }
std::string encode(const ModelInfoReply& r) { return pack_body(to_json(r)); }
std::string encode(const ErrorReply& r) { return pack_body(to_json(r)); }
std::string encode_simple_reply(std::string_view op, const SimpleReply& r) {
  return pack_body(simple_reply_to_json(op, r));
}
std::string encode(const EnginesReply& r) { return pack_body(to_json(r)); }
std::string encode(const TokenizeReply& r) { return pack_body(to_json(r)); }
std::string encode(const DetokenizeReply& r) { return pack_body(to_json(r)); }

std::string error_body(uint64_t req_id, const Status& st) {
  return encode(ErrorReply{req_id, error_code_name(st.code), st.message});
}

// ---- decoders ----------------------------------------------------------------------------------

Result<SampleOutput> sample_output_from_json(const json& j) {
  SampleOutput o;
  ZR_RETURN_IF_ERROR(read_sample_output(j, "", o));
  return o;
}

Result<ScoreOutput> score_output_from_json(const json& j) {
  ScoreOutput o;
  ZR_RETURN_IF_ERROR(read_score_output(j, "", o));
  return o;
}

Result<GenerateReply> generate_reply_from_json(const json& j) {
  GenerateReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  ZR_RETURN_IF_ERROR(read_outputs(f, r.outputs, read_sample_output));
  return r;
}

Result<ScoreReply> score_reply_from_json(const json& j) {
  ScoreReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  ZR_RETURN_IF_ERROR(read_outputs(f, r.outputs, read_score_output));
  return r;
}

Result<StreamChunk> stream_chunk_from_json(const json& j) {
  StreamChunk c;
  FieldReader f(j, "", false);
  f.get("rid", c.rid);
  f.get("index", c.index);
  f.get("text", c.text);
  f.get("output_ids", c.output_ids);
  if (const json* v = f.take("output_token_logprobs"))
    f.fail_status(read_lp_list(*v, "output_token_logprobs", c.output_token_logprobs));
  return done(f, std::move(c));
}

Result<AbortReply> abort_reply_from_json(const json& j) {
  AbortReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("aborted", r.aborted);
  return done(f, std::move(r));
}

Result<LoadReply> load_reply_from_json(const json& j) {
  LoadReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("waiting", r.waiting);
  f.get("running", r.running);
  f.get("kv_blocks_used", r.kv_blocks_used);
  f.get("kv_blocks_total", r.kv_blocks_total);
  f.get("tokens_per_s", r.tokens_per_s);
  return done(f, std::move(r));
}

Result<HealthReply> health_reply_from_json(const json& j) {
  HealthReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("status", r.status);
  f.get("weight_version", r.weight_version);
  return done(f, std::move(r));
}

Result<ModelInfoReply> model_info_reply_from_json(const json& j) {
  ModelInfoReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("architecture", r.architecture);
  f.get("vocab_size", r.vocab_size);
  f.get("context_length", r.context_length);
  f.get("bos_token_id", r.bos_token_id);
  f.get("eos_token_ids", r.eos_token_ids);
  f.get("pad_token_id", r.pad_token_id);
  f.get("weight_version", r.weight_version);
  f.get("model_path", r.model_path);
  f.get("compute", r.compute);
  f.get("kv_dtype", r.kv_dtype);
  f.get("weights_roots", r.weights_roots);
  return done(f, std::move(r));
}

Result<SimpleReply> simple_reply_from_json(std::string_view op, const json& j) {
  SimpleReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  if (op == "flush_cache") f.get("freed_blocks", r.value);
  else if (op == "open_session") f.get("session_id", r.session_id);
  return done(f, std::move(r));
}

Result<ErrorReply> error_reply_from_json(const json& j) {
  ErrorReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("code", r.code);
  f.get("message", r.message);
  return done(f, std::move(r));
}

Result<TokenizeReply> tokenize_reply_from_json(const json& j) {
  TokenizeReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("input_ids", r.input_ids);
  return done(f, std::move(r));
}

Result<DetokenizeReply> detokenize_reply_from_json(const json& j) {
  DetokenizeReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("text", r.text);
  return done(f, std::move(r));
}

Result<EnginesReply> engines_reply_from_json(const json& j) {
  EnginesReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  if (const json* v = f.take("engines")) {
    if (!v->is_array()) return field_error("engines", "expected an array");
    r.engines.resize(v->size());
    for (size_t i = 0; i < v->size(); ++i) {
      EngineState& e = r.engines[i];
      FieldReader g((*v)[i], at("engines", i) + ".", false);
      g.get("index", e.index);
      g.get("endpoint", e.endpoint);
      g.get("alive", e.alive);
      g.get("updating", e.updating);
      g.get("status", e.status);
      g.get("in_flight", e.in_flight);
      g.get("in_flight_samples", e.in_flight_samples);
      g.get("waiting", e.waiting);
      g.get("running", e.running);
      g.get("weight_version", e.weight_version);
      g.get("rerouted", e.rerouted);
      g.get("finished", e.finished);
      g.get("sessions", e.sessions);
      ZR_RETURN_IF_ERROR(g.finish());
    }
  }
  return done(f, std::move(r));
}

Status status_from_error_json(const json& j) {
  auto r = error_reply_from_json(j);
  if (!r.ok()) return make_error(ErrorCode::bad_message, "error reply: " + r.status().message);
  auto code = error_code_from_name(r->code);
  if (!code || *code == ErrorCode::ok) return make_error(ErrorCode::internal, "(code '" + r->code + "') " + r->message);
  return make_error(*code, r->message);
}

}  // namespace zr::wire
