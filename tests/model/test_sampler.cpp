// The effect of each sampling parameter and logit processor, directly on the sampler with known
// logits (model/sampler.h; no engine: the engine-driven cases are tests/actors/test_engine_sampling.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "model/sampler.h"

namespace zr {
namespace {

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

// top_n (position_logprob and sample_token's top logprobs) against a partial_sort of every id by
// (logprob descending, id ascending): rows of Qwen's vocabulary size with many exact ties (logits
// on a coarse grid), -inf entries, the best values at the row's ends, and rows shorter than n.
std::vector<std::pair<int, float>> sorted_top(const std::vector<float>& lp, int n) {
  std::vector<int> order(lp.size());
  for (size_t i = 0; i < lp.size(); ++i) order[i] = static_cast<int>(i);
  n = std::min<int>(n, static_cast<int>(lp.size()));
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](int a, int b) { return lp[a] > lp[b] || (lp[a] == lp[b] && a < b); });
  std::vector<std::pair<int, float>> out;
  for (int i = 0; i < n; ++i) out.emplace_back(order[i], lp[order[i]]);
  return out;
}

TEST(SamplerTopK, TopLogprobsEqualAFullSortWithTies) {
  std::mt19937 rng(5);
  SamplerScratch scratch;
  for (int vocab : {1, 3, 17, 151936}) {
    for (int trial = 0; trial < 6; ++trial) {
      std::vector<float> logits(vocab);
      for (auto& v : logits) v = static_cast<float>(static_cast<int>(rng() % 64)) / 8.0f;  // many ties
      if (trial % 3 == 1)
        for (int i = 1; i < vocab; i += 3) logits[i] = -INFINITY;  // never the whole row
      if (trial % 3 == 2) logits[vocab - 1] = logits[0] = 20.0f;   // the best at both ends: a tie
      std::vector<float> lp(vocab);
      scaled_log_softmax(logits.data(), vocab, 1.0f, lp.data());
      for (int n : {1, 5, 20}) {
        LogprobOptions lo{true, LogprobMode::default_mode, n, {}};
        SampledToken t = position_logprob(logits.data(), vocab, 1.0f, 0, lo, scratch);
        EXPECT_EQ(t.top, sorted_top(lp, n)) << "vocab " << vocab << " trial " << trial << " n " << n;
      }
    }
  }
}

// top-p / min-p sort only the head of a row above a floor (model/sampler.cpp truncate): the same
// token, logprob and processed-mode distribution as a sort of the whole row, drawn here as the
// sampler draws (sample_rng, probability order, lower id first on ties).
SampledToken full_sort_draw(const std::vector<float>& logits, const SamplingParams& p, uint64_t seed) {
  const int vocab = static_cast<int>(logits.size());
  std::vector<float> lp(vocab), probs(vocab);
  scaled_log_softmax(logits.data(), vocab, p.temperature, lp.data());
  for (int i = 0; i < vocab; ++i) probs[i] = std::exp(lp[i]);
  std::vector<int> order(vocab);
  for (int i = 0; i < vocab; ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](int a, int b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
  int keep = vocab;
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    int i = 0;
    for (; i < keep && cum < p.top_p; ++i) cum += probs[order[i]];
    keep = std::max(1, i);
  }
  if (p.min_p > 0.0f) {
    int i = 1;
    while (i < keep && probs[order[i]] >= p.min_p * probs[order[0]]) ++i;
    keep = i;
  }
  double mass = 0.0, cum = 0.0;
  for (int i = 0; i < keep; ++i) mass += probs[order[i]];
  const double u = static_cast<double>(sample_rng(seed, 0) >> 11) * 0x1.0p-53 * mass;
  SampledToken t;
  t.token = order[keep - 1];
  for (int i = 0; i < keep; ++i)
    if (u < (cum += probs[order[i]])) {
      t.token = order[i];
      break;
    }
  t.logprob = lp[t.token] - static_cast<float>(std::log(mass));
  return t;
}

TEST(SamplerTopK, TopPAndMinPOnTheHeadEqualAFullSort) {
  std::mt19937 rng(9);
  SamplerScratch scratch;
  const std::vector<int> no_ids;
  int draws = 0;
  for (float spread : {0.5f, 3.0f, 8.0f}) {  // flat (the head is the whole row) to peaked rows
    std::vector<float> logits(151936);
    std::normal_distribution<float> nd(0.0f, spread);
    for (auto& v : logits) v = std::round(nd(rng) * 16.0f) / 16.0f;  // ties
    for (auto [top_p, min_p] : {std::pair{0.9f, 0.0f}, {0.5f, 0.0f}, {0.999f, 0.0f}, {1.0f, 0.05f}, {0.95f, 0.01f}}) {
      SamplingParams sp;
      sp.top_p = top_p;
      sp.min_p = min_p;
      for (uint64_t seed = 0; seed < 4; ++seed, ++draws) {
        SampleContext ctx{&sp, {}, no_ids, seed};
        LogprobOptions lo{true, LogprobMode::processed, 0, {}};
        SampledToken got = sample_token(logits.data(), 151936, {}, ctx, lo, scratch);
        SampledToken want = full_sort_draw(logits, sp, seed);
        EXPECT_EQ(got.token, want.token) << "spread " << spread << " top_p " << top_p << " min_p " << min_p;
        EXPECT_EQ(got.logprob, want.logprob) << "spread " << spread << " top_p " << top_p << " min_p " << min_p;
      }
    }
  }
  EXPECT_EQ(draws, 60);
}

}  // namespace
}  // namespace zr
