// Checkpoint I/O: dtype conversions, config.json, safetensors (single, sharded, corrupt) and the
// weight registry, against the shared stories260K checkpoints and synthetic files in a TempDir.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>
#include <utility>

#include "model/config.h"
#include "model/dtype.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using json = nlohmann::json;
using testing::TempDir;
namespace fs = std::filesystem;

#define EXPECT_ERROR(expr, err_code, needle)                               \
  do {                                                                     \
    const Status st_ = (expr);                                             \
    EXPECT_EQ(st_.code, err_code) << st_.to_string();                      \
    EXPECT_NE(st_.message.find(needle), std::string::npos) << st_.message; \
  } while (0)

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }
std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A safetensors file written by hand: 8-byte LE header length, header text, data.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(uint64_t{header.size()} >> (8 * i));
  write_text(path, out + header + data);
}

// A tiny llama: d=8, ffn=16, 2 layers, 2 heads of 4, 1 kv head, vocab 16.
json tiny_config(const json& patch = json::object()) {
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

ModelConfig parse(const json& j) {
  auto c = ModelConfig::from_json_text(j.dump());
  ZR_CHECK_MSG(c.ok(), c.status().to_string());
  return *c;
}

// Deterministic values per tensor: value(i) = sin(seed * 0.37 + i * 0.11), stored in `dtype`.
TensorToWrite make_tensor(const std::string& name, std::vector<int64_t> shape, DType dtype, int seed) {
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

std::vector<TensorToWrite> model_tensors(const ModelConfig& cfg, DType dtype) {
  std::vector<TensorToWrite> out;
  int seed = 0;
  for (const auto& s : model_tensor_specs(cfg))
    if (!s.optional) out.push_back(make_tensor(s.name, s.shape, dtype, seed++));
  return out;
}

// DIR/config.json + DIR/model.safetensors.
void write_model(const std::string& dir, const json& cfg_json, const std::vector<TensorToWrite>& tensors) {
  write_text(dir + "/config.json", cfg_json.dump(2));
  ASSERT_TRUE(write_safetensors(dir + "/model.safetensors", tensors).ok());
}

Status load_status(const std::string& dir) {
  auto cfg = ModelConfig::from_dir(dir);
  if (!cfg.ok()) return cfg.status();
  return ModelWeights::load_dir(*cfg, dir).status();
}

// ---------------------------------------------------------------------------------------------
// dtype

TEST(LoaderDtype, Names) {
  for (DType t : {DType::f32, DType::bf16, DType::f16}) EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  EXPECT_STREQ(dtype_name(DType::bf16), "BF16");
  EXPECT_FALSE(dtype_from_name("F64").has_value());
  EXPECT_FALSE(dtype_from_name("I32").has_value());
  EXPECT_FALSE(dtype_from_name("f32").has_value());
}

TEST(LoaderDtype, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000)), 0x3f80);  // tie, even below
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000)), 0x3f82);  // tie, even above
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001)), 0x3f81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f807fff)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-0.29474878f), 0xbe97);           // stories260K embed[0][0]
  EXPECT_EQ(f32_to_bf16(from_bits(0x7f7fffff)), 0x7f80);  // FLT_MAX rounds to inf
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7f800001)))));  // low-payload NaN
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), h);
  }
}

