// The weight registry: tensor specs from the config, loading the shared stories260K checkpoints
// (f32 and bf16) and synthetic ones (sharded, f16, Qwen2 biases), name and shape errors, unaligned
// data and all-or-nothing replace.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <utility>

#include "tests/model/checkpoint_files.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using json = nlohmann::json;
using testing::bits;
using testing::load_status;
using testing::make_tensor;
using testing::model_tensors;
using testing::parse;
using testing::TempDir;
using testing::tiny_config;
using testing::write_model;
using testing::write_raw;
using testing::write_sharded;
using testing::write_text;

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
