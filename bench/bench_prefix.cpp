// Prefix caching at the GRPO shape: P prompts x N separate requests of the same prompt (as verl
// sends n samples), prompt length L, run through one engine with the prefix cache on and off, in
// the same run. Prints per mode the positions the forward computed, the positions taken from the
// cache (meta_info.cached_tokens), the wall time, and whether both modes gave the same bits.
// Usage: bench_prefix [--model DIR] [--prompts 32] [--copies 8] [--prompt-len 128] [--max-new 1]
//        [--threads 2] [--kv-cache-mb 1024] [--rounds 1] [--json FILE]
//        --json rows per round: prefix_cache_speedup (time off / time on, x) and
//        prefix_cache_computed_ratio (positions computed off / on, x), bench/bench_json.h.
//        (default model: a stories110M-shape f32 model made by make-model into ./bench_models/).
// Run it alone: `cpu bench build/bench/bench_prefix ...`.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstring>
#include <map>
#include <random>

#include "actors/engine/engine.h"
#include "bench/bench_json.h"
#include "bench/bench_models.h"

namespace zr {
namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  int prompts = 32, copies = 8, prompt_len = 128, max_new = 1;
};

struct ModeResult {
  double seconds = 0;
  int64_t computed = 0, cached = 0;
  std::map<std::string, SampleOutput> outputs;
};

std::vector<GenerateRequest> grpo_batch(const Shape& s, int vocab) {
  std::mt19937_64 rng(1234);
  std::vector<GenerateRequest> out;
  for (int p = 0; p < s.prompts; ++p) {
    std::vector<int> ids{1};
    while (static_cast<int>(ids.size()) < s.prompt_len) ids.push_back(3 + static_cast<int>(rng() % (vocab - 3)));
    for (int c = 0; c < s.copies; ++c) {
      GenerateRequest r;
      r.rid = "p" + std::to_string(p) + "-" + std::to_string(c);
      r.input_ids = ids;
      r.sampling_params.max_new_tokens = s.max_new;
      r.sampling_params.temperature = 1.0f;
      r.sampling_params.seed = 1000 * p + c;
      r.sampling_params.ignore_eos = true;
      r.return_logprob = true;
      out.push_back(std::move(r));
    }
  }
  return out;
}

Result<ModeResult> run_mode(Engine& e, const std::vector<GenerateRequest>& batch) {
  ModeResult m;
  auto t0 = Clock::now();
  for (const auto& r : batch) ZR_RETURN_IF_ERROR(e.submit(r));
  while (!e.idle()) {
    StepOutputs out;
    e.step(out);
    m.computed += out.tokens_processed;
    for (auto& o : out.finished) {
      m.cached += o.meta_info.cached_tokens;
      m.outputs[o.rid] = std::move(o);
    }
  }
  m.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  e.flush_cache();  // the next round starts cold
  return m;
}

bool same_outputs(const ModeResult& a, const ModeResult& b) {
  if (a.outputs.size() != b.outputs.size()) return false;
  for (const auto& [rid, o] : a.outputs) {
    const SampleOutput& p = b.outputs.at(rid);
    if (o.output_ids != p.output_ids) return false;
    for (size_t i = 0; i < o.meta_info.output_token_logprobs.size(); ++i) {
      float x = *o.meta_info.output_token_logprobs[i].logprob, y = *p.meta_info.output_token_logprobs[i].logprob;
      if (std::memcmp(&x, &y, sizeof x) != 0) return false;
    }
  }
  return true;
}

int run(int argc, char** argv) {
  CLI::App app{"prefix caching at the GRPO shape"};
  std::string model;
  Shape s;
  int threads = 2, kv_mb = 1024, rounds = 1;
  app.add_option("--model", model, "model folder (default: bench_models/stories110M, made on first use)");
  app.add_option("--prompts", s.prompts)->capture_default_str();
  app.add_option("--copies", s.copies, "separate requests per prompt")->capture_default_str();
  app.add_option("--prompt-len", s.prompt_len)->capture_default_str();
  app.add_option("--max-new", s.max_new, "new tokens per request")->capture_default_str();
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--kv-cache-mb", kv_mb)->capture_default_str();
  app.add_option("--rounds", rounds, "on/off pairs, alternated")->capture_default_str();
  std::string json_path;
  app.add_option("--json", json_path, "write result rows to FILE (bench/bench_json.h)");
  CLI11_PARSE(app, argc, argv);
  bench::JsonRows rows(json_path);
  spdlog::set_level(spdlog::level::warn);
  if (model.empty()) model = bench::default_model("stories110M");
  if (model.empty()) return 1;
  std::map<bool, std::unique_ptr<Engine>> engines;
  for (bool cache : {true, false}) {
    EngineOptions o;
    o.threads = threads;
    o.kv_cache_bytes = static_cast<size_t>(kv_mb) << 20;
    o.scheduler.prefix_cache = cache;
    auto e = Engine::load(model, o);
    if (!e.ok()) return std::fprintf(stderr, "%s\n", e.status().to_string().c_str()), 1;
    engines[cache] = std::move(e).value();
  }
  auto batch = grpo_batch(s, engines[true]->config().vocab_size);
  const char* ct = std::getenv("OPENBLAS_CORETYPE");
  std::printf("bench_prefix: %s, %d prompts x %d requests, prompt %d, max_new %d, %d threads, OPENBLAS_CORETYPE=%s\n",
              model.c_str(), s.prompts, s.copies, s.prompt_len, s.max_new, threads, ct ? ct : "(unset)");
  std::printf("%-6s %5s %14s %14s %10s %12s\n", "cache", "round", "computed_tok", "cached_tok", "seconds", "same_bits");
  for (int round = 0; round < rounds; ++round) {
    std::map<bool, ModeResult> res;
    for (bool cache : {round % 2 == 0, round % 2 != 0}) {
      auto r = run_mode(*engines[cache], batch);
      if (!r.ok()) return std::fprintf(stderr, "%s\n", r.status().to_string().c_str()), 1;
      res[cache] = std::move(r).value();
    }
    const bool same = same_outputs(res[true], res[false]);
    for (bool cache : {true, false})
      std::printf("%-6s %5d %14lld %14lld %10.2f %12s\n", cache ? "on" : "off", round,
                  static_cast<long long>(res[cache].computed), static_cast<long long>(res[cache].cached),
                  res[cache].seconds, same ? "yes" : "NO");
    std::printf("prefix_cache round %d: %.2fx fewer positions computed, %.2fx faster\n", round,
                static_cast<double>(res[false].computed) / std::max<int64_t>(1, res[true].computed),
                res[false].seconds / res[true].seconds);
    if (!same) std::printf("prefix_cache round %d: outputs DIFFER with and without the cache\n", round);
    rows.add({"prefix_cache_speedup", res[false].seconds / res[true].seconds, "x", 0});
    rows.add({"prefix_cache_computed_ratio",
              static_cast<double>(res[false].computed) / std::max<int64_t>(1, res[true].computed), "x", 0});
  }
  return rows.write() ? 0 : 1;
}

}  // namespace
}  // namespace zr

int main(int argc, char** argv) { return zr::run(argc, argv); }
