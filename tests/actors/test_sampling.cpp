// The effect of each sampling parameter and logit processor: directly on the sampler with known
// logits, and through the engine on the shared model.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include "model/sampler.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using testing::expect_identical;
using testing::run_to_completion;

constexpr int kVocab = 16;

std::vector<float> ramp_logits() {  // token i has logit i / 4: a known, strictly ordered distribution
  std::vector<float> l(kVocab);
  for (int i = 0; i < kVocab; ++i) l[i] = i / 4.0f;
  return l;
}

SampledToken draw(const std::vector<float>& logits, const SamplingParams& p, uint64_t seed,
                  std::vector<int> out_ids = {}, LogprobMode mode = LogprobMode::default_mode) {
  static SamplerScratch s;
  static const std::vector<int> prompt = {1, 3};
  SampleContext ctx{&p, prompt, out_ids, seed};
  LogprobOptions lo{true, mode, 0, {}};
  return sample_token(logits.data(), kVocab, {2}, ctx, lo, s);
}

std::vector<double> softmax(const std::vector<float>& x, float t = 1.0f) {
  double mx = *std::max_element(x.begin(), x.end()), sum = 0;
  std::vector<double> p(x.size());
  for (size_t i = 0; i < x.size(); ++i) sum += (p[i] = std::exp((x[i] - mx) / t));
  for (auto& v : p) v /= sum;
  return p;
}

TEST(Sampler, TopK1EqualsGreedy) {
  auto l = ramp_logits();
  SamplingParams g;
  g.temperature = 0;
  SamplingParams k;
  k.top_k = 1;
  for (uint64_t seed = 0; seed < 50; ++seed) EXPECT_EQ(draw(l, k, seed).token, draw(l, g, seed).token);
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  auto l = ramp_logits();
  auto p = softmax(l);
  SamplingParams sp;
  sp.top_p = 0.5f;
  // The nucleus: the most likely tokens until their mass reaches 0.5.
  std::set<int> nucleus;
  double mass = 0;
  for (int t = kVocab - 1; t >= 0 && mass < 0.5; --t) {
    nucleus.insert(t);
    mass += p[t];
  }
  std::set<int> seen;
  for (uint64_t seed = 0; seed < 400; ++seed) {
    SampledToken t = draw(l, sp, seed, {}, LogprobMode::processed);
    ASSERT_TRUE(nucleus.count(t.token)) << t.token;
    seen.insert(t.token);
    EXPECT_NEAR(std::exp(t.logprob), p[t.token] / mass, 1e-5);  // renormalized over the nucleus
  }
  EXPECT_EQ(seen, nucleus);  // every nucleus token is reachable
}

TEST(Sampler, MinPDropsTokensBelowTheFloor) {
  auto l = ramp_logits();
  auto p = softmax(l);
  SamplingParams sp;
  sp.min_p = 0.5f;
  for (uint64_t seed = 0; seed < 200; ++seed) ASSERT_GE(p[draw(l, sp, seed).token], 0.5 * p[kVocab - 1]);
}

TEST(Sampler, SampleFrequenciesFollowTheDistribution) {
  auto l = ramp_logits();
  auto p = softmax(l, 0.8f);
  SamplingParams sp;
  sp.temperature = 0.8f;
  std::vector<int> count(kVocab);
  const int n = 20000;
  for (uint64_t seed = 0; seed < n; ++seed) ++count[draw(l, sp, seed).token];
  for (int t = 0; t < kVocab; ++t) EXPECT_NEAR(count[t] / double(n), p[t], 0.012) << t;
}

TEST(Sampler, PenaltiesAsDefined) {
  auto l = ramp_logits();
  l[5] = -1.0f;  // a negative logit: repetition penalty multiplies it
  SamplingParams sp;
  sp.repetition_penalty = 2.0f;
  sp.frequency_penalty = 0.5f;
  sp.presence_penalty = 0.25f;
  std::vector<int> outputs = {9, 9, 5};  // prompt is {1, 3}
  std::vector<float> expect = l;
  for (int t : {1, 3, 9, 5}) expect[t] = expect[t] > 0 ? expect[t] / 2.0f : expect[t] * 2.0f;
  expect[9] -= 0.5f * 2 + 0.25f;
  expect[5] -= 0.5f * 1 + 0.25f;
  auto p = softmax(expect);
  SampledToken t = draw(l, sp, 7, outputs);
  EXPECT_NEAR(t.logprob, std::log(p[t.token]), 1e-5);
  // raw mode ignores the penalties.
  SampledToken r = draw(l, sp, 7, outputs, LogprobMode::raw);
  EXPECT_NEAR(r.logprob, std::log(softmax(l)[r.token]), 1e-5);
}

