#include "comm/json_codec.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>

namespace zr {

using nlohmann::json;

namespace {

// Reads the fields of one JSON object, remembering the first error and which keys were used.
class Fields {
 public:
  Fields(const json& j, std::string prefix) : j_(j), prefix_(std::move(prefix)) {
    if (!j.is_object()) err_ = make_error(ErrorCode::invalid_argument, where("") + "expected an object");
  }
  bool has(const char* name) const { return err_.ok() && j_.contains(name) && !j_.at(name).is_null(); }
  const json& at(const char* name) { used_.insert(name); return j_.at(name); }
  void mark(const char* name) { used_.insert(name); }

  template <class T>
  void get(const char* name, T& out) {
    used_.insert(name);
    if (!has(name)) return;
    const json& v = j_.at(name);
    if constexpr (std::is_same_v<T, bool>) {
      if (!v.is_boolean()) return fail(name, "expected true or false");
      out = v.get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
      if (!v.is_number_integer()) return fail(name, "expected an integer");
      if (v.is_number_unsigned() && std::is_signed_v<T> && v.get<uint64_t>() > uint64_t(std::numeric_limits<T>::max()))
        return fail(name, "integer out of range");
      if (std::is_signed_v<T> && v.is_number_integer() && !v.is_number_unsigned() &&
          (v.get<int64_t>() < int64_t(std::numeric_limits<T>::min()) || v.get<int64_t>() > int64_t(std::numeric_limits<T>::max())))
        return fail(name, "integer out of range");
      if (std::is_unsigned_v<T> && !v.is_number_unsigned()) return fail(name, "expected a non-negative integer");
      out = v.get<T>();
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!v.is_number()) return fail(name, "expected a number");
      out = v.get<T>();
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!v.is_string()) return fail(name, "expected a string");
      out = v.get<std::string>();
    } else if constexpr (std::is_same_v<T, std::vector<int>>) {
      if (!v.is_array()) return fail(name, "expected an array of integers");
      out.clear();
      for (size_t i = 0; i < v.size(); ++i) {
        if (!v[i].is_number_integer() || v[i].get<int64_t>() < INT32_MIN || v[i].get<int64_t>() > INT32_MAX)
          return fail((std::string(name) + "[" + std::to_string(i) + "]").c_str(), "expected an integer");
        out.push_back(v[i].get<int>());
      }
    } else {
      static_assert(sizeof(T) == 0, "unsupported field type");
    }
  }
  void get_optional(const char* name, std::optional<std::string>& out) {
    if (has(name)) { std::string s; get(name, s); out = s; } else used_.insert(name);
  }
  void get_optional(const char* name, std::optional<uint64_t>& out) {
    if (has(name)) { uint64_t s = 0; get(name, s); out = s; } else used_.insert(name);
  }
  void fail(const std::string& name, const std::string& what) {
    if (err_.ok()) err_ = make_error(ErrorCode::invalid_argument, where(name) + what);
  }
  void fail_status(Status st) { if (err_.ok() && !st.ok()) err_ = std::move(st); }
  std::string where(const std::string& name) const { return prefix_ + name + (name.empty() && prefix_.empty() ? "" : ": "); }
  // Unknown fields are errors (a typo must not be silently ignored).
  Status finish() {
    if (!err_.ok()) return err_;
    for (auto it = j_.begin(); it != j_.end(); ++it)
      if (!used_.count(it.key())) return make_error(ErrorCode::invalid_argument, where(it.key()) + "unknown field");
    return {};
  }
  bool ok() const { return err_.ok(); }
  const std::string& prefix() const { return prefix_; }

 private:
  const json& j_;
  std::string prefix_;
  std::set<std::string> used_;
  Status err_;
};

// "rl_action_mask:1,2,3" or "disallowed_tokens:4,5".
Status parse_custom_processor(const std::string& s, LogitProcessors& lp) {
  const std::string field = "custom_logit_processor";
  size_t colon = s.find(':');
  if (colon == std::string::npos)
    return make_error(ErrorCode::invalid_argument, field + ": expected 'rl_action_mask:ids' or 'disallowed_tokens:ids'");
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
  else if (kind == "disallowed_tokens") lp.disallowed_token_ids.insert(lp.disallowed_token_ids.end(), ids.begin(), ids.end());
  else return make_error(ErrorCode::invalid_argument, field + ": unknown processor '" + kind + "'");
  return {};
}