TEST(LoaderDtype, F16KnownValues) {
  const std::pair<uint16_t, float> exact[] = {
      {0x3c00, 1.0f},      {0xc000, -2.0f},    {0x7bff, 65504.0f},    // max finite
      {0x0400, 0x1p-14f},  {0x0001, 0x1p-24f}, {0x03ff, 0x3ffp-24f},  // min normal, subnormals
      {0x8001, -0x1p-24f}, {0x7c00, INFINITY}, {0xfc00, -INFINITY}};
  for (auto [h, f] : exact) {
    EXPECT_EQ(f16_to_f32(h), f) << std::hex << h;
    EXPECT_EQ(f32_to_f16(f), h) << f;
  }
  EXPECT_EQ(bits(f16_to_f32(0x8000)), 0x80000000u);  // -0
  const std::pair<float, uint16_t> rounded[] = {
      {65519.0f, 0x7bff},        {65520.0f, 0x7c00},         // the tie rounds to even: inf
      {-1e6f, 0xfc00},           {1.0f + 0x1p-11f, 0x3c00},  // tie, even below
      {1.0f + 0x3p-11f, 0x3c02}, {0x1p-25f, 0x0000},         // ties, even above; 0 vs min subnormal
      {0x3p-26f, 0x0001},        {0x3p-25f, 0x0002},         // subnormal ties: 1.5 ulp up, 2.5 ulp down
      {0x5p-25f, 0x0002},        {0x7ffp-25f, 0x0400},       // carries into the min normal
      {-0x1p-30f, 0x8000}};
  for (auto [f, h] : rounded) EXPECT_EQ(f32_to_f16(f), h) << f;
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(from_bits(0x7f800001)))));
}

TEST(LoaderDtype, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      ASSERT_EQ(h & 0x7c00u, 0x7c00u);
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

#ifdef __FLT16_MAX__
// The compiler's _Float16 conversion is an independent reference for rounding.
TEST(LoaderDtype, F16MatchesCompilerConversion) {
  uint32_t u = 12345;
  for (int i = 0; i < 2000000; ++i) {
    u = u * 1664525u + 1013904223u;
    float f = from_bits(u);
    if (std::isnan(f)) continue;
    _Float16 h = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &h, 2);
    ASSERT_EQ(f32_to_f16(f), want) << f;
    ASSERT_EQ(bits(f16_to_f32(want)), bits(static_cast<float>(h)));
  }
}
#endif

// ---------------------------------------------------------------------------------------------
// config.json

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

// ---------------------------------------------------------------------------------------------
// safetensors

TEST(LoaderSafetensors, WriteReadRoundTrip) {
  TempDir tmp;
  std::vector<TensorToWrite> ts = {make_tensor("zeta", {3, 5}, DType::f32, 1),
                                   make_tensor("alpha", {7}, DType::bf16, 2),
                                   make_tensor("mid", {2, 2, 3}, DType::f16, 3)};
  ASSERT_TRUE(write_safetensors(tmp / "a.safetensors", ts, {{"format", "pt"}}).ok());
  ASSERT_TRUE(write_safetensors(tmp / "b.safetensors", ts, {{"format", "pt"}}).ok());
  std::string raw = read_bytes(tmp / "a.safetensors");
  EXPECT_EQ(raw, read_bytes(tmp / "b.safetensors"));  // deterministic
  uint64_t hlen = 0;
  std::memcpy(&hlen, raw.data(), 8);
  EXPECT_EQ(hlen % 8, 0u);
  std::string header = raw.substr(8, hlen);
  EXPECT_LT(header.find("\"__metadata__\""), header.find("\"alpha\""));  // keys sorted
  EXPECT_LT(header.find("\"alpha\""), header.find("\"mid\""));
  EXPECT_LT(header.find("\"mid\""), header.find("\"zeta\""));
  EXPECT_EQ(raw.substr(8 + hlen, ts[0].bytes.size()), std::string(ts[0].bytes.begin(), ts[0].bytes.end()));

  auto ar = SafetensorsArchive::open_file(tmp / "a.safetensors");
  ASSERT_TRUE(ar.ok()) << ar.status().to_string();
  ASSERT_EQ(ar->tensors().size(), 3u);
  for (const auto& t : ts) {
    const TensorView* v = ar->find(t.name);
    ASSERT_NE(v, nullptr) << t.name;
    EXPECT_EQ(v->dtype, t.dtype);
    EXPECT_EQ(v->shape, t.shape);
    ASSERT_EQ(v->nbytes, t.bytes.size());
    EXPECT_EQ(std::memcmp(v->data, t.bytes.data(), v->nbytes), 0);
  }
  EXPECT_EQ(ar->find("__metadata__"), nullptr);
}

