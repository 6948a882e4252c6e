// Engine tests on the shared reference models: golden outputs through the whole engine, score,
// and the parity contract (batch invariance, score == generate).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>

#include "model/make_model.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using testing::expect_identical;
using testing::run_to_completion;
using testing::same_bits;

nlohmann::json reference(const std::string& dir) {
  std::ifstream f(dir + "/reference.json");
  return nlohmann::json::parse(f);
}

void check_golden_engine(const std::string& name) {
  ZR_REQUIRE_SHARED_MODEL(dir, name);
  ZR_REQUIRE_ENGINE_TOKENIZER(dir);
  auto eng = testing::load_engine(dir);
  auto ref = reference(dir);
  int i = 0;
  for (const auto& cs : ref["cases"]) {
    std::string rid = "case" + std::to_string(i++);
    if (cs["kind"] == "greedy") {
      ASSERT_TRUE(
          eng->submit(testing::greedy_request(rid, cs["prompt_ids"], static_cast<int>(cs["greedy_ids"].size()))).ok());
    } else {
      for (const char* t : {"1.0", "0.7"}) {
        ScoreRequest s{rid + "@" + t, cs["prompt_ids"], cs["completion_ids"], std::stof(t), 0};
        ASSERT_TRUE(eng->submit_score(s).ok());
      }
    }
  }
  auto res = run_to_completion(*eng);
  i = 0;
  for (const auto& cs : ref["cases"]) {
    std::string rid = "case" + std::to_string(i++);
    if (cs["kind"] == "greedy") {
      const SampleOutput& o = res.samples.at(rid).at(0);
      std::vector<int> expect = cs["greedy_ids"];
      EXPECT_EQ(o.output_ids, expect);
      EXPECT_EQ(o.text, cs["text"].get<std::string>());
      for (size_t k = 0; k < expect.size(); ++k) {
        EXPECT_NEAR(*o.meta_info.output_token_logprobs[k].logprob, cs["greedy_logprobs"][k].get<double>(), 1e-4);
        for (int j = 0; j < 5; ++j) {
          EXPECT_EQ(o.meta_info.output_top_logprobs[k][j].token_id, cs["top5"][k][j][0].get<int>());
          EXPECT_NEAR(*o.meta_info.output_top_logprobs[k][j].logprob, cs["top5"][k][j][1].get<double>(), 1e-4);
        }
      }
      const auto& ipl = cs["input_token_logprobs"];
      ASSERT_EQ(o.meta_info.input_token_logprobs.size(), ipl.size());
      EXPECT_FALSE(o.meta_info.input_token_logprobs[0].logprob.has_value());
      for (size_t k = 1; k < ipl.size(); ++k)
        EXPECT_NEAR(*o.meta_info.input_token_logprobs[k].logprob, ipl[k].get<double>(), 1e-4);
      EXPECT_EQ(o.meta_info.finish_reason.type, FinishReason::Type::length);
    } else {
      for (const char* t : {"1.0", "0.7"}) {
        const ScoreOutput& s = res.scores.at(rid + "@" + t);
        const auto& expect = cs[std::string("logprobs_T") + t];
        ASSERT_EQ(s.logprobs.size(), expect.size());
        for (size_t k = 0; k < expect.size(); ++k)
          EXPECT_NEAR(s.logprobs[k], expect[k].get<double>(), 1e-4) << t << " " << k;
      }
    }
  }
}

TEST(EngineGolden, Stories260K) { check_golden_engine("stories260K"); }
TEST(EngineGolden, Stories260KBf16) { check_golden_engine("stories260K-bf16"); }
TEST(EngineGolden, Qwen3Tiny) { check_golden_engine("qwen3-tiny"); }
TEST(EngineGolden, Llama31Tiny) { check_golden_engine("llama31-tiny"); }

// A mix of `count` requests of different lengths and sampling settings.
std::vector<GenerateRequest> mixed_requests(int vocab, int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<GenerateRequest> out;
  for (int i = 0; i < count; ++i) {
    GenerateRequest r;
    r.rid = "r" + std::to_string(i);
    int len = 1 + static_cast<int>(rng() % 40);
    r.input_ids.push_back(1);
    for (int k = 1; k < len; ++k) r.input_ids.push_back(3 + static_cast<int>(rng() % (vocab - 3)));
    auto& sp = r.sampling_params;
    sp.max_new_tokens = 4 + static_cast<int>(rng() % 24);
    sp.temperature = (i % 3 == 0) ? 0.0f : 0.7f + 0.1f * (i % 4);
    sp.top_p = (i % 4 == 1) ? 0.9f : 1.0f;
    sp.top_k = (i % 5 == 2) ? 20 : -1;
    sp.seed = 1000 + i;
    sp.ignore_eos = (i % 2 == 0);
    r.return_logprob = true;
    r.logprob_start_len = (i % 3 == 1) ? 0 : -1;
    out.push_back(std::move(r));
  }
  return out;
}

