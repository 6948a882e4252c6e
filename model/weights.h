// ModelWeights: the one registry of named weights. model_tensor_specs() lists every tensor of a
// config once (HF name, shape, role, layer); load, validation, checksums, broadcast and shared
// memory all walk that list.
// Ownership: a Weight's bytes are kept alive by its `owner` (a file mapping or a heap buffer), so a
// ModelWeights is cheap to copy (copies share bytes) and a commit swaps pointers, never bytes.
// Thread-safety: read-only after construction; replace() must not run concurrently with readers.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "comm/status.h"
#include "model/config.h"
#include "model/dtype.h"
#include "model/safetensors.h"
#include "model/tp.h"

namespace zr {

enum class TensorRole : uint8_t {
  embed,      // model.embed_tokens.weight            (vocab, d)
  attn_norm,  // model.layers.L.input_layernorm.weight (d)
  wq,         // model.layers.L.self_attn.q_proj.weight (n_heads*head_dim, d)
  wk,         // model.layers.L.self_attn.k_proj.weight (n_kv_heads*head_dim, d)
  wv,         // model.layers.L.self_attn.v_proj.weight (n_kv_heads*head_dim, d)
  bq,
  bk,
  bv,          // model.layers.L.self_attn.{q,k,v}_proj.bias (Qwen2, attention_bias)
  q_norm,      // model.layers.L.self_attn.q_norm.weight (head_dim), Qwen3: shared by every q head
  k_norm,      // model.layers.L.self_attn.k_norm.weight (head_dim), Qwen3: shared by every k head
  wo,          // model.layers.L.self_attn.o_proj.weight (d, n_heads*head_dim)
  ffn_norm,    // model.layers.L.post_attention_layernorm.weight (d)
  w_gate,      // model.layers.L.mlp.gate_proj.weight (ffn, d)
  w_up,        // model.layers.L.mlp.up_proj.weight   (ffn, d)
  w_down,      // model.layers.L.mlp.down_proj.weight (d, ffn)
  final_norm,  // model.norm.weight (d)
  lm_head,     // lm_head.weight (vocab, d); optional when tie_word_embeddings
  count_
};
constexpr int kNumRoles = static_cast<int>(TensorRole::count_);

struct TensorSpec {
  std::string name;            // Hugging Face name
  std::vector<int64_t> shape;  // expected shape
  TensorRole role;
  int layer = -1;         // -1 for non-layer tensors
  bool optional = false;  // lm_head when tied
};

// Every tensor of the model, in a fixed order (embed, layers 0..L-1, final_norm, lm_head).
std::vector<TensorSpec> model_tensor_specs(const ModelConfig& cfg);

// A tensor some checkpoints hold that is no weight of any model here: a buffer the model
// recomputes from its config (rotary_emb.inv_freq, saved by older transformers versions). Loading
// and publishing skip it wherever it appears; any other name the registry does not list is an error
// at load.
bool is_recomputed_buffer(std::string_view name);

// Which of a checkpoint's tensor names are weights of the model whose registry is `specs`. The
// trainer publishes only those (a checkpoint may carry buffers and other state beside them).
class WeightNames {
 public:
  explicit WeightNames(const std::vector<TensorSpec>& specs);
  bool contains(std::string_view name) const { return names_.count(std::string(name)) > 0; }

 private:
  std::unordered_set<std::string> names_;
};

// One weight as the kernels see it. Matmul weights and the embedding keep their on-disk dtype when
// it is f32 or bf16 (f16 is widened to f32 at load); norms and biases are always f32.
struct Weight {
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  std::shared_ptr<const void> owner;
  size_t nbytes() const;
  const float* f32() const { return static_cast<const float*>(data); }
  const uint16_t* bf16() const { return static_cast<const uint16_t*>(data); }
};

class ModelWeights {
 public:
  ModelWeights() = default;
  // Validates names, shapes and dtypes against model_tensor_specs(cfg). Errors: weight_mismatch
  // (missing / extra tensor, wrong shape: the message names the tensor), unsupported (dtype).
  // With tensor parallelism (shard.size > 1) each tensor is cut to this rank's part (model/tp.h):
  // specs() keep the full shapes (what checkpoints and weight updates carry), get() the local ones.
  static Result<ModelWeights> from_archive(const ModelConfig& cfg, const SafetensorsArchive& ar, TpShard shard = {});
  static Result<ModelWeights> load_dir(const ModelConfig& cfg, const std::string& dir, TpShard shard = {});

  const ModelConfig& config() const { return cfg_; }
  const std::vector<TensorSpec>& specs() const { return specs_; }
  const Weight& get(TensorRole role, int layer = -1) const;
  const Weight* find(const std::string& name) const;
  bool has(TensorRole role, int layer = -1) const;

  // Converts one on-disk tensor into the in-memory form for `spec` (validates shape and dtype).
  static Result<Weight> make_weight(const TensorSpec& spec, const TensorView& view);
  // make_weight, then this rank's shard of it.
  Result<Weight> make_local(const TensorSpec& spec, const TensorView& view) const;
  TpShard shard() const { return shard_; }
  // Swaps in already-validated weights by name (all or nothing). Keeps lm_head tied to embed.
  // The weights it replaced are moved into `replaced` when given, so the caller can drop their
  // bytes (an munmap of hundreds of MB) off the serving thread.
  Status replace(const std::vector<std::pair<std::string, Weight>>& staged, std::vector<Weight>* replaced = nullptr);
  size_t total_bytes() const;
  // Copies every weight into one anonymous mapping backed by transparent huge pages (when the
  // kernel allows, MADV_HUGEPAGE) and drops the references to where they were (a file mapping):
  // streaming reads then cross no 4 KiB page boundary and miss the TLB far less. Returns the bytes
  // copied; all or nothing (unavailable when the mapping fails, nothing changed).
  Result<size_t> copy_to_anonymous_memory();
  // Drops every weight's bytes (the registry stays, so updates can still be validated and staged);
  // returns the bytes released. complete() is false until every required tensor has bytes again.
  size_t release_all();
  // Compute::bf16 at load: every f32 matrix (matmul weights and the embedding) is rounded to bf16
  // (f32_to_bf16) into one heap buffer, halving the bytes decode streams; the kernels would round
  // f32 weights to the same bits as they read them (updates committed later keep f32). Returns the
  // number of bytes after rounding.
  size_t round_matrices_to_bf16();
  bool complete() const;

 private:
  void bind_tied_head();
  ModelConfig cfg_;
  TpShard shard_;
  std::vector<TensorSpec> specs_;
  std::vector<Weight> weights_;  // parallel to specs_
  std::unordered_map<std::string, size_t> by_name_;
  std::vector<std::array<int, kNumRoles>> slot_;  // [layer+1][role] -> index in specs_, -1 if none
};

}  // namespace zr
