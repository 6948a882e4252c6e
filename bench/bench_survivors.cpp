// bench_survivors: the trainer rank of an mpirun job whose engines are `zrollout serve` ranks. It
// publishes a checkpoint by broadcast to every engine, runs a fault (a shell command: kill or stop
// an engine's ranks, cut a link), then publishes again: the broadcast goes over the survivors
// (docs/cluster.md, Failures). Prints one JSON line per publish and, at the end, every engine's
// weight version and the median publish time of both phases, same run. Used by
// tests/launch/test_survivors.cpp and tests/multihost, and as the benchmark (under `cpu bench`):
//
//   mpirun --mca orte_enable_recovery 1 --oversubscribe --bind-to none
//     -np 1 bench_survivors --push CKPT --publishes 5 --fault "pkill -9 -f 'serve .*--kv-cache-mb 65'"
//     : -np 2 zrollout serve --model M --tp 2 --kv-cache-mb 64 --bind 'tcp://127.0.0.1:*' --threads 1
//     : -np 2 zrollout serve --model M --tp 2 --kv-cache-mb 65 --bind 'tcp://127.0.0.1:*' --threads 1
// (one command line).
//
// --input FILE (generate requests, JSONL) runs them three times: after the first publishes
// (OUTPUT.before.jsonl), right after the fault (OUTPUT.fault.jsonl: requests on a lost engine are
// re-routed) and after the last publishes (OUTPUT.final.jsonl). --disk DIR makes the first publish
// a disk publish of the checkpoint (written to DIR by the trainer). --after CMD runs last (e.g.
// SIGKILL a stopped engine so that mpirun can end).
// Exit code: 0 when every publish reached every live engine.
// --json FILE: rows survivors_publish_all_ms and survivors_publish_survivors_ms (medians; the
// survivors' row bound by the all-engines median), bench/bench_json.h.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include "actors/trainer.h"
#include "bench/bench_json.h"
#include "comm/json_codec.h"
#include "launch/cluster.h"
#include "model/safetensors.h"

