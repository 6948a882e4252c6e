// make-model: presets, byte-for-byte determinism, the trained tokenizer, dtypes, --like (Llama,
// Qwen3, Llama 3.1 folders).
#include "model/make_model.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>

#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "tests/test_util.h"

namespace zr {
namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void make(const std::string& out, const std::string& preset, uint64_t seed, DType dtype = DType::f32) {
  MakeModelOptions opt;
  opt.preset = preset;
  opt.seed = seed;
  opt.dtype = dtype;
  opt.out_dir = out;
  const Status st = make_model(opt);
  ASSERT_TRUE(st.ok()) << st.to_string();
}

float value_at(const TensorView& t, int64_t i) {
  if (t.dtype == DType::bf16) {
    uint16_t h;
    std::memcpy(&h, static_cast<const uint8_t*>(t.data) + 2 * i, 2);
    return bf16_to_f32(h);
  }
  float f;
  std::memcpy(&f, static_cast<const uint8_t*>(t.data) + 4 * i, 4);
  return f;
}

// Trained tokenizers are shared across tests: training is the slow part of make-model.
const std::string& tiny_dir() {
  static testing::TempDir dir;  // removed at exit
  static const bool made = [] {
    make(dir.path(), "tiny", 0);
    return true;
  }();
  (void)made;
  return dir.path();
}

TEST(MakeModel, PresetConfigs) {
  auto tiny = preset_config("tiny");
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->hidden_size, 128);
  EXPECT_EQ(tiny->intermediate_size, 352);
  EXPECT_EQ(tiny->num_layers, 4);
  EXPECT_EQ(tiny->num_heads, 4);
  EXPECT_EQ(tiny->num_kv_heads, 2);
  EXPECT_EQ(tiny->head_dim, 32);
  EXPECT_EQ(tiny->vocab_size, 1024);
  EXPECT_EQ(tiny->max_position_embeddings, 1024);
  EXPECT_TRUE(tiny->tie_word_embeddings);
  EXPECT_EQ(tiny->eos_token_ids, std::vector<int>{2});
  auto s15 = preset_config("stories15M");
  ASSERT_TRUE(s15.ok());
  EXPECT_EQ(s15->head_dim, 48);
  EXPECT_EQ(s15->max_position_embeddings, 256);
  auto s110 = preset_config("stories110M");
  ASSERT_TRUE(s110.ok());
  EXPECT_EQ(s110->hidden_size, 768);
  EXPECT_EQ(s110->num_layers, 12);
  auto qwen = preset_config("qwen2.5-0.5b");  // Qwen2.5-0.5B's shape
  ASSERT_TRUE(qwen.ok());
  EXPECT_EQ(qwen->arch, Architecture::qwen2);
  EXPECT_TRUE(qwen->qkv_bias);
  EXPECT_TRUE(qwen->tie_word_embeddings);
  EXPECT_EQ(qwen->vocab_size, 151936);
  EXPECT_EQ(qwen->num_layers, 24);
  EXPECT_EQ(qwen->num_heads, 14);
  EXPECT_EQ(qwen->num_kv_heads, 2);
  EXPECT_EQ(qwen->hidden_size, 896);
  EXPECT_EQ(qwen->intermediate_size, 4864);
  auto bad = preset_config("huge");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code, ErrorCode::invalid_argument);
}

TEST(MakeModel, BuiltinCorpus) {
  const std::string_view corpus = builtin_corpus();
  EXPECT_GT(corpus.size(), 40u * 1024);
  EXPECT_LT(corpus.size(), 64u * 1024);
  EXPECT_NE(corpus.find("\xF0\x9F"), std::string_view::npos);  // emoji, for byte fallback
}

