// bench_tp: tensor-parallel decode (TP = the number of MPI ranks) against TP=1 on the same machine,
// with the share of the decode step spent in TpGroup's collectives, beside the raw collective
// latency for the same payloads measured in the same run (the host is noisy: compare within a run).
//
// For each batch size B (B greedy requests, prompt P random tokens, G new tokens, ignore_eos):
//   TP=1        rank 0 runs a plain Engine with --threads threads; the other ranks sleep;
//   TP=1'       rank 0 again, with threads x T threads: the cores TP=T uses, in one process
//               (--no-same-cores skips it);
//   TP=T        rank 0 leads (Engine with EngineOptions::tp), the other ranks run TpFollower;
//               rank 0's TpGroup::stats() over the decode steps give the time in the per-layer
//               allreduces (2 per layer, B x hidden floats each), the logits gather and the command
//               broadcast;
//   raw         for the same payloads, back-to-back calls on every rank, median per call on rank 0:
//               MPI_Allreduce (MpiGroup::allreduce_sum), MPI_Allgather (MpiGroup::allgather_bytes),
//               TpGroup::allreduce_sum alone (allgather + rank-ordered sum: what the engine calls,
//               deterministic), and the logits gather (MpiGroup::gather_bytes, B x vocab/T floats).
// Decode = the steps in which every one of the B sequences decodes one token (prefill excluded):
// tok/s = tokens generated in those steps / their summed time.
// Noise: each phase prints its ranks' involuntary context switches (another process took the core;
// the TP phase keeps every core busy, so any neighbour shows there) and the load average.
//
// Run: mpirun [--allow-run-as-root] --oversubscribe --bind-to none -np 2 build/bench/bench_tp
//          [--model DIR] [--batches 1,64] [--prompt 64] [--gen 64] [--threads 1] [--no-same-cores]
// (default model: a random stories110M-shape model made by make-model into ./bench_models/).
// --json FILE (rank 0 writes it, bench/bench_json.h): rows tp<T>_decode_b<B> (tok/s; bound: TP=1
// with the same total threads in one process, else TP=1) and tp1_decode_b<B>.
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "actors/engine/engine.h"
#include "actors/engine/tp_follower.h"
#include "actors/engine/tp_group.h"
#include "bench/bench_json.h"
#include "bench/bench_models.h"
#include "comm/mpi_group.h"
#include "model/config.h"
#include "model/kernels.h"

namespace zr {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void die_if(const Status& s, const char* what) {
  if (s.ok()) return;
  std::fprintf(stderr, "bench_tp: %s: %s\n", what, s.to_string().c_str());
  std::fflush(stderr);
  std::exit(1);
}

// Ranks other than 0 wait here without burning a core while rank 0 works alone (waking at most
// every 20 ms, so they hardly disturb a TP=1 run that uses every core).
void park(MpiGroup& world) {
  std::string token = "go";
  die_if(world.bcast_small_idle(token, 0, 20000us), "park");
}

std::vector<int> random_prompt(int len, int vocab, std::mt19937_64& rng) {
  std::vector<int> ids{1};
  while (static_cast<int>(ids.size()) < len) ids.push_back(3 + static_cast<int>(rng() % (vocab - 3)));
  return ids;
}

struct Shape {
  int hidden = 0, vocab = 0, layers = 0;
  double params = 0;
  size_t kv_bytes_per_token = 0;  // full model, all KV heads
};

EngineOptions engine_options(const Shape& s, int threads, int batch, int prompt, int gen) {
  EngineOptions o;
  o.threads = threads;
  o.kv_cache_bytes = s.kv_bytes_per_token * (prompt + gen + 32) * batch + (size_t{64} << 20);
  o.scheduler.max_running = batch;
  o.scheduler.max_step_tokens = std::max(2048, batch);
  return o;
}

struct Decode {
  double tok_s = 0, step_ms = 0;  // tokens / summed decode time; median decode step
  int steps = 0;
  int64_t tokens = 0;
  double seconds = 0;
  TpGroup::Stats comm;  // summed over the decode steps (TP only, rank 0)
  // Noise: involuntary context switches of each working rank during the phase (another process took
  // its core), and the 1-minute load average at the end of the phase.
  std::vector<long> preempted;
  double load = 0;
  // TP: each rank's time in allreduce over the whole phase (prefill + decode), and the phase's length
  // on the leader (first submit to idle): who waits for whom.
  std::vector<double> phase_ar_s;
  double phase_s = 0;
};

long involuntary_switches() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_nivcsw;
}

