// bench_rollout: one GRPO rollout step through the service against the engine alone, same run.
// The step: --prompts P (32) prompts x --n N (8) samples, each prompt --prompt-len (128) random
// tokens; each sample's response length is drawn from a seeded long-tailed distribution
// (log-normal, median --median-len 96, sigma --sigma 1.0, clipped to [1, --max-len 512]) and
// enforced by its own max_new_tokens (ignore_eos), logprobs on. A group goes as one generate call of
// N requests (one per sample, same prompt: the prefix cache shares it), as verl sends them.
//   engine  the same requests submitted to an Engine directly, stepped to completion: the bound.
//   local   a RolloutActor on inproc and a Client on the same context, in this process (the actors
//           `zrollout local` runs).
//   tcp     `zrollout serve` started from --zrollout BIN (else a RolloutActor on tcp loopback in this
//           process) and a Client over tcp.
// Each prints completion tokens / wall time (first submit to last reply), its ratio to the engine
// (target >= 90%), and the time from the first to the last finished sample (engine: the steps that
// finished them; service: the samples' meta_info.e2e_latency, submit to finish in the engine).
// Usage: bench_rollout [--model DIR] [--zrollout BIN] [--rounds 1] [--json FILE]
//   (default model: the `tiny` preset made by make-model into ./bench_models/, context 1024).
// --json rows: rollout_engine_tok_s, rollout_local_tok_s and rollout_tcp_tok_s (bound: the engine's),
// rollout_<mode>_spread_s (first to last finished sample; bound: the engine's spread).
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <random>
#include <thread>

#include "actors/rollout_actor.h"
#include "bench/bench_json.h"
#include "bench/bench_models.h"
#include "comm/client.h"

namespace zr {
namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  int prompts = 32, n = 8, prompt_len = 128, max_len = 512, median_len = 96;
  double sigma = 1.0;
  uint64_t seed = 0;
  int kv_cache_mb = 2048, threads = 0;
};

struct Run {
  double tok_s = 0, spread_s = 0, wall_s = 0;
  int64_t tokens = 0;
};

// The step's groups: groups[g][k] is sample k of prompt g, its own length in max_new_tokens.
std::vector<std::vector<GenerateRequest>> make_groups(const Shape& s, int vocab) {
  std::mt19937_64 rng(s.seed);
  std::lognormal_distribution<double> len(std::log(static_cast<double>(s.median_len)), s.sigma);
  std::vector<std::vector<GenerateRequest>> groups(s.prompts);
  for (int g = 0; g < s.prompts; ++g) {
    std::vector<int> prompt{1};
    while (static_cast<int>(prompt.size()) < s.prompt_len) prompt.push_back(3 + static_cast<int>(rng() % (vocab - 3)));
    for (int k = 0; k < s.n; ++k) {
      GenerateRequest r;
      r.rid = "g" + std::to_string(g) + "-" + std::to_string(k);
      r.input_ids = prompt;
      r.sampling_params.max_new_tokens = std::clamp(static_cast<int>(std::lround(len(rng))), 1, s.max_len);
      r.sampling_params.temperature = 1.0f;
      r.sampling_params.seed = s.seed * 1000003 + g * s.n + k;
      r.sampling_params.ignore_eos = true;
      r.return_logprob = true;
      groups[g].push_back(std::move(r));
    }
  }
  return groups;
}

EngineOptions engine_options(const Shape& s) {
  EngineOptions o;
  o.kv_cache_bytes = static_cast<size_t>(s.kv_cache_mb) << 20;
  o.threads = s.threads;
  return o;
}

double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

Run run_engine(const std::string& model, const Shape& s) {
  auto eng = std::move(Engine::load(model, engine_options(s))).value();
  auto groups = make_groups(s, eng->config().vocab_size);
  Run r;
  double first = -1, last = 0;
  const auto t0 = Clock::now();
  for (auto& g : groups)
    for (auto& q : g) ZR_CHECK(eng->submit(std::move(q)).ok());
  while (!eng->idle()) {
    StepOutputs out;
    eng->step(out);
    r.tokens += out.tokens_generated;
    if (!out.finished.empty()) {
      const double t = secs(Clock::now() - t0);
      if (first < 0) first = t;
      last = t;
    }
  }
  r.wall_s = secs(Clock::now() - t0);
  r.tok_s = r.tokens / r.wall_s;
  r.spread_s = last - std::max(0.0, first);
  return r;
}

// Sends every group as one generate call at once and waits for all replies.
Result<Run> run_client(Client& client, const Shape& s, int vocab) {
  auto groups = make_groups(s, vocab);
  Run r;
  const auto t0 = Clock::now();
  std::vector<std::future<Result<GenerateReply>>> calls;
  for (const auto& g : groups) calls.push_back(client.generate_async(g));
  double first = 1e30, last = 0;
  for (auto& c : calls) {
    Result<GenerateReply> rep = c.get();
    if (!rep.ok()) return rep.status();
    for (const SampleOutput& o : rep->outputs) {
      r.tokens += o.meta_info.completion_tokens;
      first = std::min(first, o.meta_info.e2e_latency);
      last = std::max(last, o.meta_info.e2e_latency);
    }
  }
  r.wall_s = secs(Clock::now() - t0);
  r.tok_s = r.tokens / r.wall_s;
  r.spread_s = last - first;
  return r;
}

