// bench_engine --logprob-cost: what a decode step spends after the LM head, per vocabulary row,
// on the engine's own sampling path (sample_token on the compute pool, one row per sequence, as
// Engine::run_jobs does): without logprobs, with top-N logprobs, and with top-N selected the way
// the sampler did until issue 19 item 4 (iota + partial_sort over the whole row), on the same rows.
// Timed in isolation (medians of 7 runs) so the difference is not lost in the step's noise.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "model/sampler.h"
#include "model/thread_pool.h"

namespace zr::bench {

struct LogprobCost {
  double plain_ms = 0, top_ms = 0, old_top_ms = 0;  // per step of `batch` rows
};

inline LogprobCost logprob_cost(int vocab, int batch, int threads, int top_n) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> logits(static_cast<size_t>(batch) * vocab);
  for (auto& v : logits) v = nd(rng);
  ThreadPool pool(threads);
  SamplingParams sp;  // temperature 1, no truncation: the RL rollout default
  const std::vector<int> eos;
  std::vector<int> out_ids(1, 0);
  enum class Mode { plain, top, old_top };
  auto step = [&](Mode mode) {
    const int tasks = std::min(batch, threads * 4);
    pool.parallel_for(tasks, [&](int t) {
      thread_local SamplerScratch s;
      for (int r = t; r < batch; r += tasks) {
        SampleContext ctx{&sp, {}, out_ids, static_cast<uint64_t>(r)};
        LogprobOptions lo{mode == Mode::top, LogprobMode::default_mode, mode == Mode::top ? top_n : 0, {}};
        SampledToken tok = sample_token(logits.data() + static_cast<size_t>(r) * vocab, vocab, eos, ctx, lo, s);
        if (mode == Mode::old_top) {  // the former top_n: every id sorted by a partial_sort
          s.order.resize(vocab);
          std::iota(s.order.begin(), s.order.end(), 0);
          const float* lp = s.lp.data();
          std::partial_sort(s.order.begin(), s.order.begin() + top_n, s.order.end(),
                            [lp](int a, int b) { return lp[a] > lp[b] || (lp[a] == lp[b] && a < b); });
          for (int i = 0; i < top_n; ++i) tok.top.emplace_back(s.order[i], lp[s.order[i]]);
        }
      }
    });
  };
  auto median_ms = [&](Mode mode) {
    std::vector<double> ms;
    for (int rep = 0; rep < 7; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      step(mode);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  };
  step(Mode::plain);  // warm the scratch buffers
  return {median_ms(Mode::plain), median_ms(Mode::top), median_ms(Mode::old_top)};
}

// Prints the three costs and, when a decode row of this batch ran, their share of its median step.
inline void print_logprob_cost(int vocab, int batch, int threads, int top_n, double step_ms) {
  const LogprobCost c = logprob_cost(vocab, batch, threads, top_n);
  std::printf(
      "\nsampling after the LM head, %d rows of %d logits, %d thread(s): %.2f ms without logprobs, %.2f ms with "
      "top-%d (%.2f ms with the former partial_sort top-%d)\n",
      batch, vocab, threads, c.plain_ms, c.top_ms, top_n, c.old_top_ms, top_n);
  if (step_ms > 0)
    std::printf(
        "  against the batch-%d decode step (%.1f ms median): sampling %.1f%%, top-%d logprobs add %.2f%% (%.2f%% "
        "before)\n",
        batch, step_ms, 100 * c.plain_ms / step_ms, top_n, 100 * (c.top_ms - c.plain_ms) / step_ms,
        100 * (c.old_top_ms - c.plain_ms) / step_ms);
}

}  // namespace zr::bench