double load1() {
  double l[3] = {0, 0, 0};
  return getloadavg(l, 1) == 1 ? l[0] : -1;
}

TpGroup::Stats minus(const TpGroup::Stats& a, const TpGroup::Stats& b) {
  return {a.allreduce_s - b.allreduce_s, a.gather_s - b.gather_s, a.command_s - b.command_s,
          a.allreduce_calls - b.allreduce_calls, a.allreduce_bytes - b.allreduce_bytes};
}
void add(TpGroup::Stats& a, const TpGroup::Stats& d) {
  a.allreduce_s += d.allreduce_s;
  a.gather_s += d.gather_s;
  a.command_s += d.command_s;
  a.allreduce_calls += d.allreduce_calls;
  a.allreduce_bytes += d.allreduce_bytes;
}

// Rank 0: `batch` greedy requests through `eng`; times only the steps in which all of them decode.
Decode run_decode(Engine& eng, TpGroup* tp, int batch, int prompt, int gen) {
  std::mt19937_64 rng(1000 + batch);
  for (int i = 0; i < batch; ++i) {
    GenerateRequest r;
    r.rid = "b" + std::to_string(i);
    r.input_ids = random_prompt(prompt, eng.config().vocab_size, rng);
    r.sampling_params.max_new_tokens = gen;
    r.sampling_params.temperature = 0.0f;
    r.sampling_params.ignore_eos = true;
    die_if(eng.submit(r), "submit");
  }
  Decode d;
  std::vector<double> step_s;
  while (!eng.idle()) {
    StepOutputs out;
    TpGroup::Stats before = tp ? tp->stats() : TpGroup::Stats{};
    auto t0 = Clock::now();
    eng.step(out);
    double dt = seconds_since(t0);
    if (out.tokens_processed == batch && out.tokens_generated == batch) {
      step_s.push_back(dt);
      d.tokens += out.tokens_generated;
      d.seconds += dt;
      if (tp) add(d.comm, minus(tp->stats(), before));
    }
  }
  d.steps = static_cast<int>(step_s.size());
  d.step_ms = median(step_s) * 1e3;
  d.tok_s = d.seconds > 0 ? d.tokens / d.seconds : 0;
  return d;
}

// TP=1 on rank 0 (others parked).
Decode tp1(MpiGroup& world, const std::string& dir, const Shape& s, int threads, int batch, int prompt, int gen) {
  Decode d;
  if (world.rank() == 0) {
    auto eng = Engine::load(dir, engine_options(s, threads, batch, prompt, gen));
    die_if(eng.status(), "Engine::load");
    const long cs0 = involuntary_switches();
    d = run_decode(**eng, nullptr, batch, prompt, gen);
    d.preempted = {involuntary_switches() - cs0};
    d.load = load1();
  }
  park(world);
  return d;
}

// TP=T over the whole world: rank 0 leads, the others follow until the leader's engine is gone.
Decode tpT(MpiGroup& world, TpGroup& tp, const std::string& dir, const Shape& s, int threads, int batch, int prompt,
           int gen) {
  EngineOptions eo = engine_options(s, threads, batch, prompt, gen);
  eo.tp = &tp;
  Decode d;
  long cs = 0;
  if (tp.leader()) {
    auto eng = Engine::load(dir, eo);
    die_if(eng.status(), "Engine::load (TP leader)");
    tp.reset_stats();
    const long cs0 = involuntary_switches();
    auto t0 = Clock::now();
    d = run_decode(**eng, &tp, batch, prompt, gen);
    d.phase_s = seconds_since(t0);
    cs = involuntary_switches() - cs0;
  } else {
    auto f = TpFollower::load(dir, eo, tp, nullptr);
    die_if(f.status(), "TpFollower::load");
    tp.reset_stats();
    const long cs0 = involuntary_switches();
    (*f)->run();
    cs = involuntary_switches() - cs0;
  }
  const double ar_s = tp.stats().allreduce_s;
  die_if(world.barrier(), "barrier");
  auto all = world.allgather_strings(std::to_string(cs) + " " + std::to_string(ar_s));
  die_if(all.status(), "allgather");
  for (const auto& v : *all) {
    std::istringstream in(v);
    long c = 0;
    double a = 0;
    in >> c >> a;
    d.preempted.push_back(c);
    d.phase_ar_s.push_back(a);
  }
  d.load = load1();
  return d;
}