Status parse_processors(const json& j, LogitProcessors& lp) {
  Fields f(j, "logit_processors.");
  if (f.has("allowed_token_ids")) {
    std::vector<int> ids;
    f.get("allowed_token_ids", ids);
    lp.allowed_token_ids = ids;
  }
  f.get("disallowed_token_ids", lp.disallowed_token_ids);
  if (f.has("temperature_schedule")) {
    Fields t(f.at("temperature_schedule"), "logit_processors.temperature_schedule.");
    TemperatureSchedule s;
    t.get("initial", s.initial);
    t.get("final", s.final);
    t.get("warmup_tokens", s.warmup_tokens);
    f.fail_status(t.finish());
    lp.temperature_schedule = s;
  }
  return f.finish();
}

Status parse_stop(Fields& f, SamplingParams& p) {
  if (!f.has("stop")) { f.mark("stop"); return {}; }
  const json& v = f.at("stop");
  if (v.is_string()) p.stop = {v.get<std::string>()};
  else if (v.is_array()) {
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string())
        return make_error(ErrorCode::invalid_argument, "sampling_params.stop[" + std::to_string(i) + "]: expected a string");
      p.stop.push_back(v[i].get<std::string>());
    }
  } else return make_error(ErrorCode::invalid_argument, "sampling_params.stop: expected a string or an array of strings");
  return {};
}

Status parse_logit_bias(Fields& f, SamplingParams& p) {
  if (!f.has("logit_bias")) { f.mark("logit_bias"); return {}; }
  const json& v = f.at("logit_bias");
  if (!v.is_object()) return make_error(ErrorCode::invalid_argument, "sampling_params.logit_bias: expected an object {\"token_id\": bias}");
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
    case FinishReason::Type::length: return {{"type", "length"}, {"length", f.length}};
    case FinishReason::Type::abort: return {{"type", "abort"}, {"message", f.message}};
    default: return nullptr;
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
  Fields f(j, "sampling_params.");
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
  f.get("n", p.n);
  f.get_optional("seed", p.seed);
  if (f.ok()) f.fail_status(parse_stop(f, p));
  if (f.ok()) f.fail_status(parse_logit_bias(f, p));
  Status st = f.finish();
  if (!st.ok()) return st;
  return p;
}

Result<GenerateRequest> generate_request_from_json(const json& j) {
  GenerateRequest r;
  Fields f(j, "");
  f.get("rid", r.rid);
  f.get_optional("text", r.text);
  f.get("input_ids", r.input_ids);
  f.get("return_logprob", r.return_logprob);
  f.get("logprob_start_len", r.logprob_start_len);
  f.get("top_logprobs_num", r.top_logprobs_num);
  f.get("token_ids_logprob", r.token_ids_logprob);
  f.get("stream", r.stream);
  f.get("session_id", r.session_id);
  std::string mode = "default";
  f.get("logprob_mode", mode);
  if (mode == "raw") r.logprob_mode = LogprobMode::raw;
  else if (mode == "processed") r.logprob_mode = LogprobMode::processed;
  else if (mode != "default") f.fail("logprob_mode", "expected 'default', 'raw' or 'processed'");
  if (f.ok() && f.has("sampling_params")) {
    auto sp = sampling_params_from_json(f.at("sampling_params"));
    if (!sp.ok()) return sp.status();
    r.sampling_params = std::move(sp).value();
  } else {
    f.mark("sampling_params");
  }
  f.mark("logit_processors");
  if (f.ok() && f.has("logit_processors")) f.fail_status(parse_processors(f.at("logit_processors"), r.sampling_params.processors));
  if (f.ok() && f.has("custom_logit_processor")) {
    const json& c = f.at("custom_logit_processor");
    if (c.is_string()) f.fail_status(parse_custom_processor(c.get<std::string>(), r.sampling_params.processors));
    else if (c.is_array()) {
      for (const json& e : c) {
        if (!e.is_string()) { f.fail("custom_logit_processor", "expected a string or an array of strings"); break; }
        f.fail_status(parse_custom_processor(e.get<std::string>(), r.sampling_params.processors));
      }
    } else f.fail("custom_logit_processor", "expected a string or an array of strings");
  } else {
    f.mark("custom_logit_processor");
  }
  Status st = f.finish();
  if (!st.ok()) return st;
  if (!r.text && r.input_ids.empty()) return make_error(ErrorCode::invalid_argument, "input_ids: give text or input_ids");
  return r;
}

Result<ScoreRequest> score_request_from_json(const json& j) {
  ScoreRequest r;
  Fields f(j, "");
  f.get("rid", r.rid);
  f.get("input_ids", r.input_ids);
  f.get("completion_ids", r.completion_ids);
  f.get("temperature", r.temperature);
  f.get("top_logprobs_num", r.top_logprobs_num);
  Status st = f.finish();
  if (!st.ok()) return st;
  return r;
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
