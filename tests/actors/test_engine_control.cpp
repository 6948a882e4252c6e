// Abort, streaming, sessions and cache flushing on the engine (stepped by hand).
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>

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

// Letters of `s` without spaces: per-token texts are each token decoded alone (SGLang), so a
// word-initial piece loses its leading space; everything else must line up with the output text.
std::string no_spaces(std::string s) {
  std::erase(s, ' ');
  return s;
}

TEST_F(EngineControl, ReturnTextInLogprobsNamesEveryToken) {
  auto r = req("t", {1, 403, 407, 261, 378}, 12, 0.0f);
  r.stream = true;
  r.logprob_start_len = 0;
  r.top_logprobs_num = 3;
  r.token_ids_logprob = {261, 432};
  r.return_text_in_logprobs = true;
  auto plain = req("p", {1, 403, 407, 261, 378}, 12, 0.0f);
  plain.logprob_start_len = 0;
  plain.top_logprobs_num = 3;
  ASSERT_TRUE(eng_->submit(r).ok());
  ASSERT_TRUE(eng_->submit(plain).ok());
  std::string streamed;
  size_t chunk_entries = 0;
  std::map<std::string, SampleOutput> done;
  while (!eng_->idle()) {
    StepOutputs out;
    eng_->step(out);
    for (auto& c : out.chunks)
      for (const auto& e : c.output_token_logprobs) {
        ASSERT_TRUE(e.text.has_value());
        streamed += *e.text;
        ++chunk_entries;
      }
    for (auto& o : out.finished) done[o.rid] = o;
  }
  const MetaInfo& m = done.at("t").meta_info;
  ASSERT_EQ(m.output_token_logprobs.size(), 12u);
  EXPECT_EQ(chunk_entries, 12u);
  std::string joined;
  for (const auto& e : m.output_token_logprobs) joined += e.text.value_or("<null>");
  EXPECT_EQ(no_spaces(joined), no_spaces(done.at("t").text));
  EXPECT_EQ(streamed, joined);
  ASSERT_EQ(m.input_token_logprobs.size(), 5u);
  EXPECT_EQ(m.input_token_logprobs[0].text, std::optional<std::string>("<s>"));  // special tokens kept
  std::string prompt;
  for (size_t i = 1; i < 5; ++i) prompt += m.input_token_logprobs[i].text.value_or("<null>");
  EXPECT_EQ(no_spaces(prompt), "Onceuponatime");
  for (const auto* lists :
       {&m.output_top_logprobs, &m.input_top_logprobs, &m.output_token_ids_logprobs, &m.input_token_ids_logprobs}) {
    ASSERT_FALSE(lists->empty());
    for (const auto& l : *lists)
      for (const auto& e : l) EXPECT_TRUE(e.text.has_value()) << e.token_id;
  }
  // The top-1 alternative is the chosen token (greedy): same id, same text.
  for (size_t k = 0; k < 12; ++k) EXPECT_EQ(m.output_top_logprobs[k][0].text, m.output_token_logprobs[k].text);
  // Without the flag: null texts, the same tokens and logprobs.
  const MetaInfo& p = done.at("p").meta_info;
  ASSERT_EQ(p.output_token_logprobs.size(), 12u);
  for (size_t k = 0; k < 12; ++k) {
    EXPECT_FALSE(p.output_token_logprobs[k].text.has_value());
    EXPECT_EQ(p.output_token_logprobs[k].token_id, m.output_token_logprobs[k].token_id);
    EXPECT_EQ(p.output_token_logprobs[k].logprob, m.output_token_logprobs[k].logprob);
  }
  // Token text needs the output text.
  auto off = req("off", {1, 403}, 2);
  off.return_text_in_logprobs = true;
  off.detokenize = false;
  auto st = eng_->submit(off);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code, ErrorCode::invalid_argument);
  EXPECT_NE(st.message.find("return_text_in_logprobs"), std::string::npos) << st.message;
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
