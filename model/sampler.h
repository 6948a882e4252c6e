// Sampler: turns one row of raw logits into the next token of one sample, with its logprobs.
//
// Pipeline (SGLang's order): raw logits -> penalties (repetition over prompt+output, frequency and
// presence over output) -> logit_bias -> processors (allowed/disallowed ids, min_new_tokens masks
// EOS and stop ids) = "processed" -> divided by the temperature -> log_softmax = the default
// logprobs -> top-k / top-p / min-p truncation -> draw. logprob_mode raw is log_softmax(raw logits)
// and processed is the truncated distribution renormalized. Greedy (temperature 0) takes the argmax
// of the processed logits (lowest id on ties) and reports logprobs at temperature 1.
//
// Determinism: the uniform draw for step s is a hash of (seed, s), so a sample depends only on its
// seed and its own tokens, never on the batch or on recomputation after preemption.
// Thread-safety: free functions; each caller passes its own scratch.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "comm/messages.h"
#include "model/config.h"

namespace zr {

struct SampleContext {
  const SamplingParams* params = nullptr;
  std::span<const int> prompt_ids;
  std::span<const int> output_ids;  // generated so far; the step is output_ids.size()
  uint64_t seed = 0;
};

struct LogprobOptions {
  bool enabled = false;
  LogprobMode mode = LogprobMode::default_mode;
  int top_n = 0;
  std::span<const int> token_ids;
};

struct SampledToken {
  int token = -1;
  float logprob = 0.0f;                    // in the requested mode
  std::vector<std::pair<int, float>> top;  // top_n (id, logprob), best first
  std::vector<std::pair<int, float>> ids;  // (id, logprob) for token_ids
};

struct SamplerScratch {
  std::vector<float> work, lp, probs;
  std::vector<int> order;
};

// Temperature in effect at a step (the schedule, if any, overrides params.temperature).
float effective_temperature(const SamplingParams& p, int step);

// Draws the next token. eos_ids: the model's EOS ids (masked while below min_new_tokens).
SampledToken sample_token(const float* raw_logits, int vocab, const std::vector<int>& eos_ids, const SampleContext& ctx,
                          const LogprobOptions& lo, SamplerScratch& s);

// Logprob of `token` for a prompt or scored position: log_softmax(raw / T) (T = 1 in raw mode),
// plus top_n and token_ids. The same function serves generate's prompt logprobs and score, so the
// two agree bit for bit with the default-mode output logprobs of an unpenalized request.
SampledToken position_logprob(const float* raw_logits, int vocab, float temperature, int token,
                              const LogprobOptions& lo, SamplerScratch& s);

// log_softmax(x / T) into out (T == 1 skips the division; the same code path as sampling).
void scaled_log_softmax(const float* x, int n, float temperature, float* out);

uint64_t sample_rng(uint64_t seed, uint64_t step);  // splitmix64-based hash

}  // namespace zr