TEST(Sampler, LogitBiasAndDisallowedAndActionMask) {
  auto l = ramp_logits();
  SamplingParams sp;
  sp.temperature = 0;
  sp.logit_bias = {{3, 100.0f}};
  EXPECT_EQ(draw(l, sp, 0).token, 3);
  sp.logit_bias.clear();
  sp.processors.disallowed_token_ids = {15, 14};
  EXPECT_EQ(draw(l, sp, 0).token, 13);
  SamplingParams mask;
  mask.temperature = 1.5f;
  mask.processors.allowed_token_ids = std::vector<int>{0, 4, 7};
  for (uint64_t seed = 0; seed < 300; ++seed) {
    int t = draw(l, mask, seed).token;
    ASSERT_TRUE(t == 0 || t == 4 || t == 7) << t;
  }
}

TEST(Sampler, MinNewTokensSuppressesEos) {
  auto l = ramp_logits();
  l[2] = 100.0f;  // EOS (id 2) dominates
  SamplingParams sp;
  sp.temperature = 0;
  sp.min_new_tokens = 2;
  EXPECT_NE(draw(l, sp, 0, {}).token, 2);
  EXPECT_NE(draw(l, sp, 0, {7}).token, 2);
  EXPECT_EQ(draw(l, sp, 0, {7, 8}).token, 2);
}

TEST(Sampler, TemperatureScheduleAndGreedyLogprobsAtT1) {
  SamplingParams sp;
  sp.processors.temperature_schedule = TemperatureSchedule{2.0f, 0.5f, 4};
  EXPECT_FLOAT_EQ(effective_temperature(sp, 0), 2.0f);
  EXPECT_FLOAT_EQ(effective_temperature(sp, 2), 1.25f);
  EXPECT_FLOAT_EQ(effective_temperature(sp, 9), 0.5f);
  auto l = ramp_logits();
  SamplingParams g;
  g.temperature = 0;
  SampledToken t = draw(l, g, 0);
  EXPECT_EQ(t.token, kVocab - 1);
  EXPECT_NEAR(t.logprob, std::log(softmax(l)[kVocab - 1]), 1e-6);
  EXPECT_EQ(draw(l, g, 0, {}, LogprobMode::processed).logprob, 0.0f);
}

TEST(Sampler, SameSeedSameDrawsDifferentSeedDifferentDraws) {
  auto l = ramp_logits();
  SamplingParams sp;
  int differ = 0;
  for (uint64_t s = 0; s < 64; ++s) {
    EXPECT_EQ(draw(l, sp, s).token, draw(l, sp, s).token);
    differ += draw(l, sp, s).token != draw(l, sp, s + 1000).token;
  }
  EXPECT_GT(differ, 16);
}

class EngineSampling : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = zr::testing::shared_model_dir("stories260K");
    if (!d) GTEST_SKIP() << "shared model 'stories260K' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models";
    dir_ = *d;
  }
  GenerateRequest req(const std::string& rid, float temp, int max_new, uint64_t seed) {
    GenerateRequest r;
    r.rid = rid;
    r.input_ids = {1, 403, 407, 261, 378};  // "Once upon a time"
    r.sampling_params.temperature = temp;
    r.sampling_params.max_new_tokens = max_new;
    r.sampling_params.seed = seed;
    r.return_logprob = true;
    return r;
  }
  std::string dir_;
};

TEST_F(EngineSampling, StopStringIsTrimmedAndReported) {
  auto eng = testing::load_engine(dir_);
  auto r = req("s", 0, 32, 0);
  r.sampling_params.stop = {"little"};
  ASSERT_TRUE(eng->submit(r).ok());
  auto o = run_to_completion(*eng).samples.at("s").at(0);
  EXPECT_EQ(o.text, ", there was a ");  // greedy text is ", there was a little girl named Lily..."
  EXPECT_EQ(o.meta_info.finish_reason.type, FinishReason::Type::stop);
  EXPECT_EQ(std::get<std::string>(o.meta_info.finish_reason.matched), "little");
}

