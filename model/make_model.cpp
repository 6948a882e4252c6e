// make-model: a preset (or another model's config and tokenizer) plus seeded random weights,
// written in the Hugging Face layout. Every byte is a function of the options: the tokenizer is
// trained deterministically, each tensor's values come from its own generator seeded by
// (seed, tensor name), and config.json and safetensors are written with stable key order.
#include "model/make_model.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numbers>

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
};
constexpr Preset kPresets[] = {
    {"tiny", 128, 352, 4, 4, 2, 32, 1024, 1024},
    {"stories15M", 288, 768, 6, 6, 6, 48, 32000, 256},
    {"stories110M", 768, 2048, 12, 12, 12, 64, 32000, 1024},
};

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
  return role == TensorRole::attn_norm || role == TensorRole::ffn_norm || role == TensorRole::final_norm;
}

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

// The config and tokenizer.model bytes the options ask for (trained for a preset, copied for --like).
Status resolve_config_and_tokenizer(const MakeModelOptions& opt, ModelConfig* cfg, std::string* tok) {
  if (!opt.like_dir.empty()) {
    auto like = ModelConfig::from_dir(opt.like_dir);
    if (!like.ok()) return like.status();
    auto bytes = read_file(fs::path(opt.like_dir) / "tokenizer.model");
    if (!bytes.ok()) return bytes.status();
    *cfg = std::move(like).value();
    *tok = std::move(bytes).value();
    spdlog::info("make-model: config and tokenizer like {}", opt.like_dir);
    return Status::ok_status();
  }
  auto preset = preset_config(opt.preset);
  if (!preset.ok()) return preset.status();
  *cfg = std::move(preset).value();
  const auto start = std::chrono::steady_clock::now();
  auto trained = train_tokenizer(builtin_corpus(), cfg->vocab_size);
  if (!trained.ok()) return trained.status();
  *tok = std::move(trained).value();
  spdlog::info("make-model: trained a {}-piece tokenizer on the built-in corpus ({} KB) in {:.2f} s",
               cfg->vocab_size, builtin_corpus().size() / 1024,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return Status::ok_status();
}

Status write_weights(const ModelConfig& cfg, const MakeModelOptions& opt, const fs::path& path) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<TensorToWrite> tensors;
  size_t bytes = 0;
  for (const TensorSpec& spec : model_tensor_specs(cfg)) {
    if (spec.optional) continue;  // lm_head when tied to the embedding
    tensors.push_back(random_tensor(spec, opt.seed, opt.dtype));
    bytes += tensors.back().bytes.size();
  }
  const std::string source = opt.like_dir.empty() ? "preset " + opt.preset : "like " + opt.like_dir;
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"zrollout.make_model", source + ", seed " + std::to_string(opt.seed)}};
  ZR_RETURN_IF_ERROR(write_safetensors(path.string(), tensors, metadata));
  spdlog::info("make-model: {} tensors, {:.1f} MB {} in {:.2f} s -> {}", tensors.size(), bytes / 1e6,
               dtype_name(opt.dtype),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
               path.string());
  return Status::ok_status();
}

}  // namespace

Result<ModelConfig> preset_config(const std::string& preset) {
  for (const Preset& p : kPresets) {
    if (preset != p.name) continue;
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
    return cfg;
  }
  return make_error(ErrorCode::invalid_argument,
                    "make-model: unknown preset '" + preset + "' (tiny, stories15M, stories110M)");
}

Status make_model(const MakeModelOptions& opt) {
  if (opt.out_dir.empty()) return make_error(ErrorCode::invalid_argument, "make-model: --out is required");
  ModelConfig cfg;
  std::string tokenizer;
  ZR_RETURN_IF_ERROR(resolve_config_and_tokenizer(opt, &cfg, &tokenizer));
  cfg.torch_dtype = torch_dtype_name(opt.dtype);
  spdlog::info("make-model: {} d={} ffn={} layers={} heads={}/{} head_dim={} vocab={} ctx={} ({:.1f}M params)",
               cfg.arch_name, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads,
               cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size, cfg.max_position_embeddings,
               cfg.num_params() / 1e6);
  const fs::path out(opt.out_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) return make_error(ErrorCode::io_error, "make-model: cannot create " + opt.out_dir + ": " + ec.message());
  ZR_RETURN_IF_ERROR(write_file(out / "config.json", cfg.to_json_text()));
  ZR_RETURN_IF_ERROR(write_file(out / "tokenizer.model", tokenizer));
  return write_weights(cfg, opt, out / "model.safetensors");
}

}  // namespace zr
