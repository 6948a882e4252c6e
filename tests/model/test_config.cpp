// config.json: the Llama, Mistral and Qwen2 fields, defaults and errors; the Qwen3 and Llama 3.1
// families, rope_scaling, the RoPE frequencies and generation_config.json, against the shared
// stories260K / qwen3-tiny / llama31-tiny folders (their README gives shapes, parameter counts and
// stop ids) and synthetic configs.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>

#include "model/config.h"
#include "model/rope.h"
#include "model/weights.h"
#include "tests/model/checkpoint_files.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using json = nlohmann::json;
using testing::bits;
using testing::parse;
using testing::TempDir;
using testing::tiny_config;
using testing::write_text;

// A tiny Qwen3: d=8, 2 heads of head_dim 6 (q_dim 12 != d), 1 kv head, vocab 32.
json qwen3_config(const json& patch = json::object()) {
  json j = {{"architectures", {"Qwen3ForCausalLM"}},
            {"model_type", "qwen3"},
            {"hidden_size", 8},
            {"intermediate_size", 16},
            {"num_hidden_layers", 2},
            {"num_attention_heads", 2},
            {"num_key_value_heads", 1},
            {"head_dim", 6},
            {"vocab_size", 32},
            {"max_position_embeddings", 64},
            {"rms_norm_eps", 1e-6},
            {"rope_theta", 1000000},
            {"rope_scaling", nullptr},
            {"attention_bias", false},
            {"use_sliding_window", false},
            {"sliding_window", nullptr},
            {"tie_word_embeddings", true},
            {"bos_token_id", 30},
            {"eos_token_id", 31}};
  j.merge_patch(patch);
  return j;
}

json llama3_scaling(const json& patch = json::object()) {
  json r = {{"factor", 8.0},
            {"low_freq_factor", 1.0},
            {"high_freq_factor", 4.0},
            {"original_max_position_embeddings", 8192},
            {"rope_type", "llama3"}};
  r.merge_patch(patch);
  return r;
}

Status parse_status(const json& j) { return ModelConfig::from_json_text(j.dump()).status(); }

// The parameter count written out from the architecture (num_params() sums the tensor registry):
// q, k, v, o; gate, up, down; two norms per layer; biases and q/k norms when present; embedding,
// final norm and an untied lm_head.
int64_t formula_params(const ModelConfig& c) {
  const int64_t d = c.hidden_size, ffn = c.intermediate_size, q = c.q_dim(), kv = c.kv_dim();
  int64_t layer = d * q + 2 * d * kv + q * d + 3 * d * ffn + 2 * d;
  if (c.qkv_bias) layer += q + 2 * kv;
  if (c.qk_norm) layer += 2 * c.head_dim;
  int64_t n = int64_t{c.vocab_size} * d + c.num_layers * layer + d;
  if (!c.tie_word_embeddings) n += int64_t{c.vocab_size} * d;
  return n;
}

TEST(ConfigFamilies, Qwen3Tiny) {
  ZR_REQUIRE_SHARED_MODEL(dir, "qwen3-tiny");
  auto c = ModelConfig::from_dir(dir);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->arch, Architecture::qwen3);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->q_dim(), 128);
  EXPECT_EQ(c->kv_dim(), 64);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::none);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->num_params(), 9841088);  // README-families.md
  EXPECT_EQ(formula_params(*c), c->num_params());
  // config.json says 151645; generation_config.json adds 151643 (<|endoftext|>).
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{151645, 151643}));
  EXPECT_EQ(c->bos_token_id, 151643);
  const auto specs = model_tensor_specs(*c);
  auto find = [&](const std::string& name) -> const TensorSpec* {
    for (const auto& s : specs)
      if (s.name == name) return &s;
    return nullptr;
  };
  ASSERT_NE(find("model.layers.1.self_attn.q_norm.weight"), nullptr);
  EXPECT_EQ(find("model.layers.1.self_attn.q_norm.weight")->shape, (std::vector<int64_t>{32}));
  EXPECT_EQ(find("model.layers.0.self_attn.k_norm.weight")->role, TensorRole::k_norm);
  EXPECT_EQ(find("model.layers.0.self_attn.q_proj.weight")->shape, (std::vector<int64_t>{128, 64}));
  EXPECT_EQ(find("model.layers.0.self_attn.o_proj.weight")->shape, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(find("model.layers.0.self_attn.q_proj.bias"), nullptr);
}