TEST_F(EngineSampling, StopTokenIdFinishesWithTheToken) {
  auto eng = testing::load_engine(dir_);
  auto r = req("s", 0, 32, 0);
  r.sampling_params.stop_token_ids = {261};  // greedy output's 4th token
  ASSERT_TRUE(eng->submit(r).ok());
  auto o = run_to_completion(*eng).samples.at("s").at(0);
  EXPECT_EQ(o.output_ids, (std::vector<int>{432, 383, 286, 261}));
  EXPECT_EQ(std::get<int>(o.meta_info.finish_reason.matched), 261);
}

// generation_config.json's eos ids stop a generation like config.json's: stories260K with 261 (the
// 4th greedy token) added there stops on it, unless ignore_eos, and min_new_tokens masks it.
TEST_F(EngineSampling, GenerationConfigEosIdsStopGeneration) {
  testing::TempDir tmp;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model"})
    std::filesystem::copy_file(dir_ + "/" + f, tmp / f);
  std::ofstream(tmp / "generation_config.json") << R"({"bos_token_id": 1, "eos_token_id": [2, 261]})";
  auto eng = testing::load_engine(tmp.path());
  EXPECT_EQ(eng->config().eos_token_ids, (std::vector<int>{2, 261}));
  ASSERT_TRUE(eng->submit(req("stop", 0, 32, 0)).ok());
  auto free_run = req("ignore", 0, 8, 0);
  free_run.sampling_params.ignore_eos = true;
  ASSERT_TRUE(eng->submit(free_run).ok());
  auto held = req("min", 0, 8, 0);
  held.sampling_params.min_new_tokens = 6;
  ASSERT_TRUE(eng->submit(held).ok());
  auto res = run_to_completion(*eng);
  const SampleOutput& o = res.samples.at("stop").at(0);
  EXPECT_EQ(o.output_ids, (std::vector<int>{432, 383, 286, 261}));
  EXPECT_EQ(o.meta_info.finish_reason.type, FinishReason::Type::stop);
  EXPECT_EQ(std::get<int>(o.meta_info.finish_reason.matched), 261);
  const SampleOutput& ign = res.samples.at("ignore").at(0);
  EXPECT_EQ(ign.output_ids.size(), 8u);
  EXPECT_EQ(ign.output_ids[3], 261);
  EXPECT_EQ(ign.meta_info.finish_reason.type, FinishReason::Type::length);
  const SampleOutput& min = res.samples.at("min").at(0);
  ASSERT_GE(min.output_ids.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_NE(min.output_ids[i], 261) << i;
}

TEST_F(EngineSampling, ActionMaskNeverViolated) {
  auto eng = testing::load_engine(dir_);
  std::vector<int> allowed = {261, 262, 300, 420, 2};
  for (int i = 0; i < 8; ++i) {
    auto r = req("m" + std::to_string(i), 1.3f, 40, i);
    r.sampling_params.processors.allowed_token_ids = allowed;
    ASSERT_TRUE(eng->submit(r).ok());
  }
  auto res = run_to_completion(*eng);
  for (auto& [rid, v] : res.samples)
    for (int t : v.at(0).output_ids) ASSERT_TRUE(std::count(allowed.begin(), allowed.end(), t)) << rid << " " << t;
}

TEST_F(EngineSampling, NSamplesShareKvAndEqualSeparateRequests) {
  auto eng = testing::load_engine(dir_);
  const int n = 4;
  auto r = req("group", 1.0f, 24, 77);
  r.input_ids.resize(48, 300);  // exactly 3 KV blocks of 16
  r.sampling_params.n = n;
  r.sampling_params.ignore_eos = true;
  ASSERT_TRUE(eng->submit(r).ok());
  StepOutputs first;
  eng->step(first);  // prefill + fork: the 4 samples share the prompt's 3 blocks
  EXPECT_EQ(eng->stats().kv_blocks_used, 3);
  eng->step(first);  // one decode each: 4 new blocks, prompt blocks still shared
  EXPECT_EQ(eng->stats().kv_blocks_used, 3 + n);
  auto group = run_to_completion(*eng).samples.at("group");
  ASSERT_EQ(group.size(), static_cast<size_t>(n));
  auto sep = testing::load_engine(dir_);
  for (int i = 0; i < n; ++i) {
    auto one = r;
    one.rid = "one" + std::to_string(i);
    one.sampling_params.n = 1;
    one.sampling_params.seed = 77 + i;
    ASSERT_TRUE(sep->submit(one).ok());
  }
  auto ones = run_to_completion(*sep);
  std::set<std::vector<int>> distinct;
  for (int i = 0; i < n; ++i) {
    expect_identical(group[i], ones.samples.at("one" + std::to_string(i)).at(0), "sample " + std::to_string(i));
    distinct.insert(group[i].output_ids);
  }
  EXPECT_GT(distinct.size(), 1u);
}

TEST_F(EngineSampling, PreemptionUnderTinyKvBudgetChangesNothing) {
  EngineOptions small;
  small.kv_cache_bytes = 12 * 16 * 2 * 5 * 32 * 4;  // 12 blocks of 16 positions (5 layers, kv_dim 32)
  auto tight = testing::load_engine(dir_, small);
  ASSERT_EQ(tight->stats().kv_blocks_total, 12);
  auto roomy = testing::load_engine(dir_);
  for (int i = 0; i < 10; ++i) {
    auto r = req("p" + std::to_string(i), i % 2 ? 0.9f : 0.0f, 40, 500 + i);
    r.sampling_params.ignore_eos = true;
    ASSERT_TRUE(tight->submit(r).ok());
    ASSERT_TRUE(roomy->submit(r).ok());
  }
  auto a = run_to_completion(*tight), b = run_to_completion(*roomy);
  EXPECT_GT(tight->stats().preemptions, 0);
  EXPECT_EQ(roomy->stats().preemptions, 0);
  for (int i = 0; i < 10; ++i) {
    std::string rid = "p" + std::to_string(i);
    expect_identical(a.samples.at(rid).at(0), b.samples.at(rid).at(0), rid);
  }
}

TEST_F(EngineSampling, BadRequestsNameTheField) {
  auto eng = testing::load_engine(dir_);
  auto bad = [&](auto mutate, ErrorCode code, const std::string& field) {
    auto r = req("x", 1.0f, 8, 0);
    mutate(r);
    Status st = eng->submit(r);
    EXPECT_EQ(st.code, code) << st.to_string();
    EXPECT_NE(st.message.find(field), std::string::npos) << st.message;
  };
  bad([](GenerateRequest& r) { r.sampling_params.temperature = -1; }, ErrorCode::invalid_argument, "temperature");
  bad([](GenerateRequest& r) { r.sampling_params.top_p = 0; }, ErrorCode::invalid_argument, "top_p");
  bad([](GenerateRequest& r) { r.sampling_params.top_k = 0; }, ErrorCode::invalid_argument, "top_k");
  bad([](GenerateRequest& r) { r.sampling_params.min_new_tokens = 9; }, ErrorCode::invalid_argument, "min_new_tokens");
  bad([](GenerateRequest& r) { r.sampling_params.n = 0; }, ErrorCode::invalid_argument, "sampling_params.n");
  bad([](GenerateRequest& r) { r.input_ids.push_back(512); }, ErrorCode::out_of_range, "input_ids[5]");
  bad([](GenerateRequest& r) { r.input_ids.assign(512, 5); }, ErrorCode::too_long, "input_ids");
  bad([](GenerateRequest& r) { r.input_ids.clear(); }, ErrorCode::invalid_argument, "input_ids");
  bad([](GenerateRequest& r) { r.sampling_params.logit_bias = {{-1, 1.0f}}; }, ErrorCode::out_of_range, "logit_bias");
  bad([](GenerateRequest& r) { r.token_ids_logprob = {1000}; }, ErrorCode::out_of_range, "token_ids_logprob");
  bad([](GenerateRequest& r) { r.logprob_start_len = 5; }, ErrorCode::invalid_argument, "logprob_start_len");
  ASSERT_TRUE(eng->submit(req("dup", 1.0f, 8, 0)).ok());
  EXPECT_EQ(eng->submit(req("dup", 1.0f, 8, 0)).code, ErrorCode::duplicate_rid);
  run_to_completion(*eng);  // the good one still finishes
  EXPECT_TRUE(eng->submit(req("dup", 1.0f, 8, 0)).ok());  // a finished rid can be reused
}

}  // namespace
}  // namespace zr
