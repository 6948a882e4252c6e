// Engine throughput against this machine's limits, measured in the same run.
//
//   decode at batch B: tokens/s = B / median decode step time, beside
//     - the bandwidth bound  B * read_GB/s / weight_bytes_per_step  (every weight read once a step)
//     - the compute bound    sgemm_GFLOP/s / (2 * params)           (OpenBLAS sgemm peak, same run)
//     (both limits sampled between the row's steps, every --sample-every seconds, and before and
//     after it, so the limits and the work see the same host: its neighbours make the read
//     bandwidth jump between ~30 and ~50 GB/s for a second at a time)
//     and two ratios to the binding (smaller) bound: from the medians of steps and samples, and
//     "paired": the median over steps of each step against the samples taken nearest to it;
//   prefill tokens/s beside the compute bound;
//   the cost of parity: the batch-invariant matmul against OpenBLAS (sgemv at M=1, sgemm above) on
//   the model's own layer shapes, same thread count.
// Usage: bench_engine [--model DIR] [--threads T] [--batches 1,8,64,256] [--prompt 128] [--gen 128]
//        [--compute f32|bf16] [--kv-dtype f32|bf16] [--json FILE] [--top-logprobs N] [--preset NAME]
//        [--logprob-cost B] [--perf-ctl FIFO]
//        (default model: a stories110M-shape f32 model made by make-model into ./bench_models/).
// --json writes rows decode_b<B> (tok/s against the smaller bound) and prefill (bench/bench_json.h).
// The bounds are the f32 ones in both compute modes (weight bytes as loaded, OpenBLAS sgemm), so
// the bf16 ratio says how far the mode goes past what f32 could reach.
#include <cblas.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <random>
#include <sstream>

#include "actors/engine/engine.h"
#include "bench/bench_json.h"
#include "bench/bench_logprob_cost.h"
#include "bench/bench_models.h"
#include "bench/machine_limits.h"
#include "bench/perf_control.h"
#include "model/kernels.h"
#include "model/kernels_packed.h"

