// soak: runs one `zrollout serve` for a set time under a mix of generate, score, abort, sessions
// and streaming from 16 clients, with a weight update (ipc publish of a checkpoint) every few
// seconds, then reports requests completed, errors by code, and the server's RSS, open fds and
// /dev/shm segments; it checks that those three are flat after the warm-up (issue 18, item 5).
//
//   soak --zrollout build/launch/zrollout --model MODEL [--seconds 60] [--clients 16]
//
// Exit code: 0 when every call succeeded and the resources stayed flat; 1 otherwise (the report
// says which). The server runs with --threads 1 on ipc:// in a temporary folder.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "actors/trainer.h"
#include "comm/client.h"

namespace {

using namespace zr;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

struct Args {
  std::string zrollout, model, json_out;
  int seconds = 60, clients = 16;
  double update_every_s = 3, warmup_fraction = 0.3;
};

// What every client thread and the updater add to (a mutex: counters, not an actor's state).
struct Tally {
  std::mutex mu;
  std::map<std::string, int64_t> completed;  // by op
  std::map<std::string, int64_t> errors;     // by error code
  std::map<std::string, std::string> first_error;
  void ok(const std::string& op) {
    std::lock_guard lock(mu);
    ++completed[op];
  }
  void fail(const std::string& op, const Status& st) {
    std::lock_guard lock(mu);
    std::string code = error_code_name(st.code);
    ++errors[code];
    first_error.emplace(code, op + ": " + st.message);
  }
  template <class R>
  void count(const std::string& op, const R& r) {
    if (r.ok()) ok(op);
    else fail(op, r.status());
  }
};

struct Sample {
  double t = 0;
  int64_t rss_kib = 0;
  int fds = 0;
  int shm = 0;  // /dev/shm segments the server maps plus those this process holds
};

int64_t rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

int count_fds(pid_t pid) {
  std::error_code ec;
  int n = 0;
  for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != fs::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

// Distinct /dev/shm files mapped by `pid` (the segments it holds; other jobs' segments do not count).
int shm_mapped(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  std::set<std::string> names;
  for (std::string line; std::getline(in, line);) {
    auto at = line.find("/dev/shm/");
    if (at != std::string::npos) names.insert(line.substr(at));
  }
  return static_cast<int>(names.size());
}

GenerateRequest gen(const std::string& rid, int tokens, uint64_t seed) {
  GenerateRequest r;
  r.rid = rid;
  r.input_ids = {1, 403, 407, 261 + static_cast<int>(seed % 50)};
  r.sampling_params.max_new_tokens = tokens;
  r.sampling_params.temperature = 0.8f;
  r.sampling_params.seed = seed;
  r.return_logprob = true;
  return r;
}

// One client: the five kinds of call in turn until the deadline.
void client_loop(const std::string& ep, int id, Clock::time_point end, Tally& tally) {
  auto c = Client::connect(ep);
  if (!c.ok()) return tally.fail("connect", c.status());
  Client& cl = **c;
  const auto timeout = std::chrono::seconds(60);
  for (uint64_t i = 0; Clock::now() < end; ++i) {
    const std::string rid = "c" + std::to_string(id) + "-" + std::to_string(i);
    switch (i % 5) {
      case 0:
        tally.count("generate", cl.generate({gen(rid, 16, i)}, timeout));
        break;
      case 1: {
        ScoreRequest s{rid, {1, 403, 407}, {261, 262, 263, 264, 265, 266, 267, 268}, 1.0f, 0};
        tally.count("score", cl.score({s}, timeout));
        break;
      }
      case 2: {  // a long request, aborted while it runs: its call answers with finish_reason abort
        auto f = cl.generate_async({gen(rid, 400, i)}, timeout);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        tally.count("abort", cl.abort(rid, timeout));
        tally.count("generate_aborted", f.get());
        break;
      }
      case 3: {
        auto s = cl.open_session(timeout);
        tally.count("open_session", s);
        if (!s.ok()) break;
        for (int turn = 0; turn < 2; ++turn) {
          GenerateRequest r = gen(rid + "-t" + std::to_string(turn), 8, i + turn);
          r.session_id = *s;
          tally.count("session_generate", cl.generate({r}, timeout));
        }
        Status st = cl.close_session(*s, timeout);
        if (st.ok()) tally.ok("close_session");
        else tally.fail("close_session", st);
        break;
      }
      default: {
        std::atomic<int> chunks{0};
        GenerateRequest r = gen(rid, 16, i);
        r.stream = true;
        auto reply = cl.generate_stream(
            {r}, [&](const StreamChunk&) { ++chunks; }, timeout);
        if (reply.ok() && chunks == 0) tally.fail("generate_stream", make_error(ErrorCode::internal, "no chunk"));
        else tally.count("generate_stream", reply);
      }
    }
  }
}

// The trainer: an ipc publish of the checkpoint every `every` seconds, versions 1, 2, ...
void update_loop(const std::string& ep, const std::string& model, double every, Clock::time_point end, Tally& tally,
                 std::atomic<int64_t>& version, std::atomic<pid_t>& self_shm) {
  Context ctx;  // outlives the trainer
  auto t = Trainer::connect(ctx, {ep});
  if (!t.ok()) return tally.fail("trainer", t.status());
  auto next = Clock::now();
  while (Clock::now() + std::chrono::milliseconds(500) < end) {
    next += std::chrono::milliseconds(static_cast<int64_t>(every * 1000));
    PublishOptions opt;
    opt.path = WeightPath::ipc;
    opt.timeout = std::chrono::seconds(60);
    auto res = (*t)->publish(model, version + 1, opt);
    tally.count("update_weights", res);
    if (res.ok()) ++version;
    self_shm = static_cast<pid_t>((*t)->held_segments());
    while (Clock::now() < std::min(next, end)) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

pid_t start_server(const Args& a, const std::string& ep, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    std::freopen(log.c_str(), "w", stdout);
    std::freopen(log.c_str(), "a", stderr);
    execl(a.zrollout.c_str(), a.zrollout.c_str(), "serve", "--model", a.model.c_str(), "--bind", ep.c_str(),
          "--threads", "1", static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

// Flat after the warm-up: the last third of the samples after it is no higher than the first
// third plus a slack (RSS: 0.5% or 4 MiB, whichever is more, for the allocator's noise; fds and
// shm segments: none).
json flatness(const std::vector<Sample>& s, double warm_t, bool* flat) {
  std::vector<Sample> after;
  for (const auto& x : s)
    if (x.t >= warm_t) after.push_back(x);
  json out = json::object();
  if (after.size() < 6) {
    *flat = false;
    out["error"] = "fewer than 6 samples after the warm-up";
    return out;
  }
  const size_t third = after.size() / 3;
  auto max_of = [&](size_t from, size_t to, auto field) {
    int64_t m = 0;
    for (size_t i = from; i < to; ++i) m = std::max<int64_t>(m, field(after[i]));
    return m;
  };
  auto check = [&](const char* name, auto field, auto slack) {
    const int64_t first = max_of(0, third, field), last = max_of(after.size() - third, after.size(), field);
    const bool ok = last <= first + slack(first);
    out[name] = {{"first_third_max", first}, {"last_third_max", last}, {"flat", ok}};
    *flat = *flat && ok;
  };
  check(
      "rss_kib", [](const Sample& x) { return x.rss_kib; }, [](int64_t v) { return std::max<int64_t>(v / 200, 4096); });
  // The trend too, for the report: least-squares slope of RSS over the samples after the warm-up.
  double n = 0, st = 0, sr = 0, stt = 0, str = 0;
  for (const auto& x : after) {
    n += 1, st += x.t, sr += static_cast<double>(x.rss_kib), stt += x.t * x.t,
        str += x.t * static_cast<double>(x.rss_kib);
  }
  out["rss_kib_per_s"] = (n * str - st * sr) / std::max(1e-9, n * stt - st * st);
  check(
      "fds", [](const Sample& x) { return int64_t{x.fds}; }, [](int64_t) { return int64_t{0}; });
  check(
      "shm_segments", [](const Sample& x) { return int64_t{x.shm}; }, [](int64_t) { return int64_t{0}; });
  return out;
}

int run(const Args& a) {
  const fs::path dir = fs::temp_directory_path() / ("zrollout-soak-" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string ep = "ipc://" + (dir / "engine.ipc").string();
  const pid_t server = start_server(a, ep, (dir / "serve.log").string());
  {  // wait until it answers
    auto c = Client::connect(ep);
    bool up = false;
    for (int i = 0; c.ok() && i < 60 && !up; ++i) up = (*c)->health(std::chrono::seconds(1)).ok();
    if (!up) {
      kill(server, SIGKILL);
      waitpid(server, nullptr, 0);
      std::fprintf(stderr, "soak: the server did not answer within 60 s (log: %s)\n", (dir / "serve.log").c_str());
      return 1;
    }
  }
  Tally tally;
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::seconds(a.seconds);
  std::atomic<int64_t> version{0};
  std::atomic<pid_t> trainer_shm{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < a.clients; ++i) threads.emplace_back(client_loop, ep, i, end, std::ref(tally));
  threads.emplace_back(update_loop, ep, a.model, a.update_every_s, end, std::ref(tally), std::ref(version),
                       std::ref(trainer_shm));
  std::vector<Sample> samples;
  while (Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const double t = std::chrono::duration<double>(Clock::now() - t0).count();
    samples.push_back({t, rss_kib(server), count_fds(server), shm_mapped(server) + static_cast<int>(trainer_shm)});
  }
  for (auto& th : threads) th.join();
  bool flat = true;
  json report = {{"seconds", a.seconds}, {"clients", a.clients}, {"weight_versions_published", version.load()}};
  report["completed"] = tally.completed;
  report["errors"] = tally.errors;
  report["first_error"] = tally.first_error;
  report["warmup_seconds"] = a.seconds * a.warmup_fraction;
  report["resources"] = flatness(samples, a.seconds * a.warmup_fraction, &flat);
  json series = json::array();  // in the --json file only
  for (const auto& s : samples) series.push_back({s.t, s.rss_kib, s.fds, s.shm});
  int64_t total = 0;
  for (const auto& [op, n] : tally.completed) total += n;
  report["requests_completed"] = total;
  const bool ok = flat && tally.errors.empty() && version > 0 && total > 0;
  report["ok"] = ok;
  kill(server, SIGTERM);
  int st = 0;
  for (int i = 0; i < 100 && waitpid(server, &st, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (waitpid(server, &st, WNOHANG) == 0) {
    kill(server, SIGKILL);
    waitpid(server, &st, 0);
  }
  std::printf("%s\n", report.dump(1).c_str());
  report["samples_t_rss_fds_shm"] = series;
  if (!a.json_out.empty()) std::ofstream(a.json_out) << report.dump(1) << "\n";
  if (ok) fs::remove_all(dir);
  else std::fprintf(stderr, "soak: FAILED (server log kept: %s)\n", (dir / "serve.log").c_str());
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app("soak: a mixed load on one zrollout serve; resources must stay flat after the warm-up");
  app.add_option("--zrollout", a.zrollout, "the zrollout binary")->required();
  app.add_option("--model", a.model, "model folder (also the checkpoint published every few seconds)")->required();
  app.add_option("--seconds", a.seconds)->capture_default_str()->check(CLI::Range(10, 86400));
  app.add_option("--clients", a.clients)->capture_default_str()->check(CLI::Range(1, 1024));
  app.add_option("--update-every-s", a.update_every_s, "seconds between weight updates")->capture_default_str();
  app.add_option("--warmup-fraction", a.warmup_fraction, "share of the run before the flatness window")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.8));
  app.add_option("--json", a.json_out, "also write the report here");
  CLI11_PARSE(app, argc, argv);
  return run(a);
}
