// make-model: a preset (or another model's config, generation config and tokenizer files) plus
// seeded random weights, written in the Hugging Face layout. Every byte is a function of the options
// and the source folder: the tokenizer is trained deterministically, each tensor's values come from
// its own generator seeded by (seed, tensor name), and config.json and safetensors are written with
// stable key order.
#include "model/make_model.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <numbers>
#include <utility>
#include <vector>

#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace zr {
namespace {

namespace fs = std::filesystem;

constexpr double kInitStd = 0.02;       // matmuls, embeddings, biases (HF initializer_range)
constexpr double kNormNoiseStd = 0.02;  // norms are 1 + noise, so they are not all identical

struct Preset {
  const char* name;
  int hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, context;
  bool qwen2 = false;        // Qwen2ForCausalLM (q/k/v biases), rope_theta 1e6, rms_norm_eps 1e-6
  int tokenizer_pieces = 0;  // 0: vocab (else a smaller tokenizer, as Qwen's 151,665 of 151,936)
  DType dtype = DType::f32;  // default weight dtype
  // BOS and EOS id when the tokenizer is not the trained one (whose are 1 and 2): Qwen2.5's
  // <|endoftext|> (151643), as its config.json has them. -1: keep 1 and 2.
  int foreign_special_id = -1;
};
constexpr Preset kPresets[] = {
    {"tiny", 128, 352, 4, 4, 2, 32, 1024, 1024},
    {"stories15M", 288, 768, 6, 6, 6, 48, 32000, 256},
    {"stories110M", 768, 2048, 12, 12, 12, 64, 32000, 1024},
    // Qwen2.5-0.5B's shape (bf16, tied embeddings, GQA 14:2). The built-in corpus cannot train
    // 152K pieces, so its tokenizer has 32,000 and the rest of the vocabulary is never produced by
    // encoding (the LM head, log-softmax and top-k still run over all 151,936 entries).
    {"qwen2.5-0.5b", 896, 4864, 24, 14, 2, 64, 151936, 32768, true, 32000, DType::bf16, 151643},
};

const Preset* find_preset(const std::string& name) {
  for (const Preset& p : kPresets)
    if (name == p.name) return &p;
  return nullptr;
}

// splitmix64 (Steele et al.): tiny, fast, and fully specified, so weights do not depend on the
// standard library's distributions.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1]: never 0, so log() below is finite.
  double uniform() { return (static_cast<double>(next() >> 11) + 1.0) * 0x1.0p-53; }
  // Standard normal by Box-Muller, both outputs used.
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double theta = 2.0 * std::numbers::pi * uniform();
    spare_ = r * std::sin(theta);
    has_spare_ = true;
    return r * std::cos(theta);
  }

 private:
  uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

bool is_norm(TensorRole role) {
  return role == TensorRole::attn_norm || role == TensorRole::ffn_norm || role == TensorRole::final_norm ||
         role == TensorRole::q_norm || role == TensorRole::k_norm;
}

// What --like copies byte for byte besides config.json, when the source folder has it.
constexpr const char* kLikeFiles[] = {
    "generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json",      "vocab.json",      "merges.txt",     "chat_template.jinja"};

// Files of the output folder other than model.safetensors: (name, bytes).
using FileList = std::vector<std::pair<std::string, std::string>>;

// Little-endian element bytes of one tensor in `dtype`.
TensorToWrite random_tensor(const TensorSpec& spec, uint64_t seed, DType dtype) {
  TensorToWrite t{spec.name, dtype, spec.shape, {}};
  size_t n = 1;
  for (int64_t d : spec.shape) n *= static_cast<size_t>(d);
  t.bytes.resize(n * dtype_size(dtype));
  SplitMix64 rng(seed ^ fnv1a(spec.name));
  const bool norm = is_norm(spec.role);
  uint8_t* out = t.bytes.data();
  for (size_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(norm ? 1.0 + kNormNoiseStd * rng.normal() : kInitStd * rng.normal());
    if (dtype == DType::f32) {
      std::memcpy(out + 4 * i, &v, 4);
    } else {
      const uint16_t h = dtype == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
      std::memcpy(out + 2 * i, &h, 2);
    }
  }
  return t;
}