Result<Run> run_local(const std::string& model, const Shape& s) {
  Context ctx;
  RolloutActor actor(ctx, std::move(Engine::load(model, engine_options(s))).value(), RolloutActorOptions{});
  ZR_RETURN_IF_ERROR(actor.bind("inproc://bench-rollout"));
  actor.start();
  auto client = Client::connect("inproc://bench-rollout", &ctx.zmq());
  if (!client.ok()) return client.status();
  return run_client(**client, s, actor.engine().config().vocab_size);
}

// `zrollout serve` on a free tcp port (the kernel's pick for a throwaway socket), up when health answers.
pid_t start_serve(const std::string& bin, const std::string& model, const Shape& s, std::string* ep) {
  {
    zmq::context_t ctx;
    zmq::socket_t probe(ctx, zmq::socket_type::rep);
    probe.bind("tcp://127.0.0.1:*");
    *ep = probe.get(zmq::sockopt::last_endpoint);
  }
  const std::string kv = std::to_string(s.kv_cache_mb), threads = std::to_string(s.threads);
  pid_t pid = fork();
  if (pid == 0) {
    execl(bin.c_str(), bin.c_str(), "serve", "--model", model.c_str(), "--bind", ep->c_str(), "--kv-cache-mb",
          kv.c_str(), "--threads", threads.c_str(), "--log-level", "warn", static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

Result<Run> run_tcp(const std::string& model, const std::string& zrollout, const Shape& s) {
  if (zrollout.empty()) {  // in process, on tcp loopback
    Context ctx;
    RolloutActor actor(ctx, std::move(Engine::load(model, engine_options(s))).value(), RolloutActorOptions{});
    ZR_RETURN_IF_ERROR(actor.bind("tcp://127.0.0.1:*"));
    actor.start();
    auto client = Client::connect(actor.endpoint());
    if (!client.ok()) return client.status();
    return run_client(**client, s, actor.engine().config().vocab_size);
  }
  std::string ep;
  const pid_t pid = start_serve(zrollout, model, s, &ep);
  Result<Run> r = make_error(ErrorCode::unavailable, "--zrollout: serve did not answer within 60 s at " + ep);
  {
    auto client = Client::connect(ep);
    if (!client.ok()) return client.status();
    auto info = (*client)->get_model_info(std::chrono::seconds(60));
    if (info.ok()) r = run_client(**client, s, info->vocab_size);
  }
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  return r;
}

void print(const char* mode, const Run& r, const Run& engine) {
  std::printf(
      "  %-7s %9.1f tok/s  %6.1f%% of the engine  %7.2f s wall  first-to-last finished %6.2f s  (%lld tokens)\n", mode,
      r.tok_s, 100 * r.tok_s / engine.tok_s, r.wall_s, r.spread_s, static_cast<long long>(r.tokens));
}

}  // namespace
}  // namespace zr

int main(int argc, char** argv) {
  using namespace zr;
  CLI::App app{"zrollout rollout benchmark: a GRPO step through the service vs the engine alone"};
  Shape s;
  std::string model, zrollout, json_path;
  int rounds = 1;
  app.add_option("--model", model, "model folder (default: bench_models/tiny, made on first use)");
  app.add_option("--zrollout", zrollout, "zrollout binary for the tcp mode (default: an in-process actor on tcp)");
  app.add_option("--prompts", s.prompts)->capture_default_str();
  app.add_option("--n", s.n, "samples per prompt")->capture_default_str();
  app.add_option("--prompt-len", s.prompt_len)->capture_default_str();
  app.add_option("--median-len", s.median_len, "median response length")->capture_default_str();
  app.add_option("--sigma", s.sigma, "log-normal sigma of the response length")->capture_default_str();
  app.add_option("--max-len", s.max_len, "longest response")->capture_default_str();
  app.add_option("--seed", s.seed)->capture_default_str();
  app.add_option("--kv-cache-mb", s.kv_cache_mb)->capture_default_str();
  app.add_option("--threads", s.threads, "compute threads (0 = all cores)")->capture_default_str();
  app.add_option("--rounds", rounds, "engine, local, tcp repeated this many times")->capture_default_str();
  app.add_option("--json", json_path, "write result rows to FILE (bench/bench_json.h)");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  if (model.empty()) model = bench::default_model("tiny");
  if (model.empty()) return 1;
  std::printf(
      "zrollout bench_rollout: %s, %d prompts x n=%d, prompt %d, response log-normal median %d sigma %.2f "
      "in [1, %d], logprobs on, tcp via %s\n",
      model.c_str(), s.prompts, s.n, s.prompt_len, s.median_len, s.sigma, s.max_len,
      zrollout.empty() ? "an in-process actor" : zrollout.c_str());
  bench::JsonRows rows(json_path);
  for (int round = 0; round < rounds; ++round) {
    Run engine = run_engine(model, s);
    Result<Run> local = run_local(model, s);
    Result<Run> tcp = run_tcp(model, zrollout, s);
    if (!local.ok() || !tcp.ok())
      return std::fprintf(stderr, "%s\n", (local.ok() ? tcp : local).status().to_string().c_str()), 1;
    std::printf("round %d:\n", round + 1);
    print("engine", engine, engine);
    print("local", *local, engine);
    print("tcp", *tcp, engine);
    rows.add({"rollout_engine_tok_s", engine.tok_s, "tok/s", 0});
    rows.add({"rollout_local_tok_s", local->tok_s, "tok/s", engine.tok_s});
    rows.add({"rollout_tcp_tok_s", tcp->tok_s, "tok/s", engine.tok_s});
    rows.add({"rollout_local_spread_s", local->spread_s, "s", engine.spread_s});
    rows.add({"rollout_tcp_spread_s", tcp->spread_s, "s", engine.spread_s});
  }
  return rows.write() ? 0 : 1;
}