TEST(MakeModel, TinyIsDeterministic) {
  testing::TempDir again, other;
  make(again.path(), "tiny", 0);
  make(other.path(), "tiny", 1);
  for (const char* f : {"config.json", "tokenizer.model", "model.safetensors"}) {
    EXPECT_EQ(read_bytes(tiny_dir() + "/" + f), read_bytes(again / f)) << f;
  }
  EXPECT_EQ(read_bytes(tiny_dir() + "/config.json"), read_bytes(other / "config.json"));
  EXPECT_EQ(read_bytes(tiny_dir() + "/tokenizer.model"), read_bytes(other / "tokenizer.model"));
  auto a = SafetensorsArchive::open_dir(tiny_dir());
  auto b = SafetensorsArchive::open_dir(other.path());
  ASSERT_TRUE(a.ok() && b.ok());
  for (const auto& [name, ta] : a->tensors()) {
    const TensorView* tb = b->find(name);
    ASSERT_NE(tb, nullptr) << name;
    ASSERT_EQ(ta.nbytes, tb->nbytes);
    EXPECT_NE(std::memcmp(ta.data, tb->data, ta.nbytes), 0) << name << " ignores the seed";
  }
}

TEST(MakeModel, TinyConfigAndWeights) {
  auto cfg = ModelConfig::from_dir(tiny_dir());
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  ModelConfig want = preset_config("tiny").value();
  want.torch_dtype = "float32";
  EXPECT_EQ(cfg->to_json_text(), want.to_json_text());
  auto ar = SafetensorsArchive::open_dir(tiny_dir());
  ASSERT_TRUE(ar.ok()) << ar.status().to_string();
  size_t expected = 0;
  for (const TensorSpec& spec : model_tensor_specs(*cfg)) {
    const TensorView* t = ar->find(spec.name);
    if (spec.optional) {
      EXPECT_EQ(t, nullptr) << spec.name << " written although tied";
      continue;
    }
    ++expected;
    ASSERT_NE(t, nullptr) << spec.name;
    EXPECT_EQ(t->dtype, DType::f32);
    EXPECT_EQ(t->shape, spec.shape);
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < t->numel(); ++i) sum += value_at(*t, i);
    const double mean = sum / t->numel();
    for (int64_t i = 0; i < t->numel(); ++i) sq += (value_at(*t, i) - mean) * (value_at(*t, i) - mean);
    const double sd = std::sqrt(sq / t->numel());
    const bool norm = spec.name.find("norm") != std::string::npos;
    EXPECT_NEAR(mean, norm ? 1.0 : 0.0, 0.01) << spec.name;
    EXPECT_NEAR(sd, 0.02, norm ? 0.01 : 0.002) << spec.name;
  }
  EXPECT_EQ(ar->tensors().size(), expected);
  auto weights = ModelWeights::load_dir(*cfg, tiny_dir());
  EXPECT_TRUE(weights.ok()) << weights.status().to_string();
}

