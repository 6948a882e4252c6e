// Prefix caching on a real model: every output (tokens, text, output and prompt logprobs, scores)
// is the same bits with the cache on and off; hits are reported in meta_info.cached_tokens, happen
// across requests and within one batch, never across weight versions, and survive a tiny KV budget.
#include <gtest/gtest.h>

#include <numeric>

#include "actors/engine/weight_staging.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using testing::expect_identical;
using testing::run_to_completion;
using testing::same_bits;

std::vector<int> prompt(int n, int salt) {
  std::vector<int> v(n);
  v[0] = 1;
  for (int i = 1; i < n; ++i) v[i] = 3 + (i * 37 + salt * 101) % 500;
  return v;
}

GenerateRequest request(const std::string& rid, std::vector<int> ids, int max_new, float temp, int lsl = -1) {
  GenerateRequest r;
  r.rid = rid;
  r.input_ids = std::move(ids);
  r.sampling_params.max_new_tokens = max_new;
  r.sampling_params.temperature = temp;
  r.sampling_params.seed = 11;
  r.sampling_params.ignore_eos = true;
  r.return_logprob = true;
  r.top_logprobs_num = 3;
  r.logprob_start_len = lsl;
  return r;
}

class PrefixEngine : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = zr::testing::shared_model_dir("stories260K");
    if (!d) GTEST_SKIP() << "shared model 'stories260K' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models";
    dir_ = *d;
  }
  std::unique_ptr<Engine> load(bool cache, size_t kv_bytes = size_t{64} << 20) {
    EngineOptions o;
    o.scheduler.prefix_cache = cache;
    o.kv_cache_bytes = kv_bytes;
    o.kv_prefault = false;
    return testing::load_engine(dir_, o);
  }
  // Submits every request in `waves` (a wave runs to completion before the next is submitted).
  static testing::RunResult run(Engine& e, const std::vector<std::vector<GenerateRequest>>& waves,
                                const std::vector<ScoreRequest>& scores = {}) {
    testing::RunResult all;
    for (const auto& wave : waves) {
      for (const auto& r : wave) EXPECT_TRUE(e.submit(r).ok()) << r.rid;
      if (&wave == &waves.back()) {
        for (const auto& s : scores) EXPECT_TRUE(e.submit_score(s).ok()) << s.rid;
      }
      auto got = run_to_completion(e);
      all.samples.merge(got.samples);
      all.scores.merge(got.scores);
    }
    return all;
  }
  static void expect_same(const testing::RunResult& a, const testing::RunResult& b) {
    ASSERT_EQ(a.samples.size(), b.samples.size());
    for (const auto& [rid, v] : a.samples) {
      ASSERT_EQ(v.size(), b.samples.at(rid).size()) << rid;
      for (size_t i = 0; i < v.size(); ++i) expect_identical(v[i], b.samples.at(rid)[i], rid + "/" + std::to_string(i));
    }
    ASSERT_EQ(a.scores.size(), b.scores.size());
    for (const auto& [rid, s] : a.scores) {
      const auto& t = b.scores.at(rid);
      ASSERT_EQ(s.logprobs.size(), t.logprobs.size()) << rid;
      for (size_t i = 0; i < s.logprobs.size(); ++i)
        EXPECT_TRUE(same_bits(s.logprobs[i], t.logprobs[i])) << rid << " " << i;
    }
  }
  std::string dir_;
};

TEST_F(PrefixEngine, HitsAreBitwiseEqualToMissesAcrossRequestsAndSamples) {
  const auto p = prompt(53, 1);  // three full blocks of 16 and a partial one
  auto on = load(true), off = load(false);
  ASSERT_TRUE(on && off);
  auto a = run(*on, {{request("first", p, 20, 0.0f)}}), b = run(*off, {{request("first", p, 20, 0.0f)}});
  expect_same(a, b);
  // An agent's next turn: the whole conversation so far, then new tokens.
  std::vector<int> longer = p;
  const auto& first_out = a.samples.at("first")[0].output_ids;
  longer.insert(longer.end(), first_out.begin(), first_out.end());
  longer.insert(longer.end(), {40, 41, 42});
  auto n3 = request("n3", p, 12, 0.9f);
  n3.sampling_params.n = 3;
  std::vector<GenerateRequest> wave = {
      request("greedy", p, 20, 0.0f),     request("sampled", p, 20, 0.9f), n3,
      request("longer", longer, 8, 0.7f), request("lp0", p, 6, 0.0f, 0),   request("lp40", p, 6, 0.5f, 40)};
  ScoreRequest sc;
  sc.rid = "score";
  sc.input_ids = p;
  sc.completion_ids = {5, 6, 7, 8, 9};
  auto a2 = run(*on, {wave}, {sc}), b2 = run(*off, {wave}, {sc});
  a.samples.merge(a2.samples);
  a.scores.merge(a2.scores);
  b.samples.merge(b2.samples);
  b.scores.merge(b2.scores);
  ASSERT_EQ(a.scores.size(), 1u);
  expect_same(a, b);
  EXPECT_EQ(a.samples.at("first")[0].meta_info.cached_tokens, 0);
  EXPECT_EQ(a.samples.at("greedy")[0].meta_info.cached_tokens, 48) << "three full blocks of the prompt";
  EXPECT_EQ(a.samples.at("sampled")[0].meta_info.cached_tokens, 48);
  EXPECT_EQ(a.samples.at("n3")[0].meta_info.cached_tokens, 48);
  EXPECT_EQ(a.samples.at("longer")[0].meta_info.cached_tokens, 64) << "the first response's full blocks are cached too";
  EXPECT_EQ(a.samples.at("lp0")[0].meta_info.cached_tokens, 0) << "prompt logprobs from 0: nothing reused";
  EXPECT_EQ(a.samples.at("lp40")[0].meta_info.cached_tokens, 39) << "reuse stops before the first logprob row";
  for (const auto& [rid, v] : b.samples) EXPECT_EQ(v[0].meta_info.cached_tokens, 0) << rid << " with the cache off";
  EXPECT_GT(on->stats().prefix_hit_tokens, 0);
  EXPECT_EQ(off->stats().prefix_hit_tokens, 0);
  EXPECT_EQ(on->stats().kv_blocks_used, 0) << "blocks only the cache holds are not in use";
}