TEST(LoaderSafetensors, ViewOutlivesArchive) {
  TempDir tmp;
  auto t = make_tensor("w", {64}, DType::f32, 5);
  ASSERT_TRUE(write_safetensors(tmp / "m.safetensors", {t}).ok());
  TensorView v;
  {
    auto ar = SafetensorsArchive::open_file(tmp / "m.safetensors");
    ASSERT_TRUE(ar.ok());
    v = *ar->find("w");
  }
  EXPECT_EQ(std::memcmp(v.data, t.bytes.data(), t.bytes.size()), 0);
}

TEST(LoaderSafetensors, UnsupportedDtype) {
  TempDir tmp;
  for (const char* dt : {"I32", "F64"}) {
    std::string data(16, '\0');
    json h = {{"ok", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
              {"odd.weight", {{"dtype", dt}, {"shape", {1}}, {"data_offsets", {8, 8 + (dt[1] == '6' ? 8 : 4)}}}}};
    write_raw(tmp / "x.safetensors", h.dump(), data);
    auto st = SafetensorsArchive::open_file(tmp / "x.safetensors").status();
    EXPECT_ERROR(st, ErrorCode::unsupported, "odd.weight");
    EXPECT_NE(st.message.find(dt), std::string::npos) << st.message;
  }
}

TEST(LoaderSafetensors, CorruptFiles) {
  TempDir tmp;
  const std::string p = tmp / "m.safetensors";
  ASSERT_TRUE(write_safetensors(p, {make_tensor("a", {4}, DType::f32, 0), make_tensor("b", {8}, DType::f32, 1)}).ok());
  fs::resize_file(p, fs::file_size(p) - 4);  // cut into the last tensor
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, "truncated");
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, "tensor b");

  write_raw(p, "{}", "");
  std::string raw = read_bytes(p);
  raw[0] = static_cast<char>(0xff);  // header length 255 > file
  write_text(p, raw);
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, "header length");
  write_text(p, "abc");
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, "truncated");
  write_raw(p, "{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", std::string(8, '\0'));
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, "tensor a");
  write_raw(p, "{\"a\": [1, 2", "");
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, p);
  EXPECT_ERROR(SafetensorsArchive::open_file(tmp / "none.safetensors").status(), ErrorCode::not_found,
               "none.safetensors");
}

TEST(LoaderSafetensors, WriteErrors) {
  TempDir tmp;
  auto t = make_tensor("w", {4}, DType::f32, 0);
  t.bytes.pop_back();
  EXPECT_ERROR(write_safetensors(tmp / "m.safetensors", {t}), ErrorCode::invalid_argument, "w");
  auto u = make_tensor("w", {4}, DType::f32, 0);
  EXPECT_ERROR(write_safetensors(tmp / "m.safetensors", {u, u}), ErrorCode::invalid_argument, "w");
  EXPECT_ERROR(write_safetensors(tmp / "no/such/dir/m.safetensors", {u}), ErrorCode::io_error, "m.safetensors");
}

