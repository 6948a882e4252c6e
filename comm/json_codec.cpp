#include "comm/json_codec.h"

#include "comm/call_limits.h"
#include "comm/wire_fields.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <random>
#include <sstream>

namespace zr {

using nlohmann::json;
using wire::detail::FieldReader;
using wire::detail::read_value;

namespace {

// "rl_action_mask:1,2,3" or "disallowed_tokens:4,5".
Status parse_custom_processor(const std::string& s, LogitProcessors& lp) {
  const std::string field = "custom_logit_processor";
  size_t colon = s.find(':');
  if (colon == std::string::npos)
    return make_error(ErrorCode::invalid_argument,
                      field + ": expected 'rl_action_mask:ids' or 'disallowed_tokens:ids'");
  std::string kind = s.substr(0, colon);
  std::vector<int> ids;
  std::stringstream ss(s.substr(colon + 1));
  for (std::string item; std::getline(ss, item, ',');) {
    int v = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (ec != std::errc() || p != item.data() + item.size())
      return make_error(ErrorCode::invalid_argument, field + ": '" + item + "' is not a token id");
    ids.push_back(v);
  }
  if (kind == "rl_action_mask") lp.allowed_token_ids = ids;
  else if (kind == "disallowed_tokens")
    lp.disallowed_token_ids.insert(lp.disallowed_token_ids.end(), ids.begin(), ids.end());
  else return make_error(ErrorCode::invalid_argument, field + ": unknown processor '" + kind + "'");
  return {};
}

Status parse_processors(const json& j, LogitProcessors& lp) {
  FieldReader f(j, "logit_processors.", true);
  if (const json* v = f.take("allowed_token_ids")) {
    std::vector<int> ids;
    f.fail_status(read_value(*v, f.path("allowed_token_ids"), ids));
    lp.allowed_token_ids = ids;
  }
  f.get("disallowed_token_ids", lp.disallowed_token_ids);
  if (const json* v = f.take("temperature_schedule")) {
    FieldReader t(*v, "logit_processors.temperature_schedule.", true);
    TemperatureSchedule s;
    t.get("initial", s.initial);
    t.get("final", s.final);
    t.get("warmup_tokens", s.warmup_tokens);
    f.fail_status(t.finish());
    lp.temperature_schedule = s;
  }
  return f.finish();
}

Status parse_stop(FieldReader& f, SamplingParams& p) {
  const json* stop = f.take("stop");
  if (!stop) return {};
  const json& v = *stop;
  if (v.is_string()) p.stop = {v.get<std::string>()};
  else if (v.is_array()) {
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string())
        return make_error(ErrorCode::invalid_argument,
                          "sampling_params.stop[" + std::to_string(i) + "]: expected a string");
      p.stop.push_back(v[i].get<std::string>());
    }
  } else
    return make_error(ErrorCode::invalid_argument, "sampling_params.stop: expected a string or an array of strings");
  return {};
}

Status parse_logit_bias(FieldReader& f, SamplingParams& p) {
  const json* bias = f.take("logit_bias");
  if (!bias) return {};
  const json& v = *bias;
  if (!v.is_object())
    return make_error(ErrorCode::invalid_argument,
                      "sampling_params.logit_bias: expected an object {\"token_id\": bias}");
  for (auto it = v.begin(); it != v.end(); ++it) {
    int id = 0;
    const std::string& k = it.key();
    auto [ptr, ec] = std::from_chars(k.data(), k.data() + k.size(), id);
    if (ec != std::errc() || ptr != k.data() + k.size())
      return make_error(ErrorCode::invalid_argument, "sampling_params.logit_bias: key '" + k + "' is not a token id");
    if (!it.value().is_number())
      return make_error(ErrorCode::invalid_argument, "sampling_params.logit_bias[" + k + "]: expected a number");
    p.logit_bias.emplace_back(id, it.value().get<float>());
  }
  return {};
}

json token_lp_json(const TokenLogprob& t) {
  json lp = t.logprob && std::isfinite(*t.logprob) ? json(json_float(*t.logprob)) : json(nullptr);
  return json::array({lp, t.token_id, t.text ? json(*t.text) : json(nullptr)});
}