TEST_F(PrefixEngine, CopiesSubmittedTogetherPrefillOnce) {
  std::vector<GenerateRequest> wave;
  for (int k = 0; k < 8; ++k)
    for (int q = 0; q < 2; ++q)
      wave.push_back(request("p" + std::to_string(q) + "-" + std::to_string(k), prompt(40, q), 5, 1.0f));
  auto on = load(true), off = load(false);
  ASSERT_TRUE(on && off);
  auto a = run(*on, {wave}), b = run(*off, {wave});
  expect_same(a, b);
  int hits = 0;
  for (const auto& [rid, v] : a.samples) hits += v[0].meta_info.cached_tokens == 32;
  EXPECT_EQ(hits, 14) << "every copy but the first of each prompt reuses its two full blocks";
}

TEST_F(PrefixEngine, NeverReusedAfterACommitAndFlushEmptiesIt) {
  auto e = load(true);
  ASSERT_TRUE(e);
  const auto p = prompt(40, 3);
  auto a = run(*e, {{request("a", p, 4, 0.0f)}});
  EXPECT_GT(e->stats().prefix_cached_blocks, 0);
  auto staged = stage_from_disk(e->weights(), dir_, 1);
  ASSERT_TRUE(staged.ok()) << staged.status().to_string();
  StepOutputs out;
  ASSERT_TRUE(e->request_update(std::move(staged).value(), {}, out).ok());
  ASSERT_EQ(e->weight_version(), 1);
  EXPECT_EQ(e->stats().prefix_cached_blocks, 0);
  auto b = run(*e, {{request("b", p, 4, 0.0f)}});
  EXPECT_EQ(b.samples.at("b")[0].meta_info.cached_tokens, 0) << "KV of version 0 must not serve version 1";
  expect_identical(a.samples.at("a")[0], b.samples.at("b")[0], "same weights bytes, recomputed");
  auto c = run(*e, {{request("c", p, 4, 0.0f)}});
  EXPECT_EQ(c.samples.at("c")[0].meta_info.cached_tokens, 32) << "entries of the new version are reused";
  EXPECT_GT(e->flush_cache(), 0);
  EXPECT_EQ(e->stats().prefix_cached_blocks, 0);
  auto d = run(*e, {{request("d", p, 4, 0.0f)}});
  EXPECT_EQ(d.samples.at("d")[0].meta_info.cached_tokens, 0);
}

TEST_F(PrefixEngine, TinyKvBudgetEvictsWithoutErrorsAndStaysBitwiseEqual) {
  // About 12 blocks of 16 positions: far less than the requests below would keep cached.
  auto probe = load(false, size_t{1} << 20);
  ASSERT_TRUE(probe);
  const size_t per_block = (size_t{1} << 20) / probe->stats().kv_blocks_total;
  std::vector<std::vector<GenerateRequest>> waves;
  for (int w = 0; w < 3; ++w) {
    std::vector<GenerateRequest> wave;
    for (int q = 0; q < 4; ++q)
      wave.push_back(request("w" + std::to_string(w) + "q" + std::to_string(q), prompt(37, q % 3), 20, 0.8f));
    waves.push_back(wave);
  }
  auto on = load(true, per_block * 12), off = load(false, per_block * 12);
  ASSERT_TRUE(on && off);
  ASSERT_EQ(on->stats().kv_blocks_total, 12);
  auto a = run(*on, waves), b = run(*off, waves);
  expect_same(a, b);
  for (const auto& [rid, v] : a.samples) EXPECT_NE(v[0].meta_info.finish_reason.type, FinishReason::Type::abort) << rid;
  EXPECT_GT(on->stats().prefix_hit_tokens, 0);
  EXPECT_LE(on->stats().prefix_cached_blocks, 12);
}

TEST_F(PrefixEngine, SessionsStillContinueFromTheirKv) {
  auto e = load(true);
  ASSERT_TRUE(e);
  std::string sid = e->open_session();
  auto t1 = request("t1", prompt(20, 4), 5, 0.0f);
  t1.session_id = sid;
  auto r1 = run(*e, {{t1}});
  auto t2 = request("t2", {7, 8, 9}, 5, 0.0f);
  t2.session_id = sid;
  auto r2 = run(*e, {{t2}});
  EXPECT_EQ(r2.samples.at("t2")[0].meta_info.cached_tokens, 20 + 5 - 1);
  EXPECT_TRUE(e->close_session(sid).ok());
}

}  // namespace
}  // namespace zr