void check_batch_invariance(const std::string& dir, int count = 64, kernels::Compute compute = kernels::Compute::f32,
                            DType kv_dtype = DType::f32) {
  EngineOptions base;
  base.compute = compute;
  base.kv_dtype = kv_dtype;
  auto eng = testing::load_engine(dir, base);
  const int vocab = eng->config().vocab_size;
  auto reqs = mixed_requests(vocab, count, 42);
  // Each request alone.
  std::map<std::string, SampleOutput> alone;
  for (const auto& r : reqs) {
    ASSERT_TRUE(eng->submit(r).ok());
    alone[r.rid] = run_to_completion(*eng).samples.at(r.rid).at(0);
  }
  // All together, in two different orders, with a small step budget so prompts are chunked.
  for (int order = 0; order < 2; ++order) {
    EngineOptions opt = base;
    opt.scheduler.max_step_tokens = order == 0 ? 2048 : 37;
    opt.scheduler.max_prefill_chunk = order == 0 ? 512 : 5;
    auto batched = testing::load_engine(dir, opt);
    std::vector<GenerateRequest> shuffled = reqs;
    std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937_64(order + 7));
    for (const auto& r : shuffled) ASSERT_TRUE(batched->submit(r).ok());
    auto res = run_to_completion(*batched);
    for (const auto& r : reqs)
      expect_identical(alone[r.rid], res.samples.at(r.rid).at(0), r.rid + " order " + std::to_string(order));
  }
  // Score of each generated completion returns generate's logprobs bit for bit (unpenalized
  // requests: default-mode logprobs are log_softmax(logits / T)).
  for (const auto& r : reqs) {
    const SampleOutput& o = alone[r.rid];
    if (o.output_ids.empty()) continue;
    float t = r.sampling_params.temperature > 0 ? r.sampling_params.temperature : 1.0f;
    ASSERT_TRUE(eng->submit_score({r.rid, r.input_ids, o.output_ids, t, 0}).ok());
  }
  auto scores = run_to_completion(*eng).scores;
  for (const auto& r : reqs) {
    const SampleOutput& o = alone[r.rid];
    const ScoreOutput& s = scores.at(r.rid);
    ASSERT_EQ(s.logprobs.size(), o.output_ids.size());
    for (size_t k = 0; k < s.logprobs.size(); ++k) {
      // top-k/top-p truncation does not change default-mode logprobs, so all requests qualify.
      ASSERT_TRUE(same_bits(s.logprobs[k], *o.meta_info.output_token_logprobs[k].logprob))
          << r.rid << " token " << k << ": " << s.logprobs[k] << " vs "
          << *o.meta_info.output_token_logprobs[k].logprob;
    }
  }
}

TEST(EngineParity, BatchInvarianceAndScoreEqualsGenerateStories260K) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  check_batch_invariance(dir);
}

TEST(EngineParity, BatchInvarianceAndScoreEqualsGenerateStories260KBf16) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K-bf16");
  check_batch_invariance(dir);
}

// Qwen3 and Llama 3.1 (vocabularies of 152K and 128K: fewer requests keep it fast).
TEST(EngineParity, BatchInvarianceAndScoreEqualsGenerateQwen3Tiny) {
  ZR_REQUIRE_SHARED_MODEL(dir, "qwen3-tiny");
  ZR_REQUIRE_ENGINE_TOKENIZER(dir);
  check_batch_invariance(dir, 8);
}

TEST(EngineParity, BatchInvarianceAndScoreEqualsGenerateLlama31Tiny) {
  ZR_REQUIRE_SHARED_MODEL(dir, "llama31-tiny");
  ZR_REQUIRE_ENGINE_TOKENIZER(dir);
  check_batch_invariance(dir, 8);
}

