// make-model --preset qwen2.5-0.5b end to end: the tensors it writes (names, shapes, bf16, q/k/v
// biases, no lm_head: tied), its config, and the engine loading it and generating over the full
// 151,936-entry vocabulary, with the real Qwen tokenizer from ../shared when present (token ids
// only otherwise). ~1 GB in a temp folder, removed at the end; labelled slow.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "model/make_model.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

constexpr int kQwenVocab = 151936;
constexpr int kEndOfText = 151643;  // Qwen2.5's <|endoftext|>: bos and eos in its config.json

// The shared Qwen tokenizer folder, or "none" (token-only mode) when ../shared is absent.
std::string qwen_tokenizer() {
  namespace fs = std::filesystem;
  const char* env = std::getenv("ZROLLOUT_TEST_MODELS");
  const fs::path root = env && *env ? fs::path(env) : fs::path(ZR_SOURCE_DIR) / "../shared/models";
  const fs::path dir = root / "tokenizers/qwen3";
  return fs::exists(dir / "tokenizer.json") ? dir.string() : "none";
}

void check_tensors(const ModelConfig& cfg, const std::string& dir) {
  auto ar = SafetensorsArchive::open_dir(dir);
  ASSERT_TRUE(ar.ok()) << ar.status().to_string();
  EXPECT_EQ(ar->find("lm_head.weight"), nullptr) << "written although tied";
  size_t expected = 0;
  for (const TensorSpec& spec : model_tensor_specs(cfg)) {
    if (spec.optional) continue;
    ++expected;
    const TensorView* t = ar->find(spec.name);
    ASSERT_NE(t, nullptr) << spec.name;
    EXPECT_EQ(t->dtype, DType::bf16) << spec.name;
    EXPECT_EQ(t->shape, spec.shape) << spec.name;
  }
  EXPECT_EQ(ar->tensors().size(), expected);
  // Hugging Face's own names and shapes for Qwen2.5-0.5B (14 heads of 64, 2 KV heads).
  const std::pair<const char*, std::vector<int64_t>> hf[] = {
      {"model.embed_tokens.weight", {kQwenVocab, 896}},
      {"model.layers.0.self_attn.q_proj.weight", {896, 896}},
      {"model.layers.0.self_attn.q_proj.bias", {896}},
      {"model.layers.23.self_attn.k_proj.weight", {128, 896}},
      {"model.layers.23.self_attn.k_proj.bias", {128}},
      {"model.layers.23.self_attn.v_proj.bias", {128}},
      {"model.layers.23.self_attn.o_proj.weight", {896, 896}},
      {"model.layers.23.mlp.gate_proj.weight", {4864, 896}},
      {"model.layers.23.mlp.down_proj.weight", {896, 4864}},
      {"model.layers.23.post_attention_layernorm.weight", {896}},
      {"model.norm.weight", {896}},
  };
  for (const auto& [name, shape] : hf) {
    const TensorView* t = ar->find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->shape, shape) << name;
  }
  EXPECT_EQ(ar->find("model.layers.0.self_attn.o_proj.bias"), nullptr);  // Qwen2 has q/k/v biases only
}

TEST(MakeModelQwenPreset, WritesQwen25ShapeAndTheEngineGenerates) {
  testing::TempDir tmp;
  MakeModelOptions opt;
  opt.preset = "qwen2.5-0.5b";
  opt.tokenizer = qwen_tokenizer();
  opt.out_dir = tmp.path() + "/m";
  const Status made = make_model(opt);
  ASSERT_TRUE(made.ok()) << made.to_string();
  auto cfg = ModelConfig::from_dir(opt.out_dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->arch_name, "Qwen2ForCausalLM");
  EXPECT_TRUE(cfg->qkv_bias);
  EXPECT_TRUE(cfg->tie_word_embeddings);
  EXPECT_EQ(cfg->vocab_size, kQwenVocab);
  EXPECT_EQ(cfg->rope_theta, 1e6f);
  EXPECT_EQ(cfg->bos_token_id, kEndOfText);
  EXPECT_EQ(cfg->eos_token_ids, std::vector<int>{kEndOfText});
  EXPECT_EQ(cfg->torch_dtype, "bfloat16");
  check_tensors(*cfg, opt.out_dir);
  EXPECT_EQ(std::filesystem::exists(opt.out_dir + "/tokenizer.json"), opt.tokenizer != "none");

  EngineOptions eo;
  eo.kv_prefault = false;
  auto eng = testing::load_engine(opt.out_dir, eo);
  ASSERT_NE(eng, nullptr);
  GenerateRequest g;
  g.rid = "g";
  g.input_ids = {9707, 11, 1879, 0, 151000, 42, 7, 100000};  // ids across the whole vocabulary
  g.sampling_params.max_new_tokens = 4;
  g.sampling_params.temperature = 0.0f;
  g.sampling_params.ignore_eos = true;
  g.return_logprob = true;
  g.top_logprobs_num = 5;
  ASSERT_TRUE(eng->submit(g).ok());
  auto run = testing::run_to_completion(*eng);
  const SampleOutput& o = run.samples.at("g").at(0);
  ASSERT_EQ(o.output_ids.size(), 4u);
  ASSERT_EQ(o.meta_info.output_top_logprobs.size(), 4u);
  std::vector<int> completion;
  for (size_t k = 0; k < 4; ++k) {
    const int id = o.output_ids[k];
    EXPECT_TRUE(id >= 0 && id < kQwenVocab) << id;
    const auto& top = o.meta_info.output_top_logprobs[k];
    ASSERT_EQ(top.size(), 5u);
    EXPECT_EQ(top[0].token_id, id) << "greedy takes the most likely token";
    for (size_t j = 1; j < top.size(); ++j) EXPECT_LE(*top[j].logprob, *top[j - 1].logprob);
    const float lp = *o.meta_info.output_token_logprobs[k].logprob;
    EXPECT_TRUE(std::isfinite(lp) && lp <= 0.0f) << lp;
    completion.push_back(id);
  }
  // score gives the same bits for the same tokens (the 152K-row log-softmax on both paths).
  ASSERT_TRUE(eng->submit_score(ScoreRequest{"s", g.input_ids, completion, 1.0f, 0}).ok());
  auto scored = testing::run_to_completion(*eng).scores.at("s");
  for (size_t k = 0; k < 4; ++k) EXPECT_EQ(scored.logprobs[k], *o.meta_info.output_token_logprobs[k].logprob) << k;
}

}  // namespace
}  // namespace zr
