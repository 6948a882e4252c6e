#include "model/config.h"

#include <spdlog/spdlog.h>

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

double get_number(const json& j, const char* key, double def) {
  if (!present(j, key)) return def;
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
       "'" + name + "' is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");
}

// Token ids: null or absent -> none; eos may be an int or a list.
void parse_token_ids(const json& j, ModelConfig& c) {
  c.bos_token_id = get_int(j, "bos_token_id", -1);
  c.pad_token_id = get_int(j, "pad_token_id", -1);
  if (c.pad_token_id < 0) c.pad_token_id = -1;
  c.eos_token_ids.clear();
  if (present(j, "eos_token_id")) {
    const json& e = j.at("eos_token_id");
    if (e.is_array()) {
      for (const auto& v : e) c.eos_token_ids.push_back(static_cast<int>(as_int(v, "eos_token_id")));
    } else {
      c.eos_token_ids.push_back(get_int(j, "eos_token_id", std::nullopt));
    }
  }
}

// Features this engine does not implement are refused rather than silently ignored.
void check_unsupported(const json& j, const ModelConfig& c) {
  std::string act = get_string(j, "hidden_act", "silu");
  if (act != "silu") fail(ErrorCode::unsupported, "hidden_act", "'" + act + "' is not supported (only silu)");
  if (present(j, "rope_scaling"))
    fail(ErrorCode::unsupported, "rope_scaling", "is not supported (must be null): " + j.at("rope_scaling").dump());
  if (get_bool(j, "mlp_bias", false)) fail(ErrorCode::unsupported, "mlp_bias", "true is not supported");
  // Qwen2 carries sliding_window but only uses it with use_sliding_window.
  bool window_on = c.arch == Architecture::qwen2 ? get_bool(j, "use_sliding_window", false) : true;
  if (window_on && present(j, "sliding_window")) {
    int w = get_int(j, "sliding_window", std::nullopt);
    if (w < c.max_position_embeddings)
      fail(ErrorCode::unsupported, "sliding_window",
           std::to_string(w) + " < max_position_embeddings is not supported");
  }
}

void check_positive(int v, const char* key) {
  if (v <= 0) fail(ErrorCode::invalid_argument, key, "must be positive, got " + std::to_string(v));
}

void check_token(int id, int vocab, const char* key) {
  if (id >= vocab || id < -1)
    fail(ErrorCode::invalid_argument, key, std::to_string(id) + " is outside the vocabulary");
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
  c.rope_theta = static_cast<float>(get_number(j, "rope_theta", 10000.0));
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false);
  c.qkv_bias = c.arch == Architecture::qwen2 || get_bool(j, "attention_bias", false);
  parse_token_ids(j, c);
  // Newer transformers write "dtype" instead of "torch_dtype".
  c.torch_dtype = get_string(j, "torch_dtype", get_string(j, "dtype", "float32"));
  check_unsupported(j, c);
  validate(c);
  return c;
}

Result<ModelConfig> parse_text(const std::string& text, const std::string& source) {
  try {
    return parse_config(json::parse(text));
  } catch (const ConfigError& e) {
    return make_error(e.code, source + ": " + e.message);
  } catch (const json::exception& e) {
    return make_error(ErrorCode::invalid_argument, source + ": invalid JSON: " + e.what());
  }
}

const char* model_type_of(const ModelConfig& c) {
  for (const auto& e : kArchs)
    if (c.arch_name == e.name) return e.model_type;
  return c.arch == Architecture::qwen2 ? "qwen2" : "llama";
}

}  // namespace

int64_t ModelConfig::num_params() const {
  const int64_t d = hidden_size, ffn = intermediate_size, q = q_dim(), kv = kv_dim();
  int64_t layer = d * q + 2 * d * kv + q * d + 3 * d * ffn + 2 * d;  // q,k,v,o, gate,up,down, 2 norms
  if (qkv_bias) layer += q + 2 * kv;
  int64_t n = int64_t{vocab_size} * d + num_layers * layer + d;  // embed, layers, final norm
  if (!tie_word_embeddings) n += int64_t{vocab_size} * d;
  return n;
}

Result<ModelConfig> ModelConfig::from_json_text(const std::string& text) {
  return parse_text(text, "config.json");
}

Result<ModelConfig> ModelConfig::from_dir(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return make_error(ErrorCode::not_found, path + ": no such file");
    return make_error(ErrorCode::io_error, path + ": cannot open");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return make_error(ErrorCode::io_error, path + ": read failed");
  auto cfg = parse_text(ss.str(), path);
  if (cfg.ok())
    spdlog::debug("config {}: {} d={} layers={} heads={}/{} vocab={}", path, cfg->arch_name,
                  cfg->hidden_size, cfg->num_layers, cfg->num_heads, cfg->num_kv_heads, cfg->vocab_size);
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
  j["rope_scaling"] = nullptr;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (arch == Architecture::llama) j["attention_bias"] = qkv_bias;
  j["bos_token_id"] = bos_token_id >= 0 ? json(bos_token_id) : json(nullptr);
  if (eos_token_ids.empty()) j["eos_token_id"] = nullptr;
  else if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  else j["eos_token_id"] = eos_token_ids;
  j["pad_token_id"] = pad_token_id >= 0 ? json(pad_token_id) : json(nullptr);
  j["torch_dtype"] = torch_dtype;
  return j.dump(2) + "\n";
}

}  // namespace zr