TEST(ConfigFamilies, Llama31Tiny) {
  ZR_REQUIRE_SHARED_MODEL(dir, "llama31-tiny");
  auto c = ModelConfig::from_dir(dir);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->arch, Architecture::llama);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->num_kv_heads, 1);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::llama3);
  EXPECT_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c->rope_theta, 500000.0f);
  EXPECT_EQ(c->num_params(), 16511296);  // README-families.md
  EXPECT_EQ(formula_params(*c), c->num_params());
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(c->bos_token_id, 128000);
}

TEST(ConfigFamilies, Qwen3Fields) {
  ModelConfig c = parse(qwen3_config());
  EXPECT_EQ(c.arch_name, "Qwen3ForCausalLM");
  EXPECT_EQ(c.q_dim(), 12);
  EXPECT_EQ(formula_params(c), c.num_params());
  ModelConfig biased = parse(qwen3_config({{"attention_bias", true}}));
  EXPECT_TRUE(biased.qkv_bias);
  EXPECT_EQ(formula_params(biased), biased.num_params());
  // Sliding window only counts with use_sliding_window (as for Qwen2).
  EXPECT_TRUE(ModelConfig::from_json_text(qwen3_config({{"sliding_window", 4}}).dump()).ok());
  EXPECT_ERROR(parse_status(qwen3_config({{"sliding_window", 4}, {"use_sliding_window", true}})),
               ErrorCode::unsupported, "sliding_window");
  // Without architectures, model_type names it.
  json no_arch = qwen3_config();
  no_arch.erase("architectures");
  EXPECT_EQ(parse(no_arch).arch, Architecture::qwen3);
}

TEST(ConfigFamilies, RopeScalingForms) {
  ModelConfig l3 = parse(qwen3_config({{"rope_scaling", llama3_scaling()}}));
  EXPECT_EQ(l3.rope_scaling.type, RopeScaling::Type::llama3);
  // Older configs spell the key "type"; rope_type wins when both are there.
  ModelConfig lin = parse(qwen3_config({{"rope_scaling", {{"type", "linear"}, {"factor", 2.5}}}}));
  EXPECT_EQ(lin.rope_scaling.type, RopeScaling::Type::linear);
  EXPECT_EQ(lin.rope_scaling.factor, 2.5);
  EXPECT_EQ(parse(qwen3_config({{"rope_scaling", {{"type", "yarn"}, {"rope_type", "linear"}, {"factor", 2}}}}))
                .rope_scaling.type,
            RopeScaling::Type::linear);
  EXPECT_EQ(parse(qwen3_config({{"rope_scaling", {{"rope_type", "default"}}}})).rope_scaling.type,
            RopeScaling::Type::none);
  // transformers 5: rope_parameters, with rope_theta inside.
  ModelConfig v5 =
      parse(qwen3_config({{"rope_theta", nullptr}, {"rope_parameters", llama3_scaling({{"rope_theta", 500000.0}})}}));
  EXPECT_EQ(v5.rope_scaling.type, RopeScaling::Type::llama3);
  EXPECT_EQ(v5.rope_theta, 500000.0f);
}

