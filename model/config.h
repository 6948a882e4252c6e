// ModelConfig: the architecture hyper-parameters read from a Hugging Face config.json (and the stop
// ids of generation_config.json).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "comm/status.h"

namespace zr {

// llama also covers Mistral-style checkpoints; qwen2 has q/k/v biases; qwen3 normalizes q and k.
enum class Architecture { llama, qwen2, qwen3 };

// config.json rope_scaling (rope_type or type): how the RoPE inverse frequencies are rescaled for
// long contexts, with Hugging Face's semantics (modeling_rope_utils.py). model/rope.h applies it.
struct RopeScaling {
  enum class Type { none, linear, llama3 };
  Type type = Type::none;
  double factor = 1.0;                       // linear: inv_freq / factor; llama3: the low-frequency divisor
  double low_freq_factor = 1.0;              // llama3 only
  double high_freq_factor = 4.0;             // llama3 only
  int original_max_position_embeddings = 0;  // llama3 only: the pre-training context
};

struct ModelConfig {
  Architecture arch = Architecture::llama;
  std::string arch_name = "LlamaForCausalLM";  // as written in config.json
  int hidden_size = 0;                         // d
  int intermediate_size = 0;                   // ffn
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;  // GQA: num_heads % num_kv_heads == 0
  int head_dim = 0;      // defaults to hidden_size / num_heads
  int vocab_size = 0;
  int max_position_embeddings = 0;  // context length
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2 (and llama / Qwen3 with attention_bias: true)
  bool qk_norm = false;   // Qwen3: RMSNorm of each q and k head (weights (head_dim)) before RoPE
  RopeScaling rope_scaling;
  int bos_token_id = 1;  // -1 when the model has none
  // The stop ids: config.json's eos_token_id (an int or a list) followed by those of
  // generation_config.json that it lacks (from_dir). A generation stops on any of them unless
  // ignore_eos (SGLang reads the union of both files the same way).
  std::vector<int> eos_token_ids;
  int pad_token_id = -1;
  std::string torch_dtype = "float32";

  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
  // Parameters of every tensor of model_tensor_specs (model/weights.h), a tied lm_head once.
  int64_t num_params() const;

  // Parses and validates; errors name the field (e.g. "config.json: num_attention_heads ...").
  static Result<ModelConfig> from_json_text(const std::string& text);
  // DIR/config.json, then DIR/generation_config.json when present: its eos_token_id joins the stop
  // ids, its bos/pad_token_id fill in what config.json leaves out (errors name that file).
  static Result<ModelConfig> from_dir(const std::string& dir);
  std::string to_json_text() const;  // HF config.json, round-trips through from_json_text
};

}  // namespace zr
