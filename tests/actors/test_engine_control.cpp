// Abort, streaming, sessions and cache flushing on the engine (stepped by hand).
#include <gtest/gtest.h>

#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using testing::expect_identical;
using testing::run_to_completion;

class EngineControl : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = zr::testing::shared_model_dir("stories260K");
    if (!d) GTEST_SKIP() << "shared model 'stories260K' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models";
    eng_ = testing::load_engine(*d);
  }
  static GenerateRequest req(const std::string& rid, std::vector<int> ids, int max_new, float temp = 0.8f) {
    GenerateRequest r;
    r.rid = rid;
    r.input_ids = std::move(ids);
    r.sampling_params.max_new_tokens = max_new;
    r.sampling_params.temperature = temp;
    r.sampling_params.seed = 5;
    r.sampling_params.ignore_eos = true;
    r.return_logprob = true;
    return r;
  }
  std::unique_ptr<Engine> eng_;
};

TEST_F(EngineControl, AbortMidGenerationReturnsPartialOutputs) {
  ASSERT_TRUE(eng_->submit(req("keep", {1, 403, 407}, 20)).ok());
  auto g = req("grp-a", {1, 403, 407, 261}, 50);
  g.sampling_params.n = 3;
  ASSERT_TRUE(eng_->submit(g).ok());
  ASSERT_TRUE(eng_->submit(req("grp-b", {1, 300}, 50)).ok());
  StepOutputs out;
  for (int i = 0; i < 6; ++i) eng_->step(out);
  StepOutputs ab;
  auto rids = eng_->abort(AbortCall{0, "", "grp-", false}, ab);
  EXPECT_EQ(rids, (std::vector<std::string>{"grp-a", "grp-b"}));
  ASSERT_EQ(ab.finished.size(), 4u);  // 3 samples + 1
  for (const auto& o : ab.finished) {
    EXPECT_EQ(o.meta_info.finish_reason.type, FinishReason::Type::abort);
    EXPECT_FALSE(o.output_ids.empty());  // partial output survives
    EXPECT_LT(o.output_ids.size(), 50u);
    EXPECT_EQ(o.meta_info.output_token_logprobs.size(), o.output_ids.size());
  }
  auto rest = run_to_completion(*eng_);  // the other request is untouched
  EXPECT_EQ(rest.samples.at("keep").at(0).output_ids.size(), 20u);
  EXPECT_EQ(rest.samples.count("grp-a"), 0u);
  EXPECT_EQ(eng_->stats().kv_blocks_used, 0);
  EXPECT_TRUE(eng_->submit(req("grp-a", {1}, 2)).ok());  // the rid is free again
}

TEST_F(EngineControl, AbortBeforeForkReportsEverySample) {
  auto g = req("g", std::vector<int>(40, 300), 10);
  g.sampling_params.n = 4;
  ASSERT_TRUE(eng_->submit(g).ok());
  StepOutputs ab;
  EXPECT_EQ(eng_->abort(AbortCall{0, "g", "", false}, ab).size(), 1u);
  ASSERT_EQ(ab.finished.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(ab.finished[i].index, i);
  EXPECT_TRUE(eng_->idle());
}

TEST_F(EngineControl, StreamChunksAddUpToTheFinalOutput) {
  auto r = req("s", {1, 403, 407, 261, 378}, 30, 0.0f);
  r.stream = true;
  r.sampling_params.stop = {"named"};
  ASSERT_TRUE(eng_->submit(r).ok());
  std::string text;
  std::vector<int> ids;
  size_t lps = 0;
  SampleOutput final;
  int chunks = 0;
  while (!eng_->idle()) {
    StepOutputs out;
    eng_->step(out);
    for (auto& c : out.chunks) {
      text += c.text;
      ids.insert(ids.end(), c.output_ids.begin(), c.output_ids.end());
      lps += c.output_token_logprobs.size();
      ++chunks;
      EXPECT_EQ(c.text.find("named"), std::string::npos);  // a stop string never leaks
    }
    for (auto& o : out.finished) final = o;
  }
  EXPECT_GT(chunks, 3);
  EXPECT_EQ(text, final.text);
  EXPECT_EQ(ids, final.output_ids);
  EXPECT_EQ(lps, final.output_ids.size());
  EXPECT_EQ(final.text, ", there was a little girl ");
}

TEST_F(EngineControl, SessionTurnsEqualOneLongRequest) {
  std::string sid = eng_->open_session();
  auto t1 = req("t1", {1, 403, 407, 261, 378}, 12);
  t1.session_id = sid;
  ASSERT_TRUE(eng_->submit(t1).ok());
  auto turn1 = run_to_completion(*eng_).samples.at("t1").at(0);
  int used_after_turn1 = eng_->stats().kv_blocks_used;
  EXPECT_GT(used_after_turn1, 0);  // the session keeps its KV
  std::vector<int> user2 = {261, 300, 301};
  auto t2 = req("t2", user2, 12);
  t2.session_id = sid;
  t2.sampling_params.seed = 9;
  ASSERT_TRUE(eng_->submit(t2).ok());
  auto turn2 = run_to_completion(*eng_).samples.at("t2").at(0);
  EXPECT_EQ(turn2.meta_info.cached_tokens, 5 + 12 - 1);  // only the new tokens were prefilled

  std::vector<int> all = {1, 403, 407, 261, 378};
  all.insert(all.end(), turn1.output_ids.begin(), turn1.output_ids.end());
  all.insert(all.end(), user2.begin(), user2.end());
  auto fresh = testing::load_engine(*zr::testing::shared_model_dir("stories260K"));
  auto one = req("one", all, 12);
  one.sampling_params.seed = 9;
  ASSERT_TRUE(fresh->submit(one).ok());
  expect_identical(turn2, run_to_completion(*fresh).samples.at("one").at(0), "turn 2 vs one request");

  // After a flush the next turn recomputes and still gives the same bits as one request.
  EXPECT_GT(eng_->flush_cache(), 0);
  EXPECT_EQ(eng_->stats().kv_blocks_used, 0);
  EXPECT_EQ(eng_->close_session("nope").code, ErrorCode::not_found);
  EXPECT_TRUE(eng_->close_session(sid).ok());
  auto t3 = req("t3", {5}, 3);
  t3.session_id = sid;
  EXPECT_EQ(eng_->submit(t3).code, ErrorCode::not_found);
}

TEST_F(EngineControl, SessionRejectsConcurrentTurnsAndN) {
  std::string sid = eng_->open_session();
  auto a = req("a", {1, 2, 3}, 4);
  a.session_id = sid;
  ASSERT_TRUE(eng_->submit(a).ok());
  auto b = req("b", {4}, 4);
  b.session_id = sid;
  EXPECT_EQ(eng_->submit(b).code, ErrorCode::invalid_argument);
  run_to_completion(*eng_);
  b.sampling_params.n = 2;
  EXPECT_EQ(eng_->submit(b).code, ErrorCode::invalid_argument);
}

}  // namespace
}  // namespace zr