struct Raw {
  double allreduce_us = 0, allgather_us = 0, tp_allreduce_us = 0, gather_us = 0;
  int reps = 0;
  std::vector<long> preempted;  // involuntary context switches per rank during the measurement
};

// Median µs per call on this rank of `reps` back-to-back calls (after a warm-up), every rank in step.
template <class F>
double per_call_us(MpiGroup& world, int reps, F fn) {
  for (int i = 0; i < std::max(10, reps / 10); ++i) fn();
  die_if(world.barrier(), "barrier");
  std::vector<double> t(reps);
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    fn();
    t[i] = seconds_since(t0);
  }
  return median(t) * 1e6;
}

Raw raw_collectives(MpiGroup& world, TpGroup& tp, const Shape& s, int rows) {
  const size_t n = static_cast<size_t>(rows) * s.hidden;
  const int T = world.size();
  const int reps = n * sizeof(float) > (size_t{1} << 20) ? 300 : 2000;
  std::vector<float> buf(n, 1e-3f), parts(n * T);
  // the logits gather: rank r sends rows x (its vocabulary slice) floats
  std::vector<size_t> counts(T);
  size_t total = 0;
  for (int r = 0; r < T; ++r)
    total += counts[r] = static_cast<size_t>(rows) * split_range(s.vocab, {r, T}).size * sizeof(float);
  std::vector<float> local(counts[world.rank()] / sizeof(float), 0.5f), gathered(total / sizeof(float));

  Raw r;
  r.reps = reps;
  const long cs0 = involuntary_switches();
  r.allreduce_us = per_call_us(world, reps, [&] {
    buf.assign(buf.size(), 1e-3f);  // keep the values bounded; the copy is part of every variant
    die_if(world.allreduce_sum(buf.data(), n), "MPI_Allreduce");
  });
  r.allgather_us = per_call_us(world, reps, [&] {
    buf.assign(buf.size(), 1e-3f);
    die_if(world.allgather_bytes(buf.data(), n * sizeof(float), parts.data()), "MPI_Allgather");
  });
  tp.reset_stats();
  r.tp_allreduce_us = per_call_us(world, reps, [&] {
    buf.assign(buf.size(), 1e-3f);
    tp.allreduce_sum(buf.data(), n);
  });
  tp.reset_stats();
  r.gather_us = per_call_us(
      world, reps, [&] { die_if(world.gather_bytes(local.data(), counts, gathered.data(), 0), "MPI_Gatherv"); });
  auto all = world.allgather_strings(std::to_string(involuntary_switches() - cs0));
  die_if(all.status(), "allgather");
  for (const auto& v : *all) r.preempted.push_back(std::stol(v));
  return r;
}

struct Row {
  int batch = 0;
  Decode one, same, tp;
  Raw raw;
};