namespace zr {
namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<int> random_prompt(int len, int vocab, std::mt19937_64& rng) {
  std::vector<int> ids{1};
  while (static_cast<int>(ids.size()) < len) ids.push_back(3 + static_cast<int>(rng() % (vocab - 3)));
  return ids;
}

// When a step ran (its middle, seconds on Clock) and how long it took.
struct StepTime {
  double at, seconds;
};

struct DecodeResult {
  double tok_s = 0;
  double step_ms = 0;
  int steps = 0;
  std::vector<StepTime> timed;
};

double seconds_of(Clock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

// The limit samples of one row, with when each was taken.
struct LimitTrace {
  std::vector<std::pair<double, double>> read, sgemm;  // (time, GB/s) and (time, GFLOP/s)
  // The sample of `series` taken nearest to time t.
  static double nearest(const std::vector<std::pair<double, double>>& series, double t) {
    auto it = std::lower_bound(series.begin(), series.end(), std::pair{t, 0.0});
    if (it == series.end()) return std::prev(it)->second;
    if (it == series.begin()) return it->second;
    return (t - std::prev(it)->first < it->first - t) ? std::prev(it)->second : it->second;
  }
};

// Median over steps of (the step's bound, from the limits sampled nearest to it) / (its time): each
// step is held against the host as it was within ~0.05 s of it. Against the ratio of medians this
// stays right when the host switches between a slow and a fast phase during a row and the medians
// of the steps and of the samples fall on different sides of the switch.
double paired_ratio(const std::vector<StepTime>& steps, const LimitTrace& tr, double bytes_per_step,
                    double flops_per_step) {
  if (steps.empty() || tr.read.empty() || tr.sgemm.empty()) return 0;
  std::vector<double> r;
  for (const StepTime& s : steps) {
    const double bw_s = bytes_per_step / (LimitTrace::nearest(tr.read, s.at) * 1e9);
    const double flop_s = flops_per_step / (LimitTrace::nearest(tr.sgemm, s.at) * 1e9);
    r.push_back(std::max(bw_s, flop_s) / s.seconds);
  }
  return median(r);
}

// Calls `sample` before the first step, then between steps once g_sample_every seconds have passed
// since the last call (0: never), and after the last step; its time is not counted in any step.
// Every sample reads memory (~25 ms); one in kSgemmEvery also times an sgemm (~90 ms, and OpenBLAS's
// threads spin for a while after it), so a 2 s batch-1 row still gets ~20 bandwidth samples.
double g_sample_every = 0.1;
constexpr int kSgemmEvery = 5;

class Sampling {
 public:
  using Fn = std::function<void(bool sgemm)>;
  explicit Sampling(const Fn& sample) : sample_(sample) { now(); }
  void maybe() {
    if (g_sample_every > 0 && std::chrono::duration<double>(Clock::now() - last_).count() >= g_sample_every) now();
  }
  void now() {
    sample_(count_++ % kSgemmEvery == 0);
    last_ = Clock::now();
  }
  void last() {  // the closing sample always has both
    sample_(true);
  }

 private:
  const Fn& sample_;
  Clock::time_point last_;
  int count_ = 0;
};

// Runs `batch` requests (prompt, gen) and times the steps in which every sequence decodes.
bool g_mmap_weights = false;                         // --mmap-weights: serve from the file mapping (no huge-page copy)
kernels::Compute g_compute = kernels::Compute::f32;  // --compute
int g_top_logprobs = -1;                             // --top-logprobs
DType g_kv_dtype = DType::f32;                       // --kv-dtype
bench::PerfControl g_perf;                           // --perf-ctl

DecodeResult run_decode(const std::string& dir, int threads, int batch, int prompt, int gen,
                        const Sampling::Fn& sample) {
  EngineOptions opt;
  opt.threads = threads;
  opt.copy_weights = !g_mmap_weights;
  opt.compute = g_compute;
  opt.kv_dtype = g_kv_dtype;
  size_t per_token = 0;
  {
    auto cfg = ModelConfig::from_dir(dir);
    per_token = static_cast<size_t>(cfg->num_layers) * 2 * cfg->kv_dim() * dtype_size(g_kv_dtype);
  }
  opt.kv_cache_bytes = per_token * (prompt + gen + 32) * batch + (size_t{64} << 20);
  opt.scheduler.max_running = batch;
  opt.scheduler.max_step_tokens = std::max(2048, batch);
  auto eng = std::move(Engine::load(dir, opt)).value();
  std::mt19937_64 rng(batch);
  for (int i = 0; i < batch; ++i) {
    GenerateRequest r;
    r.rid = "b" + std::to_string(i);
    r.input_ids = random_prompt(prompt, eng->config().vocab_size, rng);
    r.sampling_params.max_new_tokens = gen;
    r.sampling_params.temperature = 1.0f;
    r.sampling_params.seed = i;
    r.sampling_params.ignore_eos = true;
    if (g_top_logprobs >= 0) {
      r.return_logprob = true;
      r.top_logprobs_num = g_top_logprobs;
    }
    (void)eng->submit(r);
  }
  DecodeResult r;
  Sampling sampling(sample);
  while (!eng->idle()) {
    StepOutputs out;
    auto t0 = Clock::now();
    eng->step(out);
    auto t1 = Clock::now();
    if (out.tokens_processed == batch && out.tokens_generated == batch) {
      r.timed.push_back({(seconds_of(t0) + seconds_of(t1)) / 2, std::chrono::duration<double>(t1 - t0).count()});
      if (r.timed.size() == 1) g_perf.enable();  // the steps after the first full decode step
    }
    sampling.maybe();
  }
  g_perf.disable();
  sampling.last();
  std::vector<double> step_s;
  for (const StepTime& st : r.timed) step_s.push_back(st.seconds);
  r.steps = static_cast<int>(step_s.size());
  r.step_ms = median(step_s) * 1e3;
  r.tok_s = batch / median(step_s);
  return r;
}

double run_prefill(const std::string& dir, int threads, int prompts, int prompt, const Sampling::Fn& sample) {
  EngineOptions opt;
  opt.threads = threads;
  opt.copy_weights = !g_mmap_weights;
  opt.compute = g_compute;
  opt.kv_dtype = g_kv_dtype;
  auto eng = std::move(Engine::load(dir, opt)).value();
  std::mt19937_64 rng(7);
  for (int i = 0; i < prompts; ++i) {
    GenerateRequest r;
    r.rid = "p" + std::to_string(i);
    r.input_ids = random_prompt(prompt, eng->config().vocab_size, rng);
    r.sampling_params.max_new_tokens = 1;
    (void)eng->submit(r);
  }
  double seconds = 0;
  Sampling sampling(sample);
  while (!eng->idle()) {
    StepOutputs out;
    auto t0 = Clock::now();
    eng->step(out);
    seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    sampling.maybe();
  }
  sampling.last();
  return prompts * prompt / seconds;
}

// Median seconds of fn over a few runs (each run repeated until >= 20 ms).
template <class F>
double time_it(F fn) {
  std::vector<double> s;
  for (int r = 0; r < 7; ++r) {
    int reps = 0;
    auto t0 = Clock::now();
    double dt = 0;
    do {
      fn();
      ++reps;
      dt = std::chrono::duration<double>(Clock::now() - t0).count();
    } while (dt < 0.02);
    s.push_back(dt / reps);
  }
  return median(s);
}

void parity_cost(const ModelConfig& c, int threads) {
  ThreadPool pool(threads);
  openblas_set_num_threads(threads);
  std::printf(
      "\ncost of parity: batch-invariant packed matmul (compute %s) vs OpenBLAS sgemm, %d thread(s), GFLOP/s (ours / "
      "blas)\n",
      kernels::compute_name(g_compute), threads);
  std::printf("  %-22s %8s %8s %8s %8s\n", "shape (N x K)", "M=1", "M=8", "M=64", "M=256");
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0, 0.02f);
  for (auto [N, K] : {std::pair{c.q_dim(), c.hidden_size}, std::pair{c.intermediate_size, c.hidden_size},
                      std::pair{c.hidden_size, c.intermediate_size}, std::pair{c.vocab_size, c.hidden_size}}) {
    std::vector<float> w(static_cast<size_t>(N) * K), x(static_cast<size_t>(256) * K), y(static_cast<size_t>(256) * N);
    for (auto& v : w) v = nd(rng);
    for (auto& v : x) v = nd(rng);
    std::printf("  %-22s", (std::to_string(N) + " x " + std::to_string(K)).c_str());
    const auto packed = kernels::pack(w.data(), DType::f32, N, K, g_compute);
    for (int M : {1, 8, 64, 256}) {
      double ours = time_it([&] { kernels::matmul_packed(x.data(), M, K, *packed, y.data(), N, &pool); });
      double blas = time_it([&] {
        if (M == 1) cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, w.data(), K, x.data(), 1, 0.0f, y.data(), 1);
        else
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x.data(), K, w.data(), K, 0.0f, y.data(),
                      N);
      });
      double flop = 2.0 * M * N * K;
      std::printf(" %4.0f/%-4.0f", flop / ours / 1e9, flop / blas / 1e9);
    }
    std::printf("\n");
  }
}

}  // namespace
}  // namespace zr

