#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "model/kernels.h"
#include "model/splitmix64.h"

namespace zr {

namespace {

void apply_penalties(float* work, int vocab, const SampleContext& ctx) {
  const SamplingParams& p = *ctx.params;
  if (p.repetition_penalty != 1.0f) {
    std::vector<char> seen(vocab, 0);
    for (int t : ctx.prompt_ids) seen[t] = 1;
    for (int t : ctx.output_ids) seen[t] = 1;
    for (int t = 0; t < vocab; ++t)
      if (seen[t]) work[t] = work[t] > 0 ? work[t] / p.repetition_penalty : work[t] * p.repetition_penalty;
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    std::unordered_map<int, int> counts;
    for (int t : ctx.output_ids) ++counts[t];
    for (auto [t, c] : counts) work[t] -= p.frequency_penalty * c + p.presence_penalty;
  }
}

void apply_processors(float* work, int vocab, const std::vector<int>& eos_ids, const SampleContext& ctx) {
  const SamplingParams& p = *ctx.params;
  for (auto [t, b] : p.logit_bias) work[t] += b;
  for (int t : p.processors.disallowed_token_ids) work[t] = -INFINITY;
  if (p.processors.allowed_token_ids) {
    std::vector<char> ok(vocab, 0);
    for (int t : *p.processors.allowed_token_ids) ok[t] = 1;
    for (int t = 0; t < vocab; ++t)
      if (!ok[t]) work[t] = -INFINITY;
  }
  if (static_cast<int>(ctx.output_ids.size()) < p.min_new_tokens) {
    for (int t : eos_ids) work[t] = -INFINITY;
    for (int t : p.stop_token_ids) work[t] = -INFINITY;
  }
}

int argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

// Indices of the top n values of lp (ties: lower id first), best first: the same list as a
// partial_sort of all ids by (value descending, id ascending), in one pass that keeps the best n
// seen so far. Ids arrive in increasing order, so a later id enters only with a strictly larger
// value than the current n-th; most of a 152K row fails that test 16 values at a time.
std::vector<std::pair<int, float>> top_n(const float* lp, int vocab, int n) {
  n = std::min(n, vocab);
  std::vector<std::pair<int, float>> best;  // sorted best first
  if (n <= 0) return best;
  best.reserve(static_cast<size_t>(n) + 1);
  auto offer = [&](int i) {
    if (static_cast<int>(best.size()) == n && !(lp[i] > best.back().second)) return;
    auto at = std::find_if(best.begin(), best.end(), [&](const auto& b) { return lp[i] > b.second; });
    best.insert(at, {i, lp[i]});
    if (static_cast<int>(best.size()) > n) best.pop_back();
  };
  constexpr int kBlock = 16;
  int i = 0;
  for (; static_cast<int>(best.size()) < n && i < vocab; ++i) offer(i);
  for (; i + kBlock <= vocab; i += kBlock) {
    const float floor = best.back().second;
    bool any = false;
    for (int j = 0; j < kBlock; ++j) any |= lp[i + j] > floor;  // vectorizes; NaN never enters
    if (any)
      for (int j = 0; j < kBlock; ++j) offer(i + j);
  }
  for (; i < vocab; ++i) offer(i);
  return best;
}

void fill_extras(const float* lp, int vocab, const LogprobOptions& lo, SampledToken& out) {
  if (!lo.enabled) return;
  if (lo.top_n > 0) out.top = top_n(lp, vocab, lo.top_n);
  for (int t : lo.token_ids) out.ids.emplace_back(t, lp[t]);
}

// The top-p and min-p cuts over the first `keep` ids of `order` (sorted best first).
int truncate_sorted(const float* probs, const SamplingParams& p, int keep, const std::vector<int>& order) {
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    int i = 0;
    for (; i < keep; ++i) {
      if (cum >= p.top_p) break;  // the smallest prefix whose mass reaches top_p
      cum += probs[order[i]];
    }
    keep = std::max(1, i);
  }
  if (p.min_p > 0.0f) {
    float floor_p = p.min_p * probs[order[0]];
    int i = 1;
    while (i < keep && probs[order[i]] >= floor_p) ++i;
    keep = i;
  }
  return keep;
}

// The ids whose probability is >= floor, best first (probability descending, lower id first on
// ties): the head of the order a sort of every id gives, since every id left out comes after them.
void sorted_above(const float* probs, int vocab, float floor, std::vector<int>& order) {
  order.clear();
  for (int i = 0; i < vocab; ++i)
    if (probs[i] >= floor) order.push_back(i);
  std::sort(order.begin(), order.end(),
            [probs](int a, int b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
}

// Keeps the candidates that survive top-k / top-p / min-p; returns them in draw order (probability
// descending, lower id first on ties) in s.order, their count as the result. probs: softmax.
// top-p and min-p sort only the ids above a floor (a 152K-entry row holds a few hundred above
// 2^-12 of the best): when the ids kept end inside that head, the cut is the one a sort of the
// whole row gives, summed in the same order; otherwise the floor drops and the head grows.
int truncate(const float* probs, int vocab, const SamplingParams& p, std::vector<int>& order) {
  auto better = [probs](int a, int b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); };
  if (p.top_k > 0 && p.top_k < vocab) {
    order.resize(vocab);
    for (int i = 0; i < vocab; ++i) order[i] = i;
    std::partial_sort(order.begin(), order.begin() + p.top_k, order.end(), better);
    return truncate_sorted(probs, p, p.top_k, order);
  }
  if (p.top_p >= 1.0f && p.min_p <= 0.0f) {  // no truncation: index order
    order.resize(vocab);
    for (int i = 0; i < vocab; ++i) order[i] = i;
    return vocab;
  }
  const float best = *std::max_element(probs, probs + vocab);
  const float min_p_floor = p.min_p * best;  // as truncate_sorted computes it
  for (float floor = best * 0x1.0p-12f;; floor *= 0x1.0p-12f) {
    if (p.min_p > 0.0f) floor = std::min(floor, min_p_floor);
    if (floor < 1e-30f) break;  // the head is (nearly) the whole row
    sorted_above(probs, vocab, floor, order);
    if (p.top_p >= 1.0f) return truncate_sorted(probs, p, static_cast<int>(order.size()), order);
    double head_mass = 0.0;
    for (int id : order) head_mass += probs[id];
    if (head_mass >= p.top_p) return truncate_sorted(probs, p, static_cast<int>(order.size()), order);
  }
  sorted_above(probs, vocab, -INFINITY, order);
  return truncate_sorted(probs, p, vocab, order);
}

}  // namespace

uint64_t sample_rng(uint64_t seed, uint64_t step) { return splitmix64(seed ^ splitmix64(step)); }

float effective_temperature(const SamplingParams& p, int step) {
  if (!p.processors.temperature_schedule) return p.temperature;
  const TemperatureSchedule& s = *p.processors.temperature_schedule;
  if (s.warmup_tokens <= 0 || step >= s.warmup_tokens) return s.final;
  float f = static_cast<float>(step) / static_cast<float>(s.warmup_tokens);
  return s.initial + (s.final - s.initial) * f;
}

void scaled_log_softmax(const float* x, int n, float temperature, float* out) {
  if (temperature == 1.0f) {
    kernels::log_softmax(x, n, out);
    return;
  }
  for (int i = 0; i < n; ++i) out[i] = x[i] / temperature;
  kernels::log_softmax(out, n, out);
}

SampledToken position_logprob(const float* raw, int vocab, float temperature, int token, const LogprobOptions& lo,
                              SamplerScratch& s) {
  s.lp.resize(vocab);
  float t = (lo.mode == LogprobMode::raw || temperature <= 0.0f) ? 1.0f : temperature;
  scaled_log_softmax(raw, vocab, t, s.lp.data());
  SampledToken out;
  out.token = token;
  out.logprob = s.lp[token];
  fill_extras(s.lp.data(), vocab, lo, out);
  return out;
}

SampledToken sample_token(const float* raw, int vocab, const std::vector<int>& eos_ids, const SampleContext& ctx,
                          const LogprobOptions& lo, SamplerScratch& s) {
  const SamplingParams& p = *ctx.params;
  const int step = static_cast<int>(ctx.output_ids.size());
  s.work.assign(raw, raw + vocab);
  apply_penalties(s.work.data(), vocab, ctx);
  apply_processors(s.work.data(), vocab, eos_ids, ctx);
  const float temp = effective_temperature(p, step);
  const bool greedy = temp <= 0.0f;
  s.lp.resize(vocab);
  scaled_log_softmax(s.work.data(), vocab, greedy ? 1.0f : temp, s.lp.data());

  SampledToken out;
  int keep = 1;
  if (greedy) {
    out.token = argmax(s.work.data(), vocab);
    s.order.assign(1, out.token);
  } else {
    s.probs.resize(vocab);
    kernels::exp(s.lp.data(), vocab, s.probs.data());  // lp <= 0
    keep = truncate(s.probs.data(), vocab, p, s.order);
    double mass = 0.0;
    for (int i = 0; i < keep; ++i) mass += s.probs[s.order[i]];
    double u = static_cast<double>(sample_rng(ctx.seed, step) >> 11) * 0x1.0p-53 * mass;
    double cum = 0.0;
    out.token = s.order[keep - 1];
    for (int i = 0; i < keep; ++i) {
      cum += s.probs[s.order[i]];
      if (u < cum) {
        out.token = s.order[i];
        break;
      }
    }
    // Renormalized truncated distribution, for logprob_mode processed.
    if (lo.enabled && lo.mode == LogprobMode::processed) {
      float log_mass = static_cast<float>(std::log(mass));
      std::vector<char> kept(vocab, 0);
      for (int i = 0; i < keep; ++i) kept[s.order[i]] = 1;
      for (int i = 0; i < vocab; ++i) s.lp[i] = kept[i] ? s.lp[i] - log_mass : -INFINITY;
    }
  }
  if (lo.enabled && lo.mode == LogprobMode::processed && greedy) {
    for (int i = 0; i < vocab; ++i) s.lp[i] = i == out.token ? 0.0f : -INFINITY;
  }
  if (lo.enabled && lo.mode == LogprobMode::raw) kernels::log_softmax(raw, vocab, s.lp.data());
  out.logprob = s.lp[out.token];
  fill_extras(s.lp.data(), vocab, lo, out);
  return out;
}

}  // namespace zr