// The same contract on a random model of realistic shape (stories15M: d 288, 6 layers, vocab
// 32000), made by make-model, so kernels run with full AVX-512 tiles and real vocab sizes.
TEST(EngineParity, BatchInvarianceAndScoreEqualsGenerateStories15MShape) {
  zr::testing::TempDir tmp;
  MakeModelOptions opt;
  opt.preset = "stories15M";
  opt.seed = 11;
  opt.out_dir = tmp.path() + "/m";
  ASSERT_TRUE(make_model(opt).ok());
  check_batch_invariance(opt.out_dir);
}

// Compute::bf16: the same contract within the mode (batch sizes, chunking, orders; score ==
// generate bit for bit).
TEST(EngineParityBf16, BatchInvarianceAndScoreEqualsGenerateStories260K) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  check_batch_invariance(dir, 64, kernels::Compute::bf16);
}

TEST(EngineParityBf16, BatchInvarianceAndScoreEqualsGenerateQwen3Tiny) {
  ZR_REQUIRE_SHARED_MODEL(dir, "qwen3-tiny");
  ZR_REQUIRE_ENGINE_TOKENIZER(dir);
  check_batch_invariance(dir, 8, kernels::Compute::bf16);
}

TEST(EngineParityBf16, BatchInvarianceAndScoreEqualsGenerateStories15MShape) {
  zr::testing::TempDir tmp;
  MakeModelOptions opt;
  opt.preset = "stories15M";
  opt.seed = 11;
  opt.out_dir = tmp.path() + "/m";
  ASSERT_TRUE(make_model(opt).ok());
  check_batch_invariance(opt.out_dir, 32, kernels::Compute::bf16);
}

// A bf16 KV cache (--kv-dtype bf16), in both compute modes: the same contract within the setting.
TEST(EngineParityKvBf16, BatchInvarianceAndScoreEqualsGenerateStories260K) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  check_batch_invariance(dir, 64, kernels::Compute::f32, DType::bf16);
}

TEST(EngineParityKvBf16, BatchInvarianceAndScoreEqualsGenerateStories15MShapeBothModes) {
  zr::testing::TempDir tmp;
  MakeModelOptions opt;
  opt.preset = "stories15M";
  opt.seed = 11;
  opt.out_dir = tmp.path() + "/m";
  ASSERT_TRUE(make_model(opt).ok());
  check_batch_invariance(opt.out_dir, 16, kernels::Compute::f32, DType::bf16);
  check_batch_invariance(opt.out_dir, 16, kernels::Compute::bf16, DType::bf16);
}

TEST(EngineParityKvBf16, BatchInvarianceAndScoreEqualsGenerateQwen3Tiny) {
  ZR_REQUIRE_SHARED_MODEL(dir, "qwen3-tiny");
  ZR_REQUIRE_ENGINE_TOKENIZER(dir);
  check_batch_invariance(dir, 8, kernels::Compute::bf16, DType::bf16);
}

// Compute::bf16 and/or a bf16 KV cache (--kv-dtype bf16) against the float64 reference, teacher-forced (so a near-tie that greedy decoding
// would break differently cannot move a token): every case's completion scored at T = 1, the
// score cases' completion_ids against logprobs_T1.0 and the greedy cases' greedy_ids against
// greedy_logprobs. Prints max and mean |diff| of bf16 against the reference and against the f32
// mode, and of f32 against the reference; the setting must not give the f32 setting's bits (so it took effect).
//
// Why 0.1 nats: bf16 keeps 8 significant bits, so rounding a matmul input moves it by up to 2^-9
// (0.2%) of its value; a logit sums d such products, their errors partly cancel, and what remains
// grows with the spread of the logits, which a trained model has and random weights do not.
// Measured by this test (2026-12-08, 96 / 32 / 192 / 192 tokens), max (mean) |bf16 - float64|:
// stories260K (trained, f32 checkpoint: bf16 rounds its weights and activations) 0.075 (0.005);
// stories260K-bf16 (weights already bf16: activations only) 0.0072 (0.001); the random-weight
// qwen3-tiny 0.0015 (0.0004) and llama31-tiny 0.0016 (0.0003); the f32 mode stays within 6e-6 of
// the reference on all four. 0.1 is 1.33x the largest measured: room for another fixed summation
// order in the bf16 kernel.
constexpr double kBf16Tolerance = 0.1;

struct DiffStats {
  double max = 0, sum = 0;
  int n = 0;
  void add(double d) { max = std::max(max, d), sum += d, ++n; }
  double mean() const { return n ? sum / n : 0; }
};