// Writes `tensors` as two shards plus model.safetensors.index.json.
void write_sharded(const std::string& dir, const std::vector<TensorToWrite>& tensors) {
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

TEST(LoaderSafetensors, OpenDirErrors) {
  TempDir tmp;
  EXPECT_ERROR(SafetensorsArchive::open_dir(tmp.path()).status(), ErrorCode::not_found, tmp.path());
  write_sharded(tmp.path(), {make_tensor("a", {2}, DType::f32, 0), make_tensor("b", {2}, DType::f32, 1)});
  ASSERT_TRUE(SafetensorsArchive::open_dir(tmp.path()).ok());
  fs::remove(tmp / "model-00002-of-00002.safetensors");
  EXPECT_ERROR(SafetensorsArchive::open_dir(tmp.path()).status(), ErrorCode::not_found,
               "model-00002-of-00002.safetensors");
  write_text(
      tmp / "model.safetensors.index.json",
      json({{"weight_map", {{"a", "model-00001-of-00002.safetensors"}, {"ghost", "model-00001-of-00002.safetensors"}}}})
          .dump());
  EXPECT_ERROR(SafetensorsArchive::open_dir(tmp.path()).status(), ErrorCode::io_error, "ghost");
  write_text(tmp / "model.safetensors.index.json", "{\"weight_map\": 3}");
  EXPECT_ERROR(SafetensorsArchive::open_dir(tmp.path()).status(), ErrorCode::io_error, "weight_map");
}

// ---------------------------------------------------------------------------------------------
// weights

TEST(LoaderWeights, SpecsFollowConfig) {
  ModelConfig c = parse(tiny_config());
  auto specs = model_tensor_specs(c);
  ASSERT_EQ(specs.size(), 1u + 2 * 9 + 2);
  EXPECT_EQ(specs.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(specs[3].name, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(specs[3].shape, (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(specs.back().name, "lm_head.weight");
  EXPECT_FALSE(specs.back().optional);
  EXPECT_TRUE(model_tensor_specs(parse(tiny_config({{"tie_word_embeddings", true}}))).back().optional);
  auto q = model_tensor_specs(parse(tiny_config({{"architectures", {"Qwen2ForCausalLM"}}})));
  ASSERT_EQ(q.size(), specs.size() + 6);
  EXPECT_EQ(q[5].name, "model.layers.0.self_attn.q_proj.bias");
  EXPECT_EQ(q[5].role, TensorRole::bq);
  EXPECT_EQ(q[5].layer, 0);
}

TEST(LoaderWeights, SharedF32) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  auto cfg = ModelConfig::from_dir(dir);
  ASSERT_TRUE(cfg.ok());
  auto ar = SafetensorsArchive::open_dir(dir);
  ASSERT_TRUE(ar.ok()) << ar.status().to_string();
  EXPECT_EQ(ar->tensors().size(), 48u);
  EXPECT_NE(ar->find("lm_head.weight"), nullptr);  // stored although tied
  auto w = ModelWeights::from_archive(*cfg, *ar);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  EXPECT_EQ(w->specs().size(), 48u);
  const Weight& embed = w->get(TensorRole::embed);
  const Weight& head = w->get(TensorRole::lm_head);
  EXPECT_EQ(embed.dtype, DType::f32);
  EXPECT_EQ(embed.shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(head.data, embed.data);  // tied: aliases embed, not the stored copy
  EXPECT_NE(head.data, ar->find("lm_head.weight")->data);
  EXPECT_EQ(embed.data, ar->find("model.embed_tokens.weight")->data);  // zero-copy
  EXPECT_EQ(embed.f32()[0], -0.29474878311157227f);
  EXPECT_EQ(embed.f32()[1], 0.5618956089019775f);
  for (int i = 0; i < 64; ++i) EXPECT_TRUE(std::isfinite(embed.f32()[i]));
  const Weight& norm = w->get(TensorRole::final_norm);
  EXPECT_EQ(norm.dtype, DType::f32);
  EXPECT_EQ(norm.f32()[0], 2.4583089351654053f);
  EXPECT_EQ(w->get(TensorRole::wk, 4).shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(&w->get(TensorRole::w_down, 2), w->find("model.layers.2.mlp.down_proj.weight"));
  EXPECT_FALSE(w->has(TensorRole::bq, 0));
  EXPECT_FALSE(w->has(TensorRole::wq, 5));
  EXPECT_TRUE(w->has(TensorRole::lm_head));
  EXPECT_EQ(w->total_bytes(), static_cast<size_t>(cfg->num_params()) * 4);  // head not double counted
}

TEST(LoaderWeights, SharedBf16MatchesF32) {
  ZR_REQUIRE_SHARED_MODEL(dir16, "stories260K-bf16");
  ZR_REQUIRE_SHARED_MODEL(dir32, "stories260K");
  auto cfg = ModelConfig::from_dir(dir16);
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(cfg->torch_dtype, "bfloat16");
  auto w16 = ModelWeights::load_dir(*cfg, dir16);
  auto w32 = ModelWeights::load_dir(*cfg, dir32);
  ASSERT_TRUE(w16.ok()) << w16.status().to_string();
  ASSERT_TRUE(w32.ok());
  EXPECT_EQ(w16->get(TensorRole::lm_head).data, w16->get(TensorRole::embed).data);
  EXPECT_EQ(w16->get(TensorRole::embed).bf16()[0], 0xbe97);
  EXPECT_EQ(w16->get(TensorRole::final_norm).f32()[0], 2.453125f);
  // Every bf16 value is the round-to-nearest-even of the f32 checkpoint's value.
  for (const auto& s : w16->specs()) {
    const Weight& a = *w16->find(s.name);
    const Weight& b = *w32->find(s.name);
    const bool f32_only = a.shape.size() == 1;
    EXPECT_EQ(a.dtype, f32_only ? DType::f32 : DType::bf16) << s.name;
    for (size_t i = 0; i < b.nbytes() / 4; ++i) {
      uint16_t want = f32_to_bf16(b.f32()[i]);
      if (f32_only) ASSERT_EQ(a.f32()[i], bf16_to_f32(want)) << s.name;
      else ASSERT_EQ(a.bf16()[i], want) << s.name << "[" << i << "]";
    }
  }
  const size_t norms = (2 * 5 + 1) * 64;
  EXPECT_EQ(w16->total_bytes(), (static_cast<size_t>(cfg->num_params()) - norms) * 2 + norms * 4);
}

TEST(LoaderWeights, ShardedEqualsSingleFile) {
  TempDir single, sharded;
  ModelConfig c = parse(tiny_config());
  auto ts = model_tensors(c, DType::bf16);
  write_model(single.path(), tiny_config(), ts);
  write_text(sharded / "config.json", tiny_config().dump());
  write_sharded(sharded.path(), ts);
  auto a = ModelWeights::load_dir(c, single.path());
  auto b = ModelWeights::load_dir(c, sharded.path());
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  for (const auto& s : a->specs()) {
    const Weight *x = a->find(s.name), *y = b->find(s.name);
    ASSERT_EQ(x->dtype, y->dtype);
    ASSERT_EQ(x->nbytes(), y->nbytes());
    EXPECT_EQ(std::memcmp(x->data, y->data, x->nbytes()), 0) << s.name;
  }
}

TEST(LoaderWeights, MissingFiles) {
  TempDir tmp;
  EXPECT_ERROR(load_status(tmp.path()), ErrorCode::not_found, "config.json");
  write_text(tmp / "config.json", tiny_config().dump());
  EXPECT_ERROR(load_status(tmp.path()), ErrorCode::not_found, "model.safetensors");
}

TEST(LoaderWeights, NameAndShapeErrors) {
  TempDir tmp;
  ModelConfig c = parse(tiny_config());
  auto ts = model_tensors(c, DType::f32);
  auto without = ts;
  without.erase(without.begin() + 12);  // a layer-1 tensor
  write_model(tmp.path(), tiny_config(), without);
  EXPECT_ERROR(load_status(tmp.path()), ErrorCode::weight_mismatch, "missing tensor " + ts[12].name);

  auto extra = ts;
  extra.push_back(make_tensor("model.layers.0.self_attn.rotary_emb.inv_freq", {2}, DType::f32, 0));
  write_model(tmp.path(), tiny_config(), extra);
  EXPECT_TRUE(load_status(tmp.path()).ok()) << load_status(tmp.path()).to_string();
  extra.push_back(make_tensor("model.layers.0.mlp.gate_proj.bias", {16}, DType::f32, 0));
  write_model(tmp.path(), tiny_config(), extra);
  EXPECT_ERROR(load_status(tmp.path()), ErrorCode::weight_mismatch,
               "unexpected tensor model.layers.0.mlp.gate_proj.bias");

  auto wrong = ts;
  wrong[2] = make_tensor(ts[2].name, {8, 4}, DType::f32, 0);  // q_proj transposed
  write_model(tmp.path(), tiny_config(), wrong);
  auto st = load_status(tmp.path());
  EXPECT_ERROR(st, ErrorCode::weight_mismatch, ts[2].name);
  EXPECT_NE(st.message.find("expected shape [8, 8], got [8, 4]"), std::string::npos) << st.message;

  auto no_head = ts;
  no_head.pop_back();
  write_model(tmp.path(), tiny_config(), no_head);
  EXPECT_ERROR(load_status(tmp.path()), ErrorCode::weight_mismatch, "missing tensor lm_head.weight");
  EXPECT_TRUE(load_status(tmp.path()).code == ErrorCode::weight_mismatch);
  json tied = tiny_config({{"tie_word_embeddings", true}});
  write_model(tmp.path(), tied, no_head);
  EXPECT_TRUE(load_status(tmp.path()).ok());
  auto bad_head = ts;
  bad_head.back() = make_tensor("lm_head.weight", {15, 8}, DType::f32, 0);
  write_model(tmp.path(), tied, bad_head);
  EXPECT_ERROR(load_status(tmp.path()), ErrorCode::weight_mismatch, "lm_head.weight");
}

TEST(LoaderWeights, Qwen2BiasesBecomeF32) {
  TempDir tmp;
  json j = tiny_config({{"architectures", {"Qwen2ForCausalLM"}}, {"tie_word_embeddings", true}});
  ModelConfig c = parse(j);
  auto ts = model_tensors(c, DType::bf16);
  write_model(tmp.path(), j, ts);
  auto cfg = ModelConfig::from_dir(tmp.path());
  ASSERT_TRUE(cfg.ok());
  auto w = ModelWeights::load_dir(*cfg, tmp.path());
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  for (TensorRole r : {TensorRole::bq, TensorRole::bk, TensorRole::bv}) {
    const Weight& b = w->get(r, 1);
    EXPECT_EQ(b.dtype, DType::f32);
    auto src = std::find_if(ts.begin(), ts.end(), [&](const auto& t) { return w->find(t.name) == &b; });
    ASSERT_NE(src, ts.end());
    uint16_t h;
    std::memcpy(&h, src->bytes.data() + 2, 2);
    EXPECT_EQ(b.f32()[1], bf16_to_f32(h));
  }
  EXPECT_EQ(w->get(TensorRole::wq, 1).dtype, DType::bf16);
  EXPECT_EQ(w->get(TensorRole::bk, 0).shape, (std::vector<int64_t>{4}));
}

TEST(LoaderWeights, F16WidenedExactly) {
  TempDir tmp;
  ModelConfig c = parse(tiny_config());
  auto ts = model_tensors(c, DType::f16);
  const uint16_t special[] = {0x0001, 0x03ff, 0x8400, 0x7bff, 0xfbff, 0x3555};
  std::memcpy(ts[2].bytes.data(), special, sizeof(special));
  write_model(tmp.path(), tiny_config(), ts);
  auto w = ModelWeights::load_dir(c, tmp.path());
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  for (const auto& t : ts) {
    const Weight* x = w->find(t.name);
    ASSERT_EQ(x->dtype, DType::f32) << t.name;
    for (size_t i = 0; i < t.bytes.size() / 2; ++i) {
      uint16_t h;
      std::memcpy(&h, t.bytes.data() + 2 * i, 2);
      ASSERT_EQ(bits(x->f32()[i]), bits(f16_to_f32(h))) << t.name << "[" << i << "]";
    }
  }
  EXPECT_EQ(w->get(TensorRole::wq, 0).f32()[0], std::ldexp(1.0f, -24));
}

TEST(LoaderWeights, UnalignedDataIsCopied) {
  TempDir tmp;
  const float vals[3] = {1.5f, -2.25f, 3.0f};
  json h = {{"model.norm.weight", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 12}}}}};
  std::string header = h.dump() + " ";  // 8 + odd length: data starts unaligned
  if ((8 + header.size()) % 4 == 0) header += " ";
  write_raw(tmp / "m.safetensors", header, std::string(reinterpret_cast<const char*>(vals), 12));
  auto ar = SafetensorsArchive::open_file(tmp / "m.safetensors");
  ASSERT_TRUE(ar.ok()) << ar.status().to_string();
  TensorSpec spec{"model.norm.weight", {3}, TensorRole::final_norm};
  auto w = ModelWeights::make_weight(spec, *ar->find("model.norm.weight"));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w->data) % 4, 0u);
  EXPECT_EQ(w->f32()[1], -2.25f);
}

TEST(LoaderWeights, ReplaceIsAllOrNothing) {
  TempDir tmp;
  json j = tiny_config({{"tie_word_embeddings", true}});
  ModelConfig c = parse(j);
  write_model(tmp.path(), j, model_tensors(c, DType::f32));
  auto w = ModelWeights::load_dir(c, tmp.path());
  ASSERT_TRUE(w.ok());
  ModelWeights copy = *w;  // shares bytes
  EXPECT_EQ(copy.get(TensorRole::wq, 0).data, w->get(TensorRole::wq, 0).data);

  ASSERT_TRUE(write_safetensors(tmp / "new.safetensors",
                                {make_tensor("model.embed_tokens.weight", {16, 8}, DType::f32, 40),
                                 make_tensor("model.layers.1.mlp.up_proj.weight", {16, 8}, DType::f32, 41)})
                  .ok());
  auto ar = SafetensorsArchive::open_file(tmp / "new.safetensors");
  ASSERT_TRUE(ar.ok());
  auto make = [&](const std::string& name, const TensorSpec& spec) {
    auto r = ModelWeights::make_weight(spec, *ar->find(name));
    ZR_CHECK(r.ok());
    return std::pair<std::string, Weight>{spec.name, *r};
  };
  const auto& specs = w->specs();
  auto embed = make("model.embed_tokens.weight", specs[0]);
  auto up = make("model.layers.1.mlp.up_proj.weight", specs[17]);
  ASSERT_EQ(specs[17].name, "model.layers.1.mlp.up_proj.weight");
  const void* old_up = w->get(TensorRole::w_up, 1).data;

  // up's [16, 8] does not fit down_proj's [8, 16]: the whole batch is refused.
  EXPECT_ERROR(w->replace({up, {"model.layers.1.mlp.down_proj.weight", up.second}}), ErrorCode::weight_mismatch,
               "model.layers.1.mlp.down_proj.weight");
  EXPECT_EQ(w->get(TensorRole::w_up, 1).data, old_up);  // nothing changed
  EXPECT_ERROR(w->replace({up, {"model.layers.9.mlp.up_proj.weight", up.second}}), ErrorCode::weight_mismatch,
               "model.layers.9.mlp.up_proj.weight");
  Weight as_bf16 = up.second;
  as_bf16.dtype = DType::bf16;
  EXPECT_ERROR(w->replace({{up.first, as_bf16}}), ErrorCode::weight_mismatch, "dtype");
  EXPECT_EQ(w->get(TensorRole::w_up, 1).data, old_up);

  ASSERT_TRUE(w->replace({up, embed}).ok());
  EXPECT_EQ(w->get(TensorRole::w_up, 1).data, up.second.data);
  EXPECT_EQ(w->get(TensorRole::embed).data, embed.second.data);
  EXPECT_EQ(w->get(TensorRole::lm_head).data, embed.second.data);  // re-bound to the new embed
  EXPECT_EQ(copy.get(TensorRole::w_up, 1).data, old_up);           // copies are independent
  EXPECT_EQ(w->total_bytes(), static_cast<size_t>(c.num_params()) * 4);
}

}  // namespace
}  // namespace zr