void print_tables(const std::vector<Row>& rows, int T, int threads, bool same_cores, const Shape& s) {
  std::printf("\n== decode throughput (tok/s = tokens / summed decode-step time; step = median decode step) ==\n");
  std::printf("%-6s %15s", "batch", "TP=1 tok/s");
  if (same_cores) std::printf(" %15s", "TP=1 tok/s");
  char tpn[32], sp1[32], sp2[32];
  std::snprintf(tpn, sizeof tpn, "TP=%d tok/s", T);
  std::snprintf(sp1, sizeof sp1, "TP%d/TP1", T);
  std::snprintf(sp2, sizeof sp2, "TP%d/TP1'", T);
  std::printf(" %15s %10s", tpn, sp1);
  if (same_cores) std::printf(" %10s", sp2);
  std::printf(" %24s\n", "step ms TP1 / TP1' / TPT");
  char h1[32], h2[32], h3[32];
  std::snprintf(h1, sizeof h1, "(%d thr)", threads);
  std::snprintf(h2, sizeof h2, "(%d thr)'", threads * T);
  std::snprintf(h3, sizeof h3, "(%dx%d thr)", T, threads);
  std::printf("%-6s %15s", "", h1);
  if (same_cores) std::printf(" %15s", h2);
  std::printf(" %15s\n", h3);
  for (const Row& r : rows) {
    std::printf("%-6d %15.1f", r.batch, r.one.tok_s);
    if (same_cores) std::printf(" %15.1f", r.same.tok_s);
    std::printf(" %15.1f %9.2fx", r.tp.tok_s, r.tp.tok_s / r.one.tok_s);
    if (same_cores) std::printf(" %9.2fx", r.tp.tok_s / r.same.tok_s);
    std::printf("   %6.2f / %6.2f / %6.2f\n", r.one.step_ms, same_cores ? r.same.step_ms : 0.0, r.tp.step_ms);
  }
  std::printf("(' = TP=1 with the same total threads as TP=%d, in one process)\n", T);

  std::printf("\n== TP=%d decode step on rank 0 (leader), per step, summed over the decode steps ==\n", T);
  std::printf("%-6s %8s %18s %16s %16s %16s %10s %12s\n", "batch", "step ms", "allreduce ms (%)", "gather ms (%)",
              "command ms (%)", "rest ms (%)", "AR calls", "AR KiB/call");
  for (const Row& r : rows) {
    const Decode& d = r.tp;
    if (d.steps == 0) continue;
    const double st = d.seconds / d.steps * 1e3, ar = d.comm.allreduce_s / d.steps * 1e3,
                 ga = d.comm.gather_s / d.steps * 1e3, cm = d.comm.command_s / d.steps * 1e3, rest = st - ar - ga - cm;
    std::printf("%-6d %8.2f %9.3f (%4.1f%%) %8.3f (%4.1f%%) %8.3f (%4.1f%%) %8.3f (%4.1f%%) %10.1f %12.1f\n", r.batch,
                st, ar, 100 * ar / st, ga, 100 * ga / st, cm, 100 * cm / st, rest, 100 * rest / st,
                static_cast<double>(d.comm.allreduce_calls) / d.steps,
                d.comm.allreduce_calls ? d.comm.allreduce_bytes / 1024.0 / d.comm.allreduce_calls : 0.0);
  }
  std::printf(
      "(step ms here = mean; rest = the leader's own compute: its shard of the forward, logits interleave, "
      "sampling, scheduling)\n");
  std::printf(
      "whole TP phase (prefill + decode), time in allreduce / phase length, by rank (a rank waiting in the "
      "allreduce for a slower peer counts there):\n");
  for (const Row& r : rows) {
    std::printf("  batch %-4d phase %.2f s:", r.batch, r.tp.phase_s);
    for (size_t i = 0; i < r.tp.phase_ar_s.size(); ++i)
      std::printf("  rank %zu %.3f s (%.1f%%)", i, r.tp.phase_ar_s[i], 100 * r.tp.phase_ar_s[i] / r.tp.phase_s);
    std::printf("\n");
  }

  std::printf("\n== collectives: raw latency (same run, np=%d, median of back-to-back calls) vs the engine ==\n", T);
  std::printf("%-6s %9s %11s %11s %13s %13s %11s %10s %10s\n", "batch", "AR KiB", "Allreduce", "Allgather",
              "TpGroup AR", "engine AR", "engine/", "TpGroup/", "engine/");
  std::printf("%-6s %9s %11s %11s %13s %13s %11s %10s %10s\n", "", "", "us (MPI)", "us (MPI)", "us (alone)",
              "us per call", "TpGroup AR", "MPI AR", "MPI AR");
  for (const Row& r : rows) {
    const Decode& d = r.tp;
    const double eng_us = d.comm.allreduce_calls ? d.comm.allreduce_s / d.comm.allreduce_calls * 1e6 : 0;
    std::printf("%-6d %9.1f %11.2f %11.2f %13.2f %13.2f %10.2fx %9.2fx %9.2fx\n", r.batch,
                r.batch * s.hidden * 4 / 1024.0, r.raw.allreduce_us, r.raw.allgather_us, r.raw.tp_allreduce_us, eng_us,
                eng_us / r.raw.tp_allreduce_us, r.raw.tp_allreduce_us / r.raw.allreduce_us,
                eng_us / r.raw.allreduce_us);
  }
  std::printf("(TpGroup/MPI AR = what the deterministic allgather + rank-ordered sum costs over MPI_Allreduce)\n");

  std::printf("\n== per decode step: collective cost predicted from raw latency x calls vs measured ==\n");
  std::printf("%-6s %10s %14s %14s %10s %14s %14s %10s %14s %12s\n", "batch", "AR calls", "pred AR ms", "meas AR ms",
              "meas/pred", "logits KiB", "pred gather ms", "meas ms", "ideal TP tok/s", "meas/ideal");
  std::printf("%-6s %10s %14s %14s %10s %14s %14s %10s %14s %12s\n", "", "", "(TpGroup raw)", "", "", "(per rank)",
              "(raw)", "", "(see below)", "");
  for (const Row& r : rows) {
    const Decode& d = r.tp;
    if (d.steps == 0) continue;
    const double calls = static_cast<double>(d.comm.allreduce_calls) / d.steps;
    const double pred_ar = calls * r.raw.tp_allreduce_us / 1e3, meas_ar = d.comm.allreduce_s / d.steps * 1e3;
    const double pred_ga = r.raw.gather_us / 1e3, meas_ga = d.comm.gather_s / d.steps * 1e3;
    // Ideal: TP=1's (same threads per rank) mean decode step split T ways, plus the raw collectives.
    const double ideal_ms = r.one.seconds / r.one.steps * 1e3 / T + pred_ar + pred_ga;
    const double ideal = r.batch / ideal_ms * 1e3;
    std::printf("%-6d %10.1f %14.3f %14.3f %9.2fx %14.1f %14.3f %10.3f %14.1f %11.0f%%\n", r.batch, calls, pred_ar,
                meas_ar, meas_ar / pred_ar, r.batch * split_range(s.vocab, {0, T}).size * 4 / 1024.0, pred_ga, meas_ga,
                ideal, 100 * r.tp.tok_s / ideal);
  }
  std::printf(
      "(ideal TP tok/s = batch / (TP=1 mean decode step / %d + predicted allreduce + predicted gather): a "
      "perfect split of TP=1's work plus only the raw collective cost)\n",
      T);
  std::printf(
      "\n== noise: involuntary context switches per phase (another process took the core) and 1-min load "
      "average at its end ==\n");
  auto list = [](const std::vector<long>& v) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i) out += (i ? "/" : "") + std::to_string(v[i]);
    return out.empty() ? std::string("-") : out;
  };
  for (const Row& r : rows)
    std::printf(
        "batch %-4d TP=1: %s (load %.2f)   TP=1': %s (load %.2f)   TP=%d ranks 0/1/..: %s (load %.2f)   raw "
        "collectives: %s\n",
        r.batch, list(r.one.preempted).c_str(), r.one.load, list(r.same.preempted).c_str(), r.same.load, T,
        list(r.tp.preempted).c_str(), r.tp.load, list(r.raw.preempted).c_str());
  std::printf("(the TP phase itself keeps %d cores busy: a load near %d there is this benchmark)\n", T, T);
}

}  // namespace
}  // namespace zr