json lp_list_json(const std::vector<TokenLogprob>& v) {
  json a = json::array();
  for (const auto& t : v) a.push_back(token_lp_json(t));
  return a;
}

json lp_lists_json(const std::vector<std::vector<TokenLogprob>>& v) {
  json a = json::array();
  for (const auto& l : v) a.push_back(lp_list_json(l));
  return a;
}

json finish_json(const FinishReason& f) {
  switch (f.type) {
    case FinishReason::Type::stop: {
      json m = std::holds_alternative<int>(f.matched) ? json(std::get<int>(f.matched))
                                                      : json(std::get<std::string>(f.matched));
      return {{"type", "stop"}, {"matched", m}};
    }
    case FinishReason::Type::length:
      return {{"type", "length"}, {"length", f.length}};
    case FinishReason::Type::abort:
      return {{"type", "abort"}, {"message", f.message}};
    default:
      return nullptr;
  }
}

}  // namespace

double json_float(float f) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, f);
  *r.ptr = '\0';
  return std::strtod(buf, nullptr);
}

Result<SamplingParams> sampling_params_from_json(const json& j) {
  SamplingParams p;
  FieldReader f(j, "sampling_params.", true);
  // nil is SGLang's None (as many as the context allows); other absent / nil fields keep defaults.
  if (auto it = j.find("max_new_tokens"); j.is_object() && it != j.end() && it->is_null())
    p.max_new_tokens = kMaxNewTokensUnset;
  f.get("max_new_tokens", p.max_new_tokens);
  f.get("min_new_tokens", p.min_new_tokens);
  f.get("temperature", p.temperature);
  f.get("top_p", p.top_p);
  f.get("top_k", p.top_k);
  f.get("min_p", p.min_p);
  f.get("repetition_penalty", p.repetition_penalty);
  f.get("frequency_penalty", p.frequency_penalty);
  f.get("presence_penalty", p.presence_penalty);
  f.get("stop_token_ids", p.stop_token_ids);
  f.get("ignore_eos", p.ignore_eos);
  f.get("skip_special_tokens", p.skip_special_tokens);
  f.get("no_stop_trim", p.no_stop_trim);
  f.get("n", p.n);
  if (const json* v = f.take("seed")) {
    uint64_t seed = 0;
    f.fail_status(read_value(*v, f.path("seed"), seed));
    p.seed = seed;
  }
  if (f.ok()) f.fail_status(parse_stop(f, p));
  if (f.ok()) f.fail_status(parse_logit_bias(f, p));
  Status st = f.finish();
  if (!st.ok()) return st;
  return p;
}

Result<GenerateRequest> generate_request_from_json(const json& j) {
  GenerateRequest r;
  FieldReader f(j, "", true);
  f.get("rid", r.rid);
  if (const json* v = f.take("text")) {
    std::string text;
    f.fail_status(read_value(*v, f.path("text"), text));
    r.text = std::move(text);
  }
  f.get("input_ids", r.input_ids);
  f.get("return_logprob", r.return_logprob);
  f.get("logprob_start_len", r.logprob_start_len);
  f.get("top_logprobs_num", r.top_logprobs_num);
  f.get("token_ids_logprob", r.token_ids_logprob);
  f.get("stream", r.stream);
  f.get("session_id", r.session_id);
  f.get("detokenize", r.detokenize);
  f.get("return_text_in_logprobs", r.return_text_in_logprobs);
  std::string mode = "default";
  f.get("logprob_mode", mode);
  if (mode == "raw") r.logprob_mode = LogprobMode::raw;
  else if (mode == "processed") r.logprob_mode = LogprobMode::processed;
  else if (mode != "default") f.fail("logprob_mode", "expected 'default', 'raw' or 'processed'");
  if (const json* v = f.take("sampling_params")) {
    auto sp = sampling_params_from_json(*v);
    if (!sp.ok()) return sp.status();
    r.sampling_params = std::move(sp).value();
  }
  if (const json* v = f.take("logit_processors")) f.fail_status(parse_processors(*v, r.sampling_params.processors));
  if (const json* cp = f.take("custom_logit_processor"); cp && f.ok()) {
    const json& c = *cp;
    if (c.is_string()) f.fail_status(parse_custom_processor(c.get<std::string>(), r.sampling_params.processors));
    else if (c.is_array()) {
      for (const json& e : c) {
        if (!e.is_string()) {
          f.fail("custom_logit_processor", "expected a string or an array of strings");
          break;
        }
        f.fail_status(parse_custom_processor(e.get<std::string>(), r.sampling_params.processors));
      }
    } else f.fail("custom_logit_processor", "expected a string or an array of strings");
  }
  Status st = f.finish();
  if (!st.ok()) return st;
  if (!r.text && r.input_ids.empty())
    return make_error(ErrorCode::invalid_argument, "input_ids: give text or input_ids");
  if (!r.input_ids.empty()) r.text.reset();  // input_ids takes precedence (SGLang: text is not tokenized)
  if (r.rid.empty()) r.rid = fresh_rid();
  return r;
}