TEST(ConfigFamilies, RopeScalingErrorsNameTheField) {
  auto with = [](const json& r) { return parse_status(qwen3_config({{"rope_scaling", r}})); };
  EXPECT_ERROR(with({{"rope_type", "yarn"}, {"factor", 4.0}}), ErrorCode::unsupported, "rope_scaling.rope_type");
  EXPECT_ERROR(with({{"type", "dynamic"}, {"factor", 2.0}}), ErrorCode::unsupported, "'dynamic'");
  EXPECT_ERROR(with({{"rope_type", "longrope"}}), ErrorCode::unsupported, "rope_scaling.rope_type");
  EXPECT_ERROR(with({{"rope_type", "linear"}}), ErrorCode::invalid_argument, "rope_scaling.factor is missing");
  EXPECT_ERROR(with({{"rope_type", "linear"}, {"factor", 0}}), ErrorCode::invalid_argument, "rope_scaling.factor");
  EXPECT_ERROR(with(llama3_scaling({{"original_max_position_embeddings", nullptr}})), ErrorCode::invalid_argument,
               "rope_scaling.original_max_position_embeddings");
  EXPECT_ERROR(with(llama3_scaling({{"low_freq_factor", nullptr}})), ErrorCode::invalid_argument,
               "rope_scaling.low_freq_factor");
  EXPECT_ERROR(with(llama3_scaling({{"high_freq_factor", 1.0}})), ErrorCode::invalid_argument,
               "rope_scaling.high_freq_factor");
  EXPECT_ERROR(with(llama3_scaling({{"factor", "8"}})), ErrorCode::invalid_argument, "rope_scaling.factor");
  EXPECT_ERROR(with("llama3"), ErrorCode::invalid_argument, "rope_scaling");
}

TEST(ConfigFamilies, JsonRoundTrips) {
  for (const json& j : {qwen3_config(), qwen3_config({{"attention_bias", true}, {"tie_word_embeddings", false}}),
                        qwen3_config({{"rope_scaling", llama3_scaling()}}),
                        qwen3_config({{"architectures", {"LlamaForCausalLM"}},
                                      {"rope_scaling", {{"rope_type", "linear"}, {"factor", 4.0}}}})}) {
    ModelConfig a = parse(j);
    const std::string text = a.to_json_text();
    auto b = ModelConfig::from_json_text(text);
    ASSERT_TRUE(b.ok()) << b.status().to_string() << "\n" << text;
    EXPECT_EQ(b->arch, a.arch);
    EXPECT_EQ(b->qk_norm, a.qk_norm);
    EXPECT_EQ(b->qkv_bias, a.qkv_bias);
    EXPECT_EQ(b->head_dim, a.head_dim);
    EXPECT_EQ(b->rope_scaling.type, a.rope_scaling.type);
    EXPECT_EQ(b->rope_scaling.factor, a.rope_scaling.factor);
    EXPECT_EQ(b->rope_scaling.original_max_position_embeddings, a.rope_scaling.original_max_position_embeddings);
    EXPECT_EQ(b->to_json_text(), text);
  }
}

// ---------------------------------------------------------------------------------------------
// RoPE frequencies

TEST(Rope, DefaultAndLinear) {
  ModelConfig c = parse(qwen3_config({{"head_dim", 16}, {"rope_theta", 10000}}));
  const auto inv = rope_inverse_frequencies(c);
  ASSERT_EQ(inv.size(), 8u);
  for (size_t i = 0; i < inv.size(); ++i) EXPECT_DOUBLE_EQ(inv[i], std::pow(10000.0, -2.0 * i / 16));
  ModelConfig lin = parse(qwen3_config(
      {{"head_dim", 16}, {"rope_theta", 10000}, {"rope_scaling", {{"rope_type", "linear"}, {"factor", 4.0}}}}));
  const auto scaled = rope_inverse_frequencies(lin);
  for (size_t i = 0; i < inv.size(); ++i) EXPECT_DOUBLE_EQ(scaled[i], inv[i] / 4.0);
  // Position p with factor 4 is position p / 4 without scaling.
  RopeTable a = make_rope_table(c, 9), b = make_rope_table(lin, 33);
  for (int i = 0; i < 8; ++i) {
    EXPECT_FLOAT_EQ(b.cos_row(32)[i], a.cos_row(8)[i]);
    EXPECT_FLOAT_EQ(b.sin_row(32)[i], a.sin_row(8)[i]);
  }
}

