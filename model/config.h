// ModelConfig: the architecture hyper-parameters read from a Hugging Face config.json.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "comm/status.h"

namespace zr {

enum class Architecture { llama, qwen2 };  // llama also covers Mistral-style checkpoints

struct ModelConfig {
  Architecture arch = Architecture::llama;
  std::string arch_name = "LlamaForCausalLM";  // as written in config.json
  int hidden_size = 0;          // d
  int intermediate_size = 0;    // ffn
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;         // GQA: num_heads % num_kv_heads == 0
  int head_dim = 0;             // defaults to hidden_size / num_heads
  int vocab_size = 0;
  int max_position_embeddings = 0;  // context length
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;        // Qwen2 (and llama with attention_bias: true)
  int bos_token_id = 1;         // -1 when the model has none
  std::vector<int> eos_token_ids;  // config.json may give an int or a list
  int pad_token_id = -1;
  std::string torch_dtype = "float32";

  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
  // Parameters in the matmuls plus embeddings (what one token's forward reads).
  int64_t num_params() const;

  // Parses and validates; errors name the field (e.g. "config.json: num_attention_heads ...").
  static Result<ModelConfig> from_json_text(const std::string& text);
  static Result<ModelConfig> from_dir(const std::string& dir);  // reads DIR/config.json
  std::string to_json_text() const;  // HF config.json, round-trips through from_json_text
};

}  // namespace zr
