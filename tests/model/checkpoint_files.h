// Synthetic checkpoints for the checkpoint I/O tests (test_dtype, test_config, test_safetensors,
// test_weights): a tiny llama config.json, deterministic tensors, safetensors files written by hand
// or sharded, and EXPECT_ERROR for a Status's code and message.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/dtype.h"
#include "model/safetensors.h"
#include "model/weights.h"

// EXPR is a Status: its code is ERR_CODE and its message contains NEEDLE.
#define EXPECT_ERROR(expr, err_code, needle)                               \
  do {                                                                     \
    const Status st_ = (expr);                                             \
    EXPECT_EQ(st_.code, err_code) << st_.to_string();                      \
    EXPECT_NE(st_.message.find(needle), std::string::npos) << st_.message; \
  } while (0)

namespace zr::testing {

using json = nlohmann::json;

inline uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}
inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A safetensors file written by hand: 8-byte LE header length, header text, data.
inline void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(uint64_t{header.size()} >> (8 * i));
  write_text(path, out + header + data);
}

// A tiny llama: d=8, ffn=16, 2 layers, 2 heads of 4, 1 kv head, vocab 16.
inline json tiny_config(const json& patch = json::object()) {
  json j = {{"architectures", {"LlamaForCausalLM"}},
            {"hidden_size", 8},
            {"intermediate_size", 16},
            {"num_hidden_layers", 2},
            {"num_attention_heads", 2},
            {"num_key_value_heads", 1},
            {"vocab_size", 16},
            {"max_position_embeddings", 32},
            {"rms_norm_eps", 1e-5},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", false},
            {"bos_token_id", 1},
            {"eos_token_id", 2},
            {"torch_dtype", "float32"}};
  j.merge_patch(patch);
  return j;
}

inline ModelConfig parse(const json& j) {
  auto c = ModelConfig::from_json_text(j.dump());
  ZR_CHECK_MSG(c.ok(), c.status().to_string());
  return *c;
}

// Deterministic values per tensor: value(i) = sin(seed * 0.37 + i * 0.11), stored in `dtype`.
inline TensorToWrite make_tensor(const std::string& name, std::vector<int64_t> shape, DType dtype, int seed) {
  TensorToWrite t{name, dtype, std::move(shape), {}};
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  t.bytes.resize(static_cast<size_t>(n) * dtype_size(dtype));
  for (int64_t i = 0; i < n; ++i) {
    float v = std::sin(seed * 0.37f + i * 0.11f);
    uint16_t h = dtype == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
    if (dtype == DType::f32) std::memcpy(&t.bytes[i * 4], &v, 4);
    else std::memcpy(&t.bytes[i * 2], &h, 2);
  }
  return t;
}

inline std::vector<TensorToWrite> model_tensors(const ModelConfig& cfg, DType dtype) {
  std::vector<TensorToWrite> out;
  int seed = 0;
  for (const auto& s : model_tensor_specs(cfg))
    if (!s.optional) out.push_back(make_tensor(s.name, s.shape, dtype, seed++));
  return out;
}

// DIR/config.json + DIR/model.safetensors.
inline void write_model(const std::string& dir, const json& cfg_json, const std::vector<TensorToWrite>& tensors) {
  write_text(dir + "/config.json", cfg_json.dump(2));
  ASSERT_TRUE(write_safetensors(dir + "/model.safetensors", tensors).ok());
}

inline Status load_status(const std::string& dir) {
  auto cfg = ModelConfig::from_dir(dir);
  if (!cfg.ok()) return cfg.status();
  return ModelWeights::load_dir(*cfg, dir).status();
}

// Writes `tensors` as two shards plus model.safetensors.index.json.
inline void write_sharded(const std::string& dir, const std::vector<TensorToWrite>& tensors) {
  size_t half = tensors.size() / 2;
  std::vector<TensorToWrite> a(tensors.begin(), tensors.begin() + half), b(tensors.begin() + half, tensors.end());
  const std::string fa = "model-00001-of-00002.safetensors", fb = "model-00002-of-00002.safetensors";
  ASSERT_TRUE(write_safetensors(dir + "/" + fa, a).ok());
  ASSERT_TRUE(write_safetensors(dir + "/" + fb, b).ok());
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  for (const auto& t : a) index["weight_map"][t.name] = fa;
  for (const auto& t : b) index["weight_map"][t.name] = fb;
  write_text(dir + "/model.safetensors.index.json", index.dump(2));
}

}  // namespace zr::testing