TEST(MakeModel, TinyTokenizer) {
  auto tok = Tokenizer::load(tiny_dir() + "/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  EXPECT_EQ(tok->num_pieces(), 1024);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->pad_id(), -1);
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_EQ(tok->token_text(3), std::string(1, '\0'));  // <0x00>: byte pieces follow the specials
  const std::vector<std::string> texts = {"Once upon a time, a little fox counted 47 stars.",
                                          "Two  spaces,\ttabs and\nnew lines stay as they are.",
                                          "Caf\xC3\xA9 cr\xC3\xA8me br\xC3\xBBl\xC3\xA9"
                                          "e, \xE7\x8C\xAB \xE5\xB1\xB1 and \xF0\x9F\x9A\x80\xF0\x9F\x90\xB1"};
  for (const std::string& text : texts) {
    const std::vector<int> ids = tok->encode(text, true);
    EXPECT_EQ(ids.front(), 1);
    EXPECT_EQ(tok->decode(ids), text);
    IncrementalDetokenizer det(*tok, true);
    for (int id : ids) det.push(id);
    det.flush();
    EXPECT_EQ(det.text(), text);
  }
  // Characters the corpus barely uses fall back to bytes.
  const std::vector<int> rocket = tok->encode("\xF0\x9F\x9A\x80", false);
  EXPECT_GE(rocket.size(), 4u);
}

TEST(MakeModel, TinyTokenizerStreamsExactly) {
  auto tok = Tokenizer::load(tiny_dir() + "/tokenizer.model");
  ASSERT_TRUE(tok.ok());
  std::mt19937 rng(2024);
  std::uniform_int_distribution<int> any(-2, tok->num_pieces() + 1), byte(3, 258);
  for (int trial = 0; trial < 1000; ++trial) {
    std::vector<int> ids(1 + trial % 30);
    for (int& id : ids) id = rng() % 3 == 0 ? byte(rng) : any(rng);
    for (bool skip : {true, false}) {
      IncrementalDetokenizer det(*tok, skip);
      std::string out;
      for (int id : ids) out += det.push(id);
      out += det.flush();
      ASSERT_EQ(out, tok->decode(ids, skip)) << "trial " << trial;
    }
  }
}

TEST(MakeModel, Bf16IsRoundedF32) {
  testing::TempDir bf;
  make(bf.path(), "tiny", 0, DType::bf16);
  EXPECT_EQ(read_bytes(bf / "tokenizer.model"), read_bytes(tiny_dir() + "/tokenizer.model"));
  auto cfg = ModelConfig::from_dir(bf.path());
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(cfg->torch_dtype, "bfloat16");
  auto f32 = SafetensorsArchive::open_dir(tiny_dir());
  auto b16 = SafetensorsArchive::open_dir(bf.path());
  ASSERT_TRUE(f32.ok() && b16.ok());
  ASSERT_EQ(f32->tensors().size(), b16->tensors().size());
  for (const auto& [name, t] : b16->tensors()) {
    EXPECT_EQ(t.dtype, DType::bf16) << name;
    const TensorView* ref = f32->find(name);
    ASSERT_NE(ref, nullptr);
    ASSERT_EQ(ref->numel(), t.numel());
    for (int64_t i = 0; i < t.numel(); i += 97) {
      float f;
      std::memcpy(&f, static_cast<const uint8_t*>(ref->data) + 4 * i, 4);
      uint16_t h;
      std::memcpy(&h, static_cast<const uint8_t*>(t.data) + 2 * i, 2);
      ASSERT_EQ(h, f32_to_bf16(f)) << name << "[" << i << "]";
    }
  }
}

TEST(MakeModel, LikeStories260K) {
  ZR_REQUIRE_SHARED_MODEL(src, "stories260K");
  testing::TempDir out;
  MakeModelOptions opt;
  opt.like_dir = src;
  opt.seed = 3;
  opt.out_dir = out.path();
  const Status st = make_model(opt);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(read_bytes(out / "tokenizer.model"), read_bytes(src + "/tokenizer.model"));
  auto want = ModelConfig::from_dir(src);
  auto got = ModelConfig::from_dir(out.path());
  ASSERT_TRUE(want.ok() && got.ok());
  EXPECT_EQ(got->to_json_text(), want->to_json_text());
  auto weights = ModelWeights::load_dir(*got, out.path());
  ASSERT_TRUE(weights.ok()) << weights.status().to_string();
  auto ar = SafetensorsArchive::open_dir(out.path());
  ASSERT_TRUE(ar.ok());
  EXPECT_EQ(ar->find("lm_head.weight"), nullptr);  // tied in stories260K's config
  EXPECT_EQ(ar->find("model.embed_tokens.weight")->shape, (std::vector<int64_t>{512, 64}));
}

// --like a Qwen3 or Llama 3.1 folder: config.json keeps every field (rope_scaling, head_dim,
// fields this engine ignores), generation_config.json and the tokenizer files are copied as they
// are, and the weights have the source's names, shapes and dtype (bf16) with new values.
void check_like(const std::string& name) {
  ZR_REQUIRE_SHARED_MODEL(src, name);
  testing::TempDir out;
  MakeModelOptions opt;
  opt.like_dir = src;
  opt.seed = 5;
  opt.out_dir = out.path();
  const Status st = make_model(opt);
  ASSERT_TRUE(st.ok()) << st.to_string();
  for (const char* f : {"generation_config.json", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_EQ(read_bytes(out / f), read_bytes(src + "/" + f)) << f;
  EXPECT_FALSE(std::filesystem::exists(out / "reference.json"));
  EXPECT_EQ(nlohmann::json::parse(read_bytes(out / "config.json")),
            nlohmann::json::parse(read_bytes(src + "/config.json")));
  auto want = ModelConfig::from_dir(src);
  auto got = ModelConfig::from_dir(out.path());
  ASSERT_TRUE(want.ok() && got.ok());
  EXPECT_EQ(got->to_json_text(), want->to_json_text());
  EXPECT_EQ(got->eos_token_ids, want->eos_token_ids);
  auto weights = ModelWeights::load_dir(*got, out.path());
  ASSERT_TRUE(weights.ok()) << weights.status().to_string();
  auto a = SafetensorsArchive::open_dir(src), b = SafetensorsArchive::open_dir(out.path());
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->tensors().size(), b->tensors().size());
  for (const auto& [tname, t] : a->tensors()) {
    const TensorView* m = b->find(tname);
    ASSERT_NE(m, nullptr) << tname;
    EXPECT_EQ(m->dtype, DType::bf16) << tname;
    EXPECT_EQ(m->shape, t.shape) << tname;
    EXPECT_NE(std::memcmp(m->data, t.data, std::min<size_t>(m->nbytes, 64)), 0) << tname << ": new values";
    if (tname.find("norm") != std::string::npos) {
      EXPECT_NEAR(value_at(*m, 0), 1.0f, 0.2f) << tname;
    }
  }
  // --dtype overrides the source's.
  testing::TempDir wide;
  opt.out_dir = wide.path();
  opt.dtype = DType::f32;
  ASSERT_TRUE(make_model(opt).ok());
  auto w = SafetensorsArchive::open_dir(wide.path());
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->find("model.embed_tokens.weight")->dtype, DType::f32);
  EXPECT_EQ(std::move(ModelConfig::from_dir(wide.path())).value().torch_dtype, "float32");
}

TEST(MakeModel, LikeQwen3Tiny) { check_like("qwen3-tiny"); }
TEST(MakeModel, LikeLlama31Tiny) { check_like("llama31-tiny"); }

TEST(MakeModel, Errors) {
  testing::TempDir out;
  MakeModelOptions opt;
  opt.like_dir = out / "missing";
  opt.out_dir = out / "m";
  EXPECT_EQ(make_model(opt).code, ErrorCode::not_found);
  opt.like_dir.clear();
  opt.preset = "huge";
  EXPECT_EQ(make_model(opt).code, ErrorCode::invalid_argument);
  opt.preset = "tiny";
  opt.out_dir.clear();
  EXPECT_EQ(make_model(opt).code, ErrorCode::invalid_argument);
}

TEST(MakeModel, Stories15MTokenizerIsPaddedToVocab) {
  const auto start = std::chrono::steady_clock::now();
  testing::TempDir out;
  make(out.path(), "stories15M", 0, DType::bf16);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(secs, 30.0);
  auto tok = Tokenizer::load(out / "tokenizer.model");
  ASSERT_TRUE(tok.ok());
  ASSERT_EQ(tok->num_pieces(), 32000);
  EXPECT_EQ(tok->token_text(3), "<unused0>");
  EXPECT_TRUE(tok->is_special(3));
  EXPECT_EQ(tok->decode(std::vector<int>{3, 4, 5}), "");
  const std::string text = "The little fox looked at the stars.";
  EXPECT_EQ(tok->decode(tok->encode(text, true)), text);
  auto ar = SafetensorsArchive::open_dir(out.path());
  ASSERT_TRUE(ar.ok());
  EXPECT_EQ(ar->find("model.embed_tokens.weight")->shape, (std::vector<int64_t>{32000, 288}));
}

}  // namespace
}  // namespace zr