Result<ScoreRequest> score_request_from_json(const json& j) {
  ScoreRequest r;
  FieldReader f(j, "", true);
  f.get("rid", r.rid);
  f.get("input_ids", r.input_ids);
  f.get("completion_ids", r.completion_ids);
  f.get("temperature", r.temperature);
  f.get("top_logprobs_num", r.top_logprobs_num);
  Status st = f.finish();
  if (!st.ok()) return st;
  if (r.rid.empty()) r.rid = fresh_rid();
  return r;
}

std::string fresh_rid() {
  thread_local std::mt19937_64 gen(std::random_device{}() ^ (uint64_t{std::random_device{}()} << 32));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int half = 0; half < 2; ++half)
    for (uint64_t v = gen(), i = 0; i < 16; ++i, v >>= 4) out[16 * half + i] = kHex[v & 15];
  return out;
}

json to_json(const SampleOutput& o) {
  const MetaInfo& m = o.meta_info;
  json meta = {{"id", m.id},
               {"finish_reason", finish_json(m.finish_reason)},
               {"prompt_tokens", m.prompt_tokens},
               {"completion_tokens", m.completion_tokens},
               {"cached_tokens", m.cached_tokens},
               {"weight_version", m.weight_version},
               {"e2e_latency", m.e2e_latency}};
  json spans = json::array();
  for (const auto& s : m.weight_version_spans) spans.push_back({s.first_token_index, s.version});
  meta["weight_version_spans"] = spans;
  if (o.return_logprob) {
    meta["output_token_logprobs"] = lp_list_json(m.output_token_logprobs);
    if (o.has_top) meta["output_top_logprobs"] = lp_lists_json(m.output_top_logprobs);
    if (o.has_ids) meta["output_token_ids_logprobs"] = lp_lists_json(m.output_token_ids_logprobs);
    if (o.has_input_logprobs) {
      meta["input_token_logprobs"] = lp_list_json(m.input_token_logprobs);
      if (o.has_top) meta["input_top_logprobs"] = lp_lists_json(m.input_top_logprobs);
      if (o.has_ids) meta["input_token_ids_logprobs"] = lp_lists_json(m.input_token_ids_logprobs);
    }
  }
  return {{"rid", o.rid}, {"index", o.index}, {"text", o.text}, {"output_ids", o.output_ids}, {"meta_info", meta}};
}

json to_json(const ScoreOutput& o) {
  json lps = json::array();
  for (float v : o.logprobs) lps.push_back(std::isfinite(v) ? json(json_float(v)) : json(nullptr));
  json out = {{"rid", o.rid}, {"logprobs", lps}, {"weight_version", o.weight_version}};
  if (!o.top_logprobs.empty()) {
    json tops = json::array();
    for (const auto& row : o.top_logprobs) {
      json r = json::array();
      for (auto [id, lp] : row) r.push_back({std::isfinite(lp) ? json(json_float(lp)) : json(nullptr), id});
      tops.push_back(r);
    }
    out["top_logprobs"] = tops;
  }
  return out;
}

json error_to_json(const std::string& rid, const Status& st) {
  return {{"rid", rid}, {"error", {{"code", error_code_name(st.code)}, {"message", st.message}}}};
}

}  // namespace zr