// llama31-tiny's frequencies (head_dim 16, theta 500000, factor 8, low 1, high 4, context 8192):
// README-families.md says the first 4 are unchanged, the 5th is scaled by 0.371122 and the last 3
// divided by 8. Across many thetas the scale never leaves [1/factor, 1] and falls with wavelength.
TEST(Rope, Llama3Scaling) {
  ZR_REQUIRE_SHARED_MODEL(dir, "llama31-tiny");
  ModelConfig c = std::move(ModelConfig::from_dir(dir)).value();
  ModelConfig plain = c;
  plain.rope_scaling = {};
  const auto inv = rope_inverse_frequencies(c), base = rope_inverse_frequencies(plain);
  ASSERT_EQ(inv.size(), 8u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(inv[i], base[i]) << i;
  EXPECT_NEAR(inv[4] / base[4], 0.371122, 1e-6);
  for (int i = 5; i < 8; ++i) EXPECT_DOUBLE_EQ(inv[i], base[i] / 8.0) << i;
  for (double theta : {1e4, 5e4, 5e5, 1e6, 3e6}) {
    ModelConfig t = c;
    t.head_dim = 128;
    t.rope_theta = static_cast<float>(theta);
    ModelConfig tp = t;
    tp.rope_scaling = {};
    const auto s = rope_inverse_frequencies(t), b = rope_inverse_frequencies(tp);
    double prev = 1.0;
    for (size_t i = 0; i < s.size(); ++i) {
      const double r = s[i] / b[i];
      EXPECT_GE(r, 1.0 / 8 - 1e-15);
      EXPECT_LE(r, prev + 1e-15) << "theta " << theta << " i " << i;  // frequencies fall with i
      prev = r;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// generation_config.json

TEST(GenerationConfig, StopIdsAreTheUnionInOrder) {
  TempDir tmp;
  write_text(tmp / "config.json", qwen3_config({{"eos_token_id", {31, 5}}, {"bos_token_id", nullptr}}).dump());
  auto only = ModelConfig::from_dir(tmp.path());
  ASSERT_TRUE(only.ok()) << only.status().to_string();
  EXPECT_EQ(only->eos_token_ids, (std::vector<int>{31, 5}));
  EXPECT_EQ(only->bos_token_id, -1);
  write_text(
      tmp / "generation_config.json",
      json{{"eos_token_id", {7, 31, 9}}, {"bos_token_id", 30}, {"pad_token_id", 2}, {"temperature", 0.6}}.dump());
  auto both = ModelConfig::from_dir(tmp.path());
  ASSERT_TRUE(both.ok()) << both.status().to_string();
  EXPECT_EQ(both->eos_token_ids, (std::vector<int>{31, 5, 7, 9}));
  EXPECT_EQ(both->bos_token_id, 30);  // config.json had none
  EXPECT_EQ(both->pad_token_id, 2);
  write_text(tmp / "generation_config.json", json{{"eos_token_id", 6}, {"bos_token_id", 3}}.dump());
  auto one = ModelConfig::from_dir(tmp.path());
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->eos_token_ids, (std::vector<int>{31, 5, 6}));
  EXPECT_EQ(one->bos_token_id, 3);
  // config.json without eos: the generation config's ids are the stop ids.
  write_text(tmp / "config.json", qwen3_config({{"eos_token_id", nullptr}, {"bos_token_id", 1}}).dump());
  auto gen_only = ModelConfig::from_dir(tmp.path());
  ASSERT_TRUE(gen_only.ok());
  EXPECT_EQ(gen_only->eos_token_ids, (std::vector<int>{6}));
  EXPECT_EQ(gen_only->bos_token_id, 1);  // config.json's wins
}

TEST(GenerationConfig, ErrorsNameTheFileAndField) {
  TempDir tmp;
  write_text(tmp / "config.json", qwen3_config().dump());
  write_text(tmp / "generation_config.json", json{{"eos_token_id", {7, 32}}}.dump());
  EXPECT_ERROR(ModelConfig::from_dir(tmp.path()).status(), ErrorCode::invalid_argument,
               "generation_config.json: eos_token_id 32 is outside the vocabulary");
  write_text(tmp / "generation_config.json", json{{"eos_token_id", {7, "x"}}}.dump());
  EXPECT_ERROR(ModelConfig::from_dir(tmp.path()).status(), ErrorCode::invalid_argument,
               "generation_config.json: eos_token_id");
  write_text(tmp / "generation_config.json", json{{"eos_token_id", -4}}.dump());
  EXPECT_ERROR(ModelConfig::from_dir(tmp.path()).status(), ErrorCode::invalid_argument, "eos_token_id");
  write_text(tmp / "generation_config.json", "{not json");
  EXPECT_ERROR(ModelConfig::from_dir(tmp.path()).status(), ErrorCode::invalid_argument,
               "generation_config.json: invalid JSON");
  write_text(tmp / "generation_config.json", "[1]");
  EXPECT_ERROR(ModelConfig::from_dir(tmp.path()).status(), ErrorCode::invalid_argument, "generation_config.json");
}

// ---------------------------------------------------------------------------------------------
// Llama, Mistral and Qwen2 config.json against a tiny llama (checkpoint_files.h) and stories260K

TEST(LoaderConfig, ParsesStories) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  auto c = ModelConfig::from_dir(dir);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->arch, Architecture::llama);
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 172);
  EXPECT_EQ(c->num_layers, 5);
  EXPECT_EQ(c->num_heads, 8);
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c->rope_theta, 10000.0f);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_ids, std::vector<int>{2});
  EXPECT_EQ(c->pad_token_id, -1);
  EXPECT_EQ(c->torch_dtype, "float32");
  EXPECT_EQ(c->num_params(), 260032);  // the "260K"
}

