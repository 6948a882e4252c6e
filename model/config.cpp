#include "model/config.h"
#include "model/weights.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

namespace zr {

namespace {

using json = nlohmann::json;

// Thrown only inside parse_config and caught there; never crosses the module edge.
struct ConfigError {
  ErrorCode code;
  std::string message;
};

[[noreturn]] void fail(ErrorCode code, const std::string& field, const std::string& what) {
  throw ConfigError{code, field + " " + what};
}

bool present(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

int64_t as_int(const json& v, const char* key) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {  // some writers emit 4096.0
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  fail(ErrorCode::invalid_argument, key, "must be an integer, got " + v.dump());
}

int get_int(const json& j, const char* key, std::optional<int> def) {
  if (!present(j, key)) {
    if (def) return *def;
    fail(ErrorCode::invalid_argument, key, "is missing");
  }
  int64_t v = as_int(j.at(key), key);
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
    fail(ErrorCode::invalid_argument, key, "is out of range: " + std::to_string(v));
  return static_cast<int>(v);
}

double get_number(const json& j, const char* key, std::optional<double> def) {
  if (!present(j, key)) {
    if (def) return *def;
    fail(ErrorCode::invalid_argument, key, "is missing");
  }
  const json& v = j.at(key);
  if (!v.is_number()) fail(ErrorCode::invalid_argument, key, "must be a number, got " + v.dump());
  return v.get<double>();
}

bool get_bool(const json& j, const char* key, bool def) {
  if (!present(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_boolean()) fail(ErrorCode::invalid_argument, key, "must be true or false, got " + v.dump());
  return v.get<bool>();
}

std::string get_string(const json& j, const char* key, const std::string& def) {
  if (!present(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_string()) fail(ErrorCode::invalid_argument, key, "must be a string, got " + v.dump());
  return v.get<std::string>();
}

struct ArchEntry {
  const char* name;
  const char* model_type;
  Architecture arch;
};
constexpr ArchEntry kArchs[] = {
    {"LlamaForCausalLM", "llama", Architecture::llama},
    {"MistralForCausalLM", "mistral", Architecture::llama},
    {"Qwen2ForCausalLM", "qwen2", Architecture::qwen2},
    {"Qwen3ForCausalLM", "qwen3", Architecture::qwen3},
};

// architectures[0], or model_type when architectures is absent.
void parse_architecture(const json& j, ModelConfig& c) {
  std::string name;
  if (present(j, "architectures")) {
    const json& a = j.at("architectures");
    if (!a.is_array() || a.empty() || !a[0].is_string())
      fail(ErrorCode::invalid_argument, "architectures", "must be a non-empty list of strings");
    name = a[0].get<std::string>();
  } else {
    std::string mt = get_string(j, "model_type", "");
    for (const auto& e : kArchs)
      if (mt == e.model_type) name = e.name;
    if (name.empty()) fail(ErrorCode::invalid_argument, "architectures", "is missing");
  }
  for (const auto& e : kArchs) {
    if (name == e.name) {
      c.arch = e.arch;
      c.arch_name = name;
      return;
    }
  }
  fail(ErrorCode::unsupported, "architectures",
       "'" + name + "' is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)");
}

// eos_token_id: absent or null -> none, an int, or a list of ints.
std::vector<int> eos_list(const json& j) {
  std::vector<int> ids;
  if (!present(j, "eos_token_id")) return ids;
  const json& e = j.at("eos_token_id");
  for (const auto& v : e.is_array() ? e : json::array({e})) {
    const int64_t id = as_int(v, "eos_token_id");
    if (id < 0 || id > std::numeric_limits<int>::max())
      fail(ErrorCode::invalid_argument, "eos_token_id", std::to_string(id) + " is outside the vocabulary");
    ids.push_back(static_cast<int>(id));
  }
  return ids;
}

// Token ids: null or absent -> none.
void parse_token_ids(const json& j, ModelConfig& c) {
  c.bos_token_id = get_int(j, "bos_token_id", -1);
  c.pad_token_id = get_int(j, "pad_token_id", -1);
  if (c.pad_token_id < 0) c.pad_token_id = -1;
  c.eos_token_ids = eos_list(j);
}

// rope_scaling (or transformers 5's rope_parameters, which also carries rope_theta). Errors name
// the sub-field: "rope_scaling.rope_type 'yarn' is not supported ...".
void parse_rope_fields(const json& r, ModelConfig& c) {
  RopeScaling& s = c.rope_scaling;
  const std::string type = get_string(r, "rope_type", get_string(r, "type", "default"));
  if (type == "default") {
    s = {};
  } else if (type == "linear") {
    s.type = RopeScaling::Type::linear;
    s.factor = get_number(r, "factor", std::nullopt);
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::llama3;
    s.factor = get_number(r, "factor", std::nullopt);
    s.low_freq_factor = get_number(r, "low_freq_factor", std::nullopt);
    s.high_freq_factor = get_number(r, "high_freq_factor", std::nullopt);
    s.original_max_position_embeddings = get_int(r, "original_max_position_embeddings", std::nullopt);
    if (s.original_max_position_embeddings <= 0)
      fail(ErrorCode::invalid_argument, "original_max_position_embeddings", "must be positive");
    if (!(s.low_freq_factor > 0) || !(s.high_freq_factor > s.low_freq_factor) || !std::isfinite(s.high_freq_factor))
      fail(ErrorCode::invalid_argument, "high_freq_factor",
           "must be greater than low_freq_factor (and both positive), got " + std::to_string(s.high_freq_factor) +
               " and " + std::to_string(s.low_freq_factor));
  } else {
    fail(ErrorCode::unsupported, "rope_type", "'" + type + "' is not supported (default, linear, llama3)");
  }
  if (!(s.factor > 0) || !std::isfinite(s.factor))
    fail(ErrorCode::invalid_argument, "factor", "must be positive, got " + std::to_string(s.factor));
}

void parse_rope(const json& j, ModelConfig& c) {
  c.rope_theta = static_cast<float>(get_number(j, "rope_theta", 10000.0));
  const char* key = present(j, "rope_parameters") ? "rope_parameters" : "rope_scaling";
  if (!present(j, key)) return;
  const json& r = j.at(key);
  if (!r.is_object()) fail(ErrorCode::invalid_argument, key, "must be an object or null, got " + r.dump());
  try {
    c.rope_theta = static_cast<float>(get_number(r, "rope_theta", c.rope_theta));
    parse_rope_fields(r, c);
  } catch (ConfigError& e) {
    e.message = std::string(key) + "." + e.message;
    throw;
  }
}

// Features this engine does not implement are refused rather than silently ignored.
void check_unsupported(const json& j, const ModelConfig& c) {
  std::string act = get_string(j, "hidden_act", "silu");
  if (act != "silu") fail(ErrorCode::unsupported, "hidden_act", "'" + act + "' is not supported (only silu)");
  if (get_bool(j, "mlp_bias", false)) fail(ErrorCode::unsupported, "mlp_bias", "true is not supported");
  // Qwen2 and Qwen3 carry sliding_window but only use it with use_sliding_window.
  bool window_on = c.arch == Architecture::llama || get_bool(j, "use_sliding_window", false);
  if (window_on && present(j, "sliding_window")) {
    int w = get_int(j, "sliding_window", std::nullopt);
    if (w < c.max_position_embeddings)
      fail(ErrorCode::unsupported, "sliding_window", std::to_string(w) + " < max_position_embeddings is not supported");
  }
}

void check_positive(int v, const char* key) {
  if (v <= 0) fail(ErrorCode::invalid_argument, key, "must be positive, got " + std::to_string(v));
}

void check_token(int id, int vocab, const char* key) {
  if (id >= vocab || id < -1) fail(ErrorCode::invalid_argument, key, std::to_string(id) + " is outside the vocabulary");
}

void validate(const ModelConfig& c) {
  check_positive(c.hidden_size, "hidden_size");
  check_positive(c.intermediate_size, "intermediate_size");
  check_positive(c.num_layers, "num_hidden_layers");
  check_positive(c.num_heads, "num_attention_heads");
  check_positive(c.num_kv_heads, "num_key_value_heads");
  check_positive(c.head_dim, "head_dim");
  check_positive(c.vocab_size, "vocab_size");
  check_positive(c.max_position_embeddings, "max_position_embeddings");
  if (c.num_heads % c.num_kv_heads != 0)
    fail(ErrorCode::invalid_argument, "num_attention_heads",
         std::to_string(c.num_heads) + " is not divisible by num_key_value_heads " + std::to_string(c.num_kv_heads));
  if (c.head_dim % 2 != 0) fail(ErrorCode::invalid_argument, "head_dim", "must be even for RoPE");
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps))
    fail(ErrorCode::invalid_argument, "rms_norm_eps", "must be positive");
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    fail(ErrorCode::invalid_argument, "rope_theta", "must be positive");
  check_token(c.bos_token_id, c.vocab_size, "bos_token_id");
  check_token(c.pad_token_id, c.vocab_size, "pad_token_id");
  for (int id : c.eos_token_ids) {
    if (id < 0) fail(ErrorCode::invalid_argument, "eos_token_id", "must be non-negative");
    check_token(id, c.vocab_size, "eos_token_id");
  }
}

ModelConfig parse_config(const json& j) {
  if (!j.is_object()) fail(ErrorCode::invalid_argument, "top level", "must be a JSON object");
  ModelConfig c;
  parse_architecture(j, c);
  c.hidden_size = get_int(j, "hidden_size", std::nullopt);
  c.intermediate_size = get_int(j, "intermediate_size", std::nullopt);
  c.num_layers = get_int(j, "num_hidden_layers", std::nullopt);
  c.num_heads = get_int(j, "num_attention_heads", std::nullopt);
  c.num_kv_heads = get_int(j, "num_key_value_heads", c.num_heads);
  check_positive(c.num_heads, "num_attention_heads");
  if (!present(j, "head_dim") && c.hidden_size % c.num_heads != 0)
    fail(ErrorCode::invalid_argument, "hidden_size", "is not divisible by num_attention_heads (and no head_dim)");
  c.head_dim = get_int(j, "head_dim", c.hidden_size / c.num_heads);
  c.vocab_size = get_int(j, "vocab_size", std::nullopt);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", std::nullopt);
  c.rms_norm_eps = static_cast<float>(get_number(j, "rms_norm_eps", 1e-6));  // HF default
  parse_rope(j, c);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false);
  c.qkv_bias = c.arch == Architecture::qwen2 || get_bool(j, "attention_bias", false);
  c.qk_norm = c.arch == Architecture::qwen3;
  parse_token_ids(j, c);
  // Newer transformers write "dtype" instead of "torch_dtype".
  c.torch_dtype = get_string(j, "torch_dtype", get_string(j, "dtype", "float32"));
  check_unsupported(j, c);
  validate(c);
  return c;
}

// generation_config.json: its eos ids join the stop ids (config.json's first, in order, no
// repeats); its bos/pad fill in only what config.json leaves out.
void merge_generation_config(const json& j, ModelConfig& c) {
  if (!j.is_object()) fail(ErrorCode::invalid_argument, "top level", "must be a JSON object");
  for (int id : eos_list(j)) {
    check_token(id, c.vocab_size, "eos_token_id");
    if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end())
      c.eos_token_ids.push_back(id);
  }
  if (c.bos_token_id < 0) c.bos_token_id = std::max(-1, get_int(j, "bos_token_id", -1));
  if (c.pad_token_id < 0) c.pad_token_id = std::max(-1, get_int(j, "pad_token_id", -1));
  check_token(c.bos_token_id, c.vocab_size, "bos_token_id");
  check_token(c.pad_token_id, c.vocab_size, "pad_token_id");
}

// Runs parse(json of text, out), turning its errors into a Status that names `source`.
template <class F>
Status parse_json(const std::string& text, const std::string& source, F&& parse) {
  try {
    parse(json::parse(text));
    return Status::ok_status();
  } catch (const ConfigError& e) {
    return make_error(e.code, source + ": " + e.message);
  } catch (const json::exception& e) {
    return make_error(ErrorCode::invalid_argument, source + ": invalid JSON: " + e.what());
  }
}

Result<ModelConfig> parse_text(const std::string& text, const std::string& source) {
  ModelConfig c;
  ZR_RETURN_IF_ERROR(parse_json(text, source, [&](const json& j) { c = parse_config(j); }));
  return c;
}

Result<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return make_error(ErrorCode::not_found, path + ": no such file");
    return make_error(ErrorCode::io_error, path + ": cannot open");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return make_error(ErrorCode::io_error, path + ": read failed");
  return ss.str();
}