int main(int argc, char** argv) {
  using namespace zr;
  CLI::App app{"zrollout engine benchmark"};
  std::string model, batches_arg = "1,8,64,256";
  int threads = static_cast<int>(std::thread::hardware_concurrency()), prompt = 128, gen = 128, prefill_prompts = 16;
  app.add_option("--model", model, "model folder (default: make a stories110M-shape model)");
  app.add_option("--threads", threads, "engine threads")->capture_default_str();
  app.add_option("--batches", batches_arg, "decode batch sizes")->capture_default_str();
  app.add_option("--prompt", prompt, "prompt tokens")->capture_default_str();
  app.add_option("--gen", gen, "new tokens")->capture_default_str();
  app.add_option("--prefill-prompts", prefill_prompts, "prompts in the prefill run (0: skip)")->capture_default_str();
  app.add_flag("--mmap-weights", g_mmap_weights,
               "engine serves weights from the file mapping (default: huge-page copy)");
  app.add_option("--sample-every", g_sample_every,
                 "seconds between limit samples during a row (0: before and after only)")
      ->capture_default_str();
  std::string json_path, compute = "f32";
  app.add_option("--json", json_path, "write result rows to FILE (bench/bench_json.h)");
  app.add_option("--compute", compute, "engine matmul mode")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  std::string kv_dtype = "f32";
  app.add_option("--kv-dtype", kv_dtype, "engine KV cache element type")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  app.add_option("--top-logprobs", g_top_logprobs,
                 "decode requests ask for the sampled token's logprob and this many top ones (-1: no logprobs)")
      ->capture_default_str();
  // Large vocabularies (issue 19 item 4): a preset model, and the sampling path's own cost.
  std::string preset = "stories110M";
  app.add_option("--preset", preset, "without --model: make-model preset made into ./bench_models/")
      ->capture_default_str();
  int logprob_cost_batch = 0;
  app.add_option("--logprob-cost", logprob_cost_batch,
                 "time sampling B rows of the vocabulary with and without top-N logprobs (N: --top-logprobs, "
                 "else 5) against the batch-B decode step (0: skip)");
  double logprob_cost_step_ms = 0;
  std::string perf_ctl;
  app.add_option("--perf-ctl", perf_ctl,
                 "perf record's --control fifo: profile decode steps only (bench/perf_control.h)");
  bool skip_parity = false;
  app.add_flag("--skip-parity", skip_parity, "skip the kernel comparison with OpenBLAS");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  g_compute = compute == "bf16" ? kernels::Compute::bf16 : kernels::Compute::f32;
  g_kv_dtype = kv_dtype == "bf16" ? DType::bf16 : DType::f32;
  g_perf.open(perf_ctl);
  bench::JsonRows rows(json_path);
  if (model.empty()) model = bench::default_model(preset);
  if (model.empty()) return 1;
  auto cfg = ModelConfig::from_dir(model);
  auto w = ModelWeights::load_dir(*cfg, model);
  const double params = static_cast<double>(cfg->num_params());
  const double weight_bytes = static_cast<double>(w->total_bytes());

  std::printf("zrollout bench_engine: %s (%.1fM params, %.0f MB of weights read per step), %d threads\n", model.c_str(),
              params / 1e6, weight_bytes / 1e6, threads);
  std::printf("%s; engine kernels: %s, compute %s, KV %s\n", bench::openblas_description().c_str(),
              kernels::using_avx512() ? "AVX-512 (own, batch-invariant)" : "portable", compute.c_str(),
              kv_dtype.c_str());
  // The host is shared: its bandwidth and sgemm speed drift by 2x within minutes, and jump for a
  // second at a time. Each row samples its limits between its own steps and uses their medians.
  struct Limits {
    double bw_gbps, sgemm_gflops;
    std::string spread;  // "n samples, read a-b GB/s, sgemm c-d GF"
    LimitTrace trace;
  };
  auto sampled = [&](auto&& run) {
    bench::LimitSampler sampler(threads);
    LimitTrace trace;
    run([&](bool sgemm) {
      auto t0 = Clock::now();
      sampler.sample(sgemm);
      const double at = (seconds_of(t0) + seconds_of(Clock::now())) / 2;
      trace.read.emplace_back(at, sampler.last_read_gbps());
      if (sgemm) trace.sgemm.emplace_back(at, sampler.last_sgemm_gflops());
    });
    bench::Measurement rd = sampler.read_gbps(), mm = sampler.sgemm_gflops();
    char buf[160];
    std::snprintf(buf, sizeof buf, "read %.0f-%.0f GB/s over %d samples, sgemm %.0f-%.0f GF over %d", rd.min, rd.max,
                  rd.repeats, mm.min, mm.max, mm.repeats);
    return Limits{rd.median, mm.median, buf, std::move(trace)};
  };
  std::printf(
      "limits: memory read GB/s (256 MiB, %d thr) and OpenBLAS sgemm 2048^3 GFLOP/s (%d thr), sampled\n"
      "between each row's steps (read every %.2f s, sgemm every %d samples, and both before and after);\n"
      "medians used\n\n",
      threads, threads, g_sample_every, kSgemmEvery);
  std::printf(
      "ratio: tok/s over the smaller bound (from the medians); paired: the median over steps of each step's\n"
      "bound from the samples nearest to it over its time (the host's fast and slow phases paired up)\n\n");
  std::printf("%-10s %10s %10s %9s %9s %12s %12s %8s %7s\n", "decode", "tok/s", "step ms", "read GB/s", "sgemm GF",
              "bw bound", "flop bound", "ratio", "paired");
  std::stringstream ss(batches_arg);
  for (std::string b; std::getline(ss, b, ',');) {
    int batch = std::stoi(b);
    DecodeResult r;
    Limits lim =
        sampled([&](const Sampling::Fn& sample) { r = run_decode(model, threads, batch, prompt, gen, sample); });
    double bw_bound = batch * lim.bw_gbps * 1e9 / weight_bytes;
    double compute_bound = lim.sgemm_gflops * 1e9 / (2 * params);
    double bound = std::min(bw_bound, compute_bound);
    double paired = paired_ratio(r.timed, lim.trace, weight_bytes, 2 * params * batch);
    std::printf("batch %-4d %10.1f %10.2f %9.1f %9.1f %12.1f %12.1f %7.0f%% %6.0f%%  (%s-bound, %d steps; %s)\n", batch,
                r.tok_s, r.step_ms, lim.bw_gbps, lim.sgemm_gflops, bw_bound, compute_bound, 100 * r.tok_s / bound,
                100 * paired, bw_bound < compute_bound ? "bandwidth" : "compute", r.steps, lim.spread.c_str());
    rows.add({"decode_b" + std::to_string(batch), r.tok_s, "tok/s", bound});
    // Attention reads every row's K and V once a layer, bytes the bounds above leave out: at batch 64
    // and ~150 positions that is more than the weights. The time of that read at the sampled
    // bandwidth added to the bound's time says how far the step is from both limits together.
    const double kv_bytes = static_cast<double>(batch) * (prompt + gen / 2.0) * cfg->num_layers * 2 * cfg->kv_dim() *
                            dtype_size(g_kv_dtype);
    const double with_kv = batch / (batch / bound + kv_bytes / (lim.bw_gbps * 1e9));
    std::printf(
        "           attention reads %.0f MB of KV a step (mean context %d): bound with that read %.1f tok/s, "
        "ratio %.0f%%\n",
        kv_bytes / 1e6, prompt + gen / 2, with_kv, 100 * r.tok_s / with_kv);
    if (batch == logprob_cost_batch) logprob_cost_step_ms = r.step_ms;
  }
  if (prefill_prompts > 0) {
    double pf = 0;
    Limits lim =
        sampled([&](const Sampling::Fn& sample) { pf = run_prefill(model, threads, prefill_prompts, prompt, sample); });
    double compute_bound = lim.sgemm_gflops * 1e9 / (2 * params);
    std::printf("prefill    %10.1f %10s %9.1f %9.1f %12s %12.1f %7.0f%% %7s  (%d x %d-token prompts; %s)\n", pf, "",
                lim.bw_gbps, lim.sgemm_gflops, "", compute_bound, 100 * pf / compute_bound, "", prefill_prompts, prompt,
                lim.spread.c_str());
    rows.add({"prefill", pf, "tok/s", compute_bound});
  }
  if (logprob_cost_batch > 0)
    bench::print_logprob_cost(cfg->vocab_size, logprob_cost_batch, threads, g_top_logprobs > 0 ? g_top_logprobs : 5,
                              logprob_cost_step_ms);
  if (!rows.write()) return 1;
  if (!skip_parity) parity_cost(*cfg, threads);
  return 0;
}