namespace {

using nlohmann::json;
using namespace zr;

struct Args {
  std::string push, fault, after, input, output, disk;
  int publishes = 3;
  int fault_wait_ms = 0;  // after the fault, before the next publish (e.g. let a cut link settle)
  uint64_t bucket_mib = 64;
  std::string json_path;  // --json
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// One phase: `n` broadcast publishes from version *v on; their times.
std::vector<double> publish_phase(Trainer& t, MpiGroup& group, const Args& a, const char* phase, int64_t* v, bool* ok) {
  std::vector<double> secs;
  PublishOptions opt;
  opt.path = WeightPath::broadcast;
  opt.bucket_bytes = a.bucket_mib << 20;
  for (int i = 0; i < a.publishes; ++i) {
    const int64_t version = ++*v;
    auto res = t.publish_broadcast(a.push, version, opt, group);
    json line = {{"phase", phase}, {"version", version}, {"ok", res.ok()}};
    if (res.ok()) {
      line["seconds"] = res->seconds;
      line["liveness_seconds"] = res->liveness_seconds;
      line["mib"] = res->bytes / 1048576.0;
      line["acked"] = res->acked;
      line["dead"] = res->dead;
      secs.push_back(res->seconds);
    } else {
      line["error"] = res.status().to_string();
      *ok = false;
    }
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
  }
  return secs;
}

// The checkpoint's tensors written to --disk DIR and read there by every engine (path disk).
void disk_publish(Trainer& t, const Args& a, int64_t* v, bool* ok) {
  auto ar = SafetensorsArchive::open_dir(a.push);
  Result<PublishResult> res = ar.status();
  const int64_t version = ++*v;
  if (ar.ok()) {
    std::vector<TensorRef> refs;
    for (const auto& [name, w] : ar->tensors())
      refs.push_back({name, dtype_name(w.dtype), w.shape, w.data, w.nbytes, {}});
    PublishOptions opt;
    opt.path = WeightPath::disk;
    opt.disk_dir = a.disk;
    res = t.publish(refs, version, opt);
  }
  json line = {{"phase", "disk"}, {"version", version}, {"ok", res.ok()}};
  if (res.ok()) line["acked"] = res->acked;
  else line["error"] = res.status().to_string();
  *ok = *ok && res.ok();
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
}

void run_requests(Trainer& t, const std::string& in_path, const std::string& out_path) {
  std::ifstream in(in_path);
  std::vector<GenerateRequest> reqs;
  for (std::string line; std::getline(in, line);) {
    auto r = generate_request_from_json(json::parse(line));
    if (r.ok()) reqs.push_back(std::move(r).value());
  }
  auto samples = t.generate(reqs);
  std::ofstream out(out_path);
  if (!samples.ok()) {
    spdlog::error("generate: {}", samples.status().to_string());
    return;
  }
  for (const auto& s : *samples) out << to_json(s).dump() << "\n";
}

int run(const Args& a) {
  auto world = MpiGroup::init(nullptr, nullptr);
  if (!world.ok()) return std::fprintf(stderr, "MPI: %s\n", world.status().to_string().c_str()), 1;
  int rc = 0;
  {
    auto roles = cli::exchange_roles(*world, "trainer", "");
    if (!roles.ok()) return spdlog::error("MPI endpoint exchange: {}", roles.status().to_string()), 1;
    // Engines bound beyond loopback serve with the job's CURVE keys: reach them with its trainer key.
    Context ctx;  // outlives the trainer
    TrainerOptions to;
    to.curve_for = [keys = roles->keys](const std::string& ep) { return cli::engine_keys(ep, keys); };
    auto t = Trainer::connect(ctx, roles->engine_endpoints, to);
    if (!t.ok()) return spdlog::error("{}", t.status().to_string()), 1;
    spdlog::info("{} engine(s) found through MPI", roles->engine_endpoints.size());
    bool ok = true;
    int64_t v = 0;
    if (!a.disk.empty()) disk_publish(**t, a, &v, &ok);
    auto all = publish_phase(**t, roles->weight_group, a, "all", &v, &ok);
    if (!a.input.empty()) run_requests(**t, a.input, a.output + ".before.jsonl");
    if (!a.fault.empty()) {
      spdlog::info("fault: {}", a.fault);
      if (int st = std::system(a.fault.c_str()); st != 0) spdlog::warn("fault command exited with {}", st);
      std::this_thread::sleep_for(std::chrono::milliseconds(a.fault_wait_ms));
    }
    if (!a.input.empty()) run_requests(**t, a.input, a.output + ".fault.jsonl");
    auto survivors = publish_phase(**t, roles->weight_group, a, "survivors", &v, &ok);
    if (!a.input.empty()) run_requests(**t, a.input, a.output + ".final.jsonl");
    json versions = json::object();
    for (const auto& e : (*t)->engines()) {
      if (!e.alive) {
        versions[std::to_string(e.index)] = nullptr;
        continue;
      }
      auto ver = (*t)->weight_version(e.index);
      versions[std::to_string(e.index)] = ver.ok() ? json(*ver) : json(ver.status().to_string());
    }
    json summary = {{"versions", versions},
                    {"published", v},
                    {"median_seconds_all", median(all)},
                    {"median_seconds_survivors", median(survivors)},
                    {"ok", ok}};
    std::printf("%s\n", summary.dump().c_str());
    std::fflush(stdout);
    bench::JsonRows rows(a.json_path);
    rows.add({"survivors_publish_all_ms", median(all) * 1e3, "ms", 0});
    rows.add({"survivors_publish_survivors_ms", median(survivors) * 1e3, "ms", median(all) * 1e3});
    if (!rows.write()) ok = false;
    (void)(*t)->shutdown_engines();
    if (!a.after.empty()) (void)std::system(a.after.c_str());
    rc = ok ? 0 : 2;
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app("trainer rank: broadcast publishes before and after a fault (docs/cluster.md, Failures)");
  app.add_option("--push", a.push, "checkpoint folder to publish")->required();
  app.add_option("--publishes", a.publishes, "publishes per phase")->capture_default_str();
  app.add_option("--fault", a.fault, "shell command run between the two phases");
  app.add_option("--fault-wait-ms", a.fault_wait_ms, "pause after the fault")->capture_default_str();
  app.add_option("--after", a.after, "shell command run at the end");
  app.add_option("--disk", a.disk, "first publish by disk, written to this folder");
  app.add_option("--input", a.input, "generate requests (JSONL) run after each phase");
  app.add_option("--output", a.output, "prefix of the generate outputs");
  app.add_option("--bucket-mib", a.bucket_mib)->capture_default_str();
  app.add_option("--json", a.json_path, "write result rows to FILE (bench/bench_json.h)");
  CLI11_PARSE(app, argc, argv);
  return run(a);
}