Status write_file(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return make_error(ErrorCode::io_error, path.string() + ": write failed");
  return Status::ok_status();
}

Result<std::string> read_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return make_error(ErrorCode::not_found, path.string() + ": no such file");
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return make_error(ErrorCode::io_error, path.string() + ": read failed");
  return bytes;
}

const char* torch_dtype_name(DType t) {
  return t == DType::f32 ? "float32" : t == DType::bf16 ? "bfloat16" : "float16";
}

// The dtype the source folder's weights are stored in (its embedding's), else its torch_dtype.
DType source_dtype(const std::string& dir, const ModelConfig& cfg) {
  if (auto ar = SafetensorsArchive::open_dir(dir); ar.ok())
    if (const TensorView* t = ar->find("model.embed_tokens.weight")) return t->dtype;
  return cfg.torch_dtype == "bfloat16" ? DType::bf16 : cfg.torch_dtype == "float16" ? DType::f16 : DType::f32;
}

// --like: the source's config.json with every field kept (rope_scaling, head_dim, fields this
// engine ignores) and only its dtype changed, plus kLikeFiles as they are.
Status resolve_like(const MakeModelOptions& opt, ModelConfig* cfg, DType* dtype, FileList* files) {
  auto like = ModelConfig::from_dir(opt.like_dir);
  if (!like.ok()) return like.status();
  *cfg = std::move(like).value();
  *dtype = opt.dtype ? *opt.dtype : source_dtype(opt.like_dir, *cfg);
  auto text = read_file(fs::path(opt.like_dir) / "config.json");
  if (!text.ok()) return text.status();
  auto j = nlohmann::ordered_json::parse(*text);  // from_dir parsed it already
  j["torch_dtype"] = torch_dtype_name(*dtype);
  if (j.contains("dtype")) j["dtype"] = torch_dtype_name(*dtype);  // transformers 5's spelling
  files->emplace_back("config.json", j.dump(2) + "\n");
  std::string copied;
  for (const char* name : kLikeFiles) {
    const fs::path src = fs::path(opt.like_dir) / name;
    std::error_code ec;
    if (!fs::exists(src, ec)) continue;
    auto bytes = read_file(src);
    if (!bytes.ok()) return bytes.status();
    files->emplace_back(name, std::move(bytes).value());
    copied += std::string(copied.empty() ? "" : ", ") + name;
  }
  spdlog::info("make-model: config like {} (copied {})", opt.like_dir, copied.empty() ? "no other file" : copied);
  return Status::ok_status();
}

// --tokenizer DIR: the tokenizer files DIR has (kLikeFiles but the configs), copied as they are.
Status copy_tokenizer(const std::string& dir, FileList* files) {
  std::string copied;
  for (const char* name : kLikeFiles) {
    const fs::path src = fs::path(dir) / name;
    std::error_code ec;
    if (std::string_view(name) == "generation_config.json" || !fs::exists(src, ec)) continue;
    auto bytes = read_file(src);
    if (!bytes.ok()) return bytes.status();
    files->emplace_back(name, std::move(bytes).value());
    copied += std::string(copied.empty() ? "" : ", ") + name;
  }
  if (copied.empty())
    return make_error(ErrorCode::not_found,
                      "make-model: --tokenizer " + dir + " has no tokenizer.json or tokenizer.model");
  spdlog::info("make-model: tokenizer copied from {} ({})", dir, copied);
  return Status::ok_status();
}