int main(int argc, char** argv) {
  using namespace zr;
  auto world_r = MpiGroup::init(&argc, &argv);
  die_if(world_r.status(), "MpiGroup::init");
  MpiGroup& world = *world_r;
  CLI::App app{"zrollout tensor-parallel benchmark (run under mpirun; TP = number of ranks)"};
  std::string model, batches_arg = "1,64";
  int threads = 1, prompt = 64, gen = 64;
  bool same_cores = true;
  app.add_option("--model", model, "model folder (default: make a stories110M-shape model)");
  app.add_option("--batches", batches_arg, "decode batch sizes")->capture_default_str();
  app.add_option("--prompt", prompt, "prompt tokens")->capture_default_str();
  app.add_option("--gen", gen, "new tokens")->capture_default_str();
  app.add_option("--threads", threads, "compute threads per rank")->capture_default_str();
  app.add_flag("!--no-same-cores", same_cores, "skip TP=1 with threads x ranks threads");
  std::string json_path;
  app.add_option("--json", json_path, "rank 0 writes result rows to FILE (bench/bench_json.h)");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  const int T = world.size(), rank = world.rank();
  const unsigned cores = std::thread::hardware_concurrency();

  // Rank 0 makes the default model (first use) before the others read it.
  if (rank == 0 && model.empty()) model = bench::default_model("stories110M");
  die_if(world.bcast_small(model, 0), "bcast model");
  if (model.empty()) return 1;
  auto cfg = ModelConfig::from_dir(model);
  die_if(cfg.status(), "config");
  Shape s;
  s.hidden = cfg->hidden_size;
  s.vocab = cfg->vocab_size;
  s.layers = cfg->num_layers;
  s.params = static_cast<double>(cfg->num_params());
  s.kv_bytes_per_token = static_cast<size_t>(cfg->num_layers) * 2 * cfg->kv_dim() * sizeof(float);
  if (T > 1) die_if(check_tp(*cfg, T), "check_tp");

  auto split = world.split(0, rank);
  die_if(split.status(), "split");
  TpGroup tp(std::move(split).value());

  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  const int ranks_threads = T * threads;
  if (rank == 0) {
    std::printf("zrollout bench_tp: %s (%.1fM params, hidden %d, %d layers, vocab %d), TP=%d vs TP=1\n", model.c_str(),
                s.params / 1e6, s.hidden, s.layers, s.vocab, T);
    std::printf(
        "machine: %u cores (hardware_concurrency), OPENBLAS_CORETYPE=%s, engine kernels %s, MPI thread level %s\n",
        cores, coretype ? coretype : "unset", kernels::using_avx512() ? "AVX-512" : "portable",
        MpiGroup::thread_level_name(world.thread_level()));
    std::printf(
        "run: np=%d, %d thread(s) per rank (%d busy threads in the TP phase), prompt %d, gen %d, greedy, "
        "ignore_eos\n",
        T, threads, ranks_threads, prompt, gen);
    if (ranks_threads > static_cast<int>(cores))
      std::printf(
          "NOTE: %d busy threads > %u cores: oversubscribed, ranks share cores and MPI waits spin; TP numbers "
          "are not meaningful\n",
          ranks_threads, cores);
    else
      std::printf(
          "note: ranks x threads = %d <= %u cores: each busy thread can have a core (ranks > cores would "
          "oversubscribe)\n",
          ranks_threads, cores);
    std::fflush(stdout);
  }

  std::vector<Row> rows;
  std::stringstream ss(batches_arg);
  for (std::string b; std::getline(ss, b, ',');) {
    Row r;
    r.batch = std::stoi(b);
    r.one = tp1(world, model, s, threads, r.batch, prompt, gen);
    if (rank == 0) std::printf("batch %d: TP=1 %d thr: %.1f tok/s\n", r.batch, threads, r.one.tok_s);
    if (same_cores) {
      r.same = tp1(world, model, s, threads * T, r.batch, prompt, gen);
      if (rank == 0) std::printf("batch %d: TP=1 %d thr: %.1f tok/s\n", r.batch, threads * T, r.same.tok_s);
    }
    if (T > 1) {
      r.tp = tpT(world, tp, model, s, threads, r.batch, prompt, gen);
      if (rank == 0) std::printf("batch %d: TP=%d: %.1f tok/s\n", r.batch, T, r.tp.tok_s);
      r.raw = raw_collectives(world, tp, s, r.batch);
    }
    if (rank == 0) std::fflush(stdout);
    rows.push_back(r);
  }
  if (rank == 0 && T > 1) print_tables(rows, T, threads, same_cores, s);
  if (rank == 0 && T == 1) std::printf("np=1: no TP phase (run under mpirun -np 2 or more)\n");
  bench::JsonRows json(rank == 0 ? json_path : "");
  for (const Row& r : rows) {
    json.add({"tp1_decode_b" + std::to_string(r.batch), r.one.tok_s, "tok/s", 0});
    if (T > 1)
      json.add({"tp" + std::to_string(T) + "_decode_b" + std::to_string(r.batch), r.tp.tok_s, "tok/s",
                same_cores ? r.same.tok_s : r.one.tok_s});
  }
  die_if(world.barrier(), "final barrier");
  return json.write() ? 0 : 1;
}