void check_bf16_against_reference(const std::string& name, kernels::Compute compute = kernels::Compute::bf16,
                                  DType kv_dtype = DType::f32) {
  ZR_REQUIRE_SHARED_MODEL(dir, name);
  ZR_REQUIRE_ENGINE_TOKENIZER(dir);
  EngineOptions o;
  o.compute = compute;
  o.kv_dtype = kv_dtype;
  auto bf = testing::load_engine(dir, o);
  auto f32 = testing::load_engine(dir);
  auto ref = reference(dir);
  auto completion = [](const nlohmann::json& cs) {
    return cs["kind"] == "greedy" ? cs["greedy_ids"] : cs["completion_ids"];
  };
  auto expected = [](const nlohmann::json& cs) {
    return cs["kind"] == "greedy" ? cs["greedy_logprobs"] : cs["logprobs_T1.0"];
  };
  int i = 0;
  for (const auto& cs : ref["cases"]) {
    ScoreRequest s{"case" + std::to_string(i++), cs["prompt_ids"], completion(cs), 1.0f, 0};
    ASSERT_TRUE(bf->submit_score(s).ok());
    ASSERT_TRUE(f32->submit_score(s).ok());
  }
  auto rb = run_to_completion(*bf).scores, rf = run_to_completion(*f32).scores;
  DiffStats bf_ref, bf_f32, f32_ref;
  i = 0;
  for (const auto& cs : ref["cases"]) {
    const std::string rid = "case" + std::to_string(i++);
    const auto& expect = expected(cs);
    const ScoreOutput &b = rb.at(rid), &f = rf.at(rid);
    ASSERT_EQ(b.logprobs.size(), expect.size());
    for (size_t k = 0; k < expect.size(); ++k) {
      const double d = std::fabs(b.logprobs[k] - expect[k].get<double>());
      bf_ref.add(d);
      bf_f32.add(std::fabs(static_cast<double>(b.logprobs[k]) - f.logprobs[k]));
      f32_ref.add(std::fabs(f.logprobs[k] - expect[k].get<double>()));
      EXPECT_LE(d, kBf16Tolerance) << rid << " token " << k;
    }
  }
  EXPECT_GT(bf_ref.n, 0) << "the reference has no cases";
  EXPECT_GT(bf_f32.max, 0.0) << "the same bits as f32 compute with an f32 cache";
  std::printf(
      "%s compute %s, KV %s: %d teacher-forced logprobs; |- float64 ref| max %.4g mean %.3g; |- f32 mode| max %.4g "
      "mean %.3g; |f32 - float64 ref| max %.3g mean %.3g (nats)\n",
      name.c_str(), kernels::compute_name(compute), kv_dtype_name(kv_dtype), bf_ref.n, bf_ref.max, bf_ref.mean(),
      bf_f32.max, bf_f32.mean(), f32_ref.max, f32_ref.mean());
}

TEST(EngineBf16, LogprobsNearReferenceStories260K) { check_bf16_against_reference("stories260K"); }
TEST(EngineBf16, LogprobsNearReferenceStories260KBf16) { check_bf16_against_reference("stories260K-bf16"); }
TEST(EngineBf16, LogprobsNearReferenceQwen3Tiny) { check_bf16_against_reference("qwen3-tiny"); }
TEST(EngineBf16, LogprobsNearReferenceLlama31Tiny) { check_bf16_against_reference("llama31-tiny"); }
TEST(EngineKvBf16, LogprobsNearReferenceStories260K) {
  check_bf16_against_reference("stories260K", kernels::Compute::f32, DType::bf16);
  check_bf16_against_reference("stories260K", kernels::Compute::bf16, DType::bf16);
}
TEST(EngineKvBf16, LogprobsNearReferenceQwen3Tiny) {
  check_bf16_against_reference("qwen3-tiny", kernels::Compute::f32, DType::bf16);
  check_bf16_against_reference("qwen3-tiny", kernels::Compute::bf16, DType::bf16);
}
TEST(EngineKvBf16, LogprobsNearReferenceLlama31Tiny) {
  check_bf16_against_reference("llama31-tiny", kernels::Compute::f32, DType::bf16);
  check_bf16_against_reference("llama31-tiny", kernels::Compute::bf16, DType::bf16);
}

}  // namespace
}  // namespace zr
