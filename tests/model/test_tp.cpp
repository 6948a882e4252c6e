// The tensor-parallel split (model/tp.h) and the weight registry's anonymous copy, without MPI:
// the shards of every tensor put back together are the full tensor, byte for byte.
#include <gtest/gtest.h>

#include <cstring>

#include "model/make_model.h"
#include "model/tp.h"
#include "model/weights.h"
#include "tests/test_util.h"

namespace zr {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 171;  // not a multiple of 2 or 4: uneven MLP slices
  c.num_layers = 2;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 8;
  c.vocab_size = 515;  // uneven vocabulary slices
  c.max_position_embeddings = 64;
  return c;
}

TEST(TpSplit, LayoutsCoverEveryHeadSliceAndRowOnce) {
  ModelConfig c = tiny_config();
  for (int T : {1, 2, 4}) {
    ASSERT_TRUE(check_tp(c, T).ok());
    int heads = 0, kv = 0, ffn = 0, vocab = 0;
    for (int r = 0; r < T; ++r) {
      TpLayout l = tp_layout(c, {r, T});
      EXPECT_EQ(l.heads.begin, heads);
      EXPECT_EQ(l.kv_heads.begin, kv);
      EXPECT_EQ(l.ffn.begin, ffn);
      EXPECT_EQ(l.vocab.begin, vocab);
      EXPECT_EQ(l.heads.size, l.kv_heads.size * (c.num_heads / c.num_kv_heads));  // a query head's KV head is local
      heads = l.heads.end(), kv = l.kv_heads.end(), ffn = l.ffn.end(), vocab = l.vocab.end();
      ModelConfig lc = local_config(c, {r, T});
      EXPECT_EQ(lc.kv_dim() * T, c.kv_dim());
    }
    EXPECT_EQ(heads, c.num_heads);
    EXPECT_EQ(kv, c.num_kv_heads);
    EXPECT_EQ(ffn, c.intermediate_size);
    EXPECT_EQ(vocab, c.vocab_size);
  }
}

TEST(TpSplit, RefusesWhatCannotBeSplit) {
  ModelConfig c = tiny_config();
  Status st = check_tp(c, 3);
  EXPECT_EQ(st.code, ErrorCode::invalid_argument);
  EXPECT_NE(st.message.find("num_key_value_heads"), std::string::npos) << st.message;
  EXPECT_FALSE(check_tp(c, 0).ok());
  EXPECT_FALSE(check_tp(c, 8).ok());  // 4 KV heads
}

// Row shards concatenate to the tensor; column shards concatenate row by row. Row shards are views
// (zero-copy), column shards copies.
TEST(TpSplit, ShardsReassembleEveryTensor) {
  ModelConfig c = tiny_config();
  for (const TensorSpec& spec : model_tensor_specs(c)) {
    size_t rows = static_cast<size_t>(spec.shape[0]),
           cols = spec.shape.size() > 1 ? static_cast<size_t>(spec.shape[1]) : 1;
    auto buf = std::make_shared<std::vector<float>>(rows * cols);
    for (size_t i = 0; i < buf->size(); ++i) (*buf)[i] = static_cast<float>(i);
    Weight full{DType::f32, spec.shape, buf->data(), buf};
    for (int T : {2, 4}) {
      std::vector<float> rebuilt(rows * cols, -1.0f);
      size_t row0 = 0, col0 = 0;
      for (int r = 0; r < T; ++r) {
        Weight s = shard_weight(spec, full, c, {r, T});
        ASSERT_EQ(s.shape, local_shape(spec, c, {r, T})) << spec.name;
        size_t sr = static_cast<size_t>(s.shape[0]), sc = s.shape.size() > 1 ? static_cast<size_t>(s.shape[1]) : 1;
        const float* d = s.f32();
        if (sc == cols && sr == rows) {  // replicated
          EXPECT_EQ(s.data, full.data) << spec.name;
          if (r == 0) std::memcpy(rebuilt.data(), d, rows * cols * 4);
          continue;
        }
        if (sc == cols) {  // a block of rows, viewed in place
          EXPECT_EQ(s.data, buf->data() + row0 * cols) << spec.name;
          std::memcpy(rebuilt.data() + row0 * cols, d, sr * sc * 4);
          row0 += sr;
        } else {  // a block of columns, copied
          ASSERT_EQ(sr, rows);
          for (size_t i = 0; i < rows; ++i) std::memcpy(rebuilt.data() + i * cols + col0, d + i * sc, sc * 4);
          col0 += sc;
        }
      }
      EXPECT_EQ(rebuilt, *buf) << spec.name << " T=" << T;
    }
  }
}

TEST(Weights, CopyToAnonymousMemoryKeepsEveryByte) {
  testing::TempDir tmp;
  MakeModelOptions mo;
  mo.preset = "tiny";
  mo.out_dir = tmp / "m";
  ASSERT_TRUE(make_model(mo).ok());
  auto cfg = std::move(ModelConfig::from_dir(tmp / "m")).value();
  for (TpShard shard : {TpShard{}, TpShard{1, 2}}) {
    auto file = std::move(ModelWeights::load_dir(cfg, tmp / "m", shard)).value();
    auto copy = std::move(ModelWeights::load_dir(cfg, tmp / "m", shard)).value();
    auto bytes = copy.copy_to_anonymous_memory();
    ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
    EXPECT_GE(*bytes, copy.total_bytes());
    for (const TensorSpec& s : copy.specs()) {
      const Weight* a = file.find(s.name);
      const Weight* b = copy.find(s.name);
      ASSERT_EQ(a->shape, b->shape) << s.name;
      EXPECT_NE(a->data, b->data) << s.name;
      ASSERT_EQ(std::memcmp(a->data, b->data, a->nbytes()), 0) << s.name;
    }
    if (cfg.tie_word_embeddings && !shard.enabled()) {  // the tied head still views the embedding
      EXPECT_EQ(copy.get(TensorRole::lm_head).data, copy.get(TensorRole::embed).data);
    }
  }
}

}  // namespace
}  // namespace zr