// A preset: its config and a tokenizer.model trained on the built-in corpus (or opt.tokenizer's).
Status resolve_preset(const MakeModelOptions& opt, ModelConfig* cfg, DType* dtype, FileList* files) {
  auto preset = preset_config(opt.preset);
  if (!preset.ok()) return preset.status();
  *cfg = std::move(preset).value();
  const Preset* p = find_preset(opt.preset);
  *dtype = opt.dtype.value_or(p->dtype);
  cfg->torch_dtype = torch_dtype_name(*dtype);
  if (!opt.tokenizer.empty()) {
    if (p->foreign_special_id >= 0) {
      cfg->bos_token_id = p->foreign_special_id;
      cfg->eos_token_ids = {p->foreign_special_id};
    }
    files->emplace_back("config.json", cfg->to_json_text());
    return opt.tokenizer == "none" ? Status::ok_status() : copy_tokenizer(opt.tokenizer, files);
  }
  const auto start = std::chrono::steady_clock::now();
  auto trained = train_tokenizer(builtin_corpus(), p->tokenizer_pieces > 0 ? p->tokenizer_pieces : cfg->vocab_size);
  if (!trained.ok()) return trained.status();
  spdlog::info("make-model: trained a {}-piece tokenizer on the built-in corpus ({} KB) in {:.2f} s", cfg->vocab_size,
               builtin_corpus().size() / 1024,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  files->emplace_back("config.json", cfg->to_json_text());
  files->emplace_back("tokenizer.model", std::move(trained).value());
  return Status::ok_status();
}

Status write_weights(const ModelConfig& cfg, const MakeModelOptions& opt, DType dtype, const fs::path& path) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<TensorToWrite> tensors;
  size_t bytes = 0;
  for (const TensorSpec& spec : model_tensor_specs(cfg)) {
    if (spec.optional) continue;  // lm_head when tied to the embedding
    tensors.push_back(random_tensor(spec, opt.seed, dtype));
    bytes += tensors.back().bytes.size();
  }
  const std::string source = opt.like_dir.empty() ? "preset " + opt.preset : "like " + opt.like_dir;
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"zrollout.make_model", source + ", seed " + std::to_string(opt.seed)}};
  ZR_RETURN_IF_ERROR(write_safetensors(path.string(), tensors, metadata));
  spdlog::info("make-model: {} tensors, {:.1f} MB {} in {:.2f} s -> {}", tensors.size(), bytes / 1e6, dtype_name(dtype),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), path.string());
  return Status::ok_status();
}

}  // namespace

Result<ModelConfig> preset_config(const std::string& preset) {
  if (const Preset* found = find_preset(preset)) {
    const Preset& p = *found;
    ModelConfig cfg;
    cfg.hidden_size = p.hidden;
    cfg.intermediate_size = p.intermediate;
    cfg.num_layers = p.layers;
    cfg.num_heads = p.heads;
    cfg.num_kv_heads = p.kv_heads;
    cfg.head_dim = p.head_dim;
    cfg.vocab_size = p.vocab;
    cfg.max_position_embeddings = p.context;
    cfg.rms_norm_eps = 1e-5f;
    cfg.rope_theta = 10000.0f;
    cfg.tie_word_embeddings = true;
    cfg.bos_token_id = 1;
    cfg.eos_token_ids = {2};
    cfg.pad_token_id = -1;
    if (p.qwen2) {
      cfg.arch = Architecture::qwen2;
      cfg.arch_name = "Qwen2ForCausalLM";
      cfg.qkv_bias = true;
      cfg.rope_theta = 1000000.0f;
      cfg.rms_norm_eps = 1e-6f;
    }
    return cfg;
  }
  return make_error(ErrorCode::invalid_argument,
                    "make-model: unknown preset '" + preset + "' (tiny, stories15M, stories110M, qwen2.5-0.5b)");
}

Status make_model(const MakeModelOptions& opt) {
  if (opt.out_dir.empty()) return make_error(ErrorCode::invalid_argument, "make-model: --out is required");
  ModelConfig cfg;
  DType dtype = DType::f32;
  FileList files;
  ZR_RETURN_IF_ERROR(opt.like_dir.empty() ? resolve_preset(opt, &cfg, &dtype, &files)
                                          : resolve_like(opt, &cfg, &dtype, &files));
  cfg.torch_dtype = torch_dtype_name(dtype);
  spdlog::info("make-model: {} d={} ffn={} layers={} heads={}/{} head_dim={} vocab={} ctx={} ({:.1f}M params)",
               cfg.arch_name, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
               cfg.head_dim, cfg.vocab_size, cfg.max_position_embeddings, cfg.num_params() / 1e6);
  const fs::path out(opt.out_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) return make_error(ErrorCode::io_error, "make-model: cannot create " + opt.out_dir + ": " + ec.message());
  for (const auto& [name, bytes] : files) ZR_RETURN_IF_ERROR(write_file(out / name, bytes));
  return write_weights(cfg, opt, dtype, out / "model.safetensors");
}

}  // namespace zr