const char* model_type_of(const ModelConfig& c) {
  for (const auto& e : kArchs)
    if (c.arch_name == e.name) return e.model_type;
  return c.arch == Architecture::qwen3 ? "qwen3" : c.arch == Architecture::qwen2 ? "qwen2" : "llama";
}

json rope_scaling_json(const RopeScaling& s) {
  if (s.type == RopeScaling::Type::none) return nullptr;
  json r;
  r["rope_type"] = s.type == RopeScaling::Type::linear ? "linear" : "llama3";
  r["factor"] = s.factor;
  if (s.type == RopeScaling::Type::llama3) {
    r["low_freq_factor"] = s.low_freq_factor;
    r["high_freq_factor"] = s.high_freq_factor;
    r["original_max_position_embeddings"] = s.original_max_position_embeddings;
  }
  return r;
}

}  // namespace

int64_t ModelConfig::num_params() const {
  // Counted from the tensor registry, so a new tensor kind is counted where it is declared.
  int64_t n = 0;
  for (const TensorSpec& spec : model_tensor_specs(*this)) {
    if (spec.optional) continue;  // lm_head when tied to the embedding
    int64_t e = 1;
    for (int64_t d : spec.shape) e *= d;
    n += e;
  }
  return n;
}

Result<ModelConfig> ModelConfig::from_json_text(const std::string& text) { return parse_text(text, "config.json"); }

