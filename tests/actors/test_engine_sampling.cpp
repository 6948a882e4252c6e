// Sampling through the engine on the shared model: stop strings and ids, generation-config EOS,
// action masks, n samples sharing KV, preemption, request validation. The sampler itself is tested
// with known logits in tests/model/test_sampler.cpp.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <set>
#include <string>

#include "model/sampler.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using testing::expect_identical;
using testing::run_to_completion;

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

// no_stop_trim: the text keeps the stop string (and ends with it), streamed or not.
TEST_F(EngineSampling, NoStopTrimKeepsTheStopString) {
  auto eng = testing::load_engine(dir_);
  auto r = req("s", 0, 32, 0);
  r.sampling_params.stop = {"little"};
  r.sampling_params.no_stop_trim = true;
  r.stream = true;
  ASSERT_TRUE(eng->submit(r).ok());
  std::string streamed;
  std::optional<SampleOutput> o;
  while (!eng->idle()) {
    StepOutputs out;
    eng->step(out);
    for (const auto& c : out.chunks) streamed += c.text;
    for (auto& f : out.finished) o = std::move(f);
  }
  ASSERT_TRUE(o);
  EXPECT_EQ(o->text, ", there was a little");
  EXPECT_EQ(streamed, o->text);
  EXPECT_EQ(std::get<std::string>(o->meta_info.finish_reason.matched), "little");
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
  run_to_completion(*eng);                                // the good one still finishes
  EXPECT_TRUE(eng->submit(req("dup", 1.0f, 8, 0)).ok());  // a finished rid can be reused
}

}  // namespace
}  // namespace zr