TEST(LoaderConfig, DefaultsAndEosList) {
  json j = tiny_config({{"num_key_value_heads", nullptr}, {"eos_token_id", {2, 3}}, {"pad_token_id", nullptr}});
  ModelConfig c = parse(j);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{2, 3}));
  EXPECT_EQ(c.pad_token_id, -1);
  j.erase("tie_word_embeddings");
  EXPECT_FALSE(parse(j).tie_word_embeddings);
  EXPECT_TRUE(parse(tiny_config({{"attention_bias", true}})).qkv_bias);
}

void expect_same(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.arch_name, b.arch_name);
  EXPECT_EQ(std::tie(a.hidden_size, a.intermediate_size, a.num_layers, a.num_heads, a.num_kv_heads, a.head_dim),
            std::tie(b.hidden_size, b.intermediate_size, b.num_layers, b.num_heads, b.num_kv_heads, b.head_dim));
  EXPECT_EQ(std::tie(a.vocab_size, a.max_position_embeddings, a.bos_token_id, a.pad_token_id),
            std::tie(b.vocab_size, b.max_position_embeddings, b.bos_token_id, b.pad_token_id));
  EXPECT_EQ(bits(a.rms_norm_eps), bits(b.rms_norm_eps));
  EXPECT_EQ(bits(a.rope_theta), bits(b.rope_theta));
  EXPECT_EQ(std::tie(a.tie_word_embeddings, a.qkv_bias, a.eos_token_ids, a.torch_dtype),
            std::tie(b.tie_word_embeddings, b.qkv_bias, b.eos_token_ids, b.torch_dtype));
}

TEST(LoaderConfig, JsonRoundTrips) {
  std::vector<json> cases = {
      tiny_config({{"rms_norm_eps", 1e-6}, {"rope_theta", 500000.0}, {"eos_token_id", {2, 3, 7}}}),
      tiny_config({{"architectures", {"MistralForCausalLM"}},
                   {"sliding_window", nullptr},
                   {"tie_word_embeddings", true},
                   {"bos_token_id", nullptr},
                   {"pad_token_id", 0}}),
      tiny_config({{"architectures", {"Qwen2ForCausalLM"}}, {"torch_dtype", "bfloat16"}, {"head_dim", 6}}),
      tiny_config({{"attention_bias", true}, {"eos_token_id", nullptr}})};
  for (const auto& j : cases) {
    ModelConfig a = parse(j);
    std::string text = a.to_json_text();
    auto b = ModelConfig::from_json_text(text);
    ASSERT_TRUE(b.ok()) << b.status().to_string() << "\n" << text;
    expect_same(a, *b);
    EXPECT_EQ(b->to_json_text(), text);
  }
}