Result<ModelConfig> ModelConfig::from_dir(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  auto text = read_text(path);
  if (!text.ok()) return text.status();
  auto cfg = parse_text(*text, path);
  if (!cfg.ok()) return cfg;
  const std::string gen_path = (std::filesystem::path(dir) / "generation_config.json").string();
  if (auto gen = read_text(gen_path); gen.ok()) {
    ZR_RETURN_IF_ERROR(parse_json(*gen, gen_path, [&](const json& j) { merge_generation_config(j, *cfg); }));
  } else if (gen.status().code != ErrorCode::not_found) {
    return gen.status();
  }
  spdlog::debug("config {}: {} d={} layers={} heads={}/{} head_dim={} vocab={} stop ids {}", path, cfg->arch_name,
                cfg->hidden_size, cfg->num_layers, cfg->num_heads, cfg->num_kv_heads, cfg->head_dim, cfg->vocab_size,
                json(cfg->eos_token_ids).dump());
  return cfg;
}

std::string ModelConfig::to_json_text() const {
  json j;  // std::map-backed: keys come out sorted, so the text is stable
  j["architectures"] = json::array({arch_name});
  j["model_type"] = model_type_of(*this);
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["vocab_size"] = vocab_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = static_cast<double>(rms_norm_eps);  // shortest double repr reads back exactly
  j["rope_theta"] = static_cast<double>(rope_theta);
  j["rope_scaling"] = rope_scaling_json(rope_scaling);
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (arch != Architecture::qwen2) j["attention_bias"] = qkv_bias;  // Qwen2 always has the biases
  j["bos_token_id"] = bos_token_id >= 0 ? json(bos_token_id) : json(nullptr);
  if (eos_token_ids.empty()) j["eos_token_id"] = nullptr;
  else if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  else j["eos_token_id"] = eos_token_ids;
  j["pad_token_id"] = pad_token_id >= 0 ? json(pad_token_id) : json(nullptr);
  j["torch_dtype"] = torch_dtype;
  return j.dump(2) + "\n";
}

}  // namespace zr