TEST(LoaderConfig, MistralAndQwen2) {
  ModelConfig m = parse(tiny_config({{"architectures", {"MistralForCausalLM"}}, {"sliding_window", 32}}));
  EXPECT_EQ(m.arch, Architecture::llama);
  EXPECT_EQ(m.arch_name, "MistralForCausalLM");
  EXPECT_ERROR(ModelConfig::from_json_text(
                   tiny_config({{"architectures", {"MistralForCausalLM"}}, {"sliding_window", 16}}).dump())
                   .status(),
               ErrorCode::unsupported, "sliding_window");
  ModelConfig q = parse(
      tiny_config({{"architectures", {"Qwen2ForCausalLM"}}, {"sliding_window", 4}, {"use_sliding_window", false}}));
  EXPECT_EQ(q.arch, Architecture::qwen2);
  EXPECT_TRUE(q.qkv_bias);
  EXPECT_EQ(q.num_params(), parse(tiny_config()).num_params() + 2 * (8 + 4 + 4));
}

TEST(LoaderConfig, NumParamsMatchesSpecs) {
  for (const json& j : {tiny_config(), tiny_config({{"tie_word_embeddings", true}}),
                        tiny_config({{"architectures", {"Qwen2ForCausalLM"}}})}) {
    ModelConfig c = parse(j);
    int64_t n = 0;
    for (const auto& s : model_tensor_specs(c)) {
      int64_t e = 1;
      for (int64_t d : s.shape) e *= d;
      if (!s.optional) n += e;
    }
    EXPECT_EQ(c.num_params(), n);
  }
}

TEST(LoaderConfig, Errors) {
  TempDir tmp;
  EXPECT_ERROR(ModelConfig::from_dir(tmp.path()).status(), ErrorCode::not_found, "config.json");
  auto bad = [](const json& patch) { return ModelConfig::from_json_text(tiny_config(patch).dump()).status(); };
  EXPECT_ERROR(bad({{"architectures", {"GPT2LMHeadModel"}}}), ErrorCode::unsupported, "architectures");
  EXPECT_ERROR(bad({{"hidden_act", "gelu"}}), ErrorCode::unsupported, "hidden_act");
  EXPECT_ERROR(bad({{"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}}}), ErrorCode::unsupported,
               "rope_scaling.rope_type");
  EXPECT_ERROR(bad({{"num_attention_heads", 4}, {"num_key_value_heads", 3}}), ErrorCode::invalid_argument,
               "num_key_value_heads");
  EXPECT_ERROR(bad({{"vocab_size", nullptr}}), ErrorCode::invalid_argument, "vocab_size");
  EXPECT_ERROR(bad({{"hidden_size", 0}}), ErrorCode::invalid_argument, "hidden_size");
  EXPECT_ERROR(bad({{"intermediate_size", -3}}), ErrorCode::invalid_argument, "intermediate_size");
  EXPECT_ERROR(bad({{"num_hidden_layers", "2"}}), ErrorCode::invalid_argument, "num_hidden_layers");
  EXPECT_ERROR(bad({{"hidden_size", 9}}), ErrorCode::invalid_argument, "hidden_size");
  EXPECT_ERROR(bad({{"eos_token_id", 99}}), ErrorCode::invalid_argument, "eos_token_id");
  EXPECT_ERROR(bad({{"tie_word_embeddings", "yes"}}), ErrorCode::invalid_argument, "tie_word_embeddings");
  EXPECT_ERROR(ModelConfig::from_json_text("{not json").status(), ErrorCode::invalid_argument, "config.json");
  write_text(tmp / "config.json", tiny_config({{"hidden_act", "relu"}}).dump());
  EXPECT_ERROR(ModelConfig::from_dir(tmp.path()).status(), ErrorCode::unsupported, tmp / "config.json");
}

}  // namespace
}  // namespace zr
