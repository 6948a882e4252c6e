// Weight updates into a serving engine (stories110M shape, f32), measured in the same run:
//   1. ipc publish-to-ack (engine maps the segment, verifies every checksum, commits zero-copy)
//      against one memcpy of the same bytes between pre-faulted buffers timed right after each
//      push, for new segments and for reused ones (steady state); also the trainer's write;
//   2. the generation pause under in_flight=continue: while 8 streams decode, a push commits; the
//      longest gap between two chunks of a stream across the push, beside the median gap.
//   Prints the host's THP settings and the pages the transfer really got (/proc/self/smaps).
// Usage: bench_weight_update [--model DIR] [--pushes-only] [--ipc-mode auto|pull|segment]
//        (default: bench_models/stories110M, made if absent). ZR_WEIGHT_PHASES=1 logs each phase's
//        time and minor page faults; ZR_NO_HUGEPAGES=1 keeps every buffer in 4 KiB pages.
//        --json FILE: rows weight_update_{publish,engine}_ms (steady state; bound: one memcpy of the
//        same bytes) and weight_update_pause_ms (bound: the 50 ms target), bench/bench_json.h.
#include <spdlog/spdlog.h>
#include <sys/mman.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "actors/rollout_actor.h"
#include "actors/trainer.h"
#include "bench/bench_json.h"
#include "bench/bench_models.h"
#include "comm/client.h"
#include "comm/host_pages.h"

namespace zr {
namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// One memcpy of `bytes` between two pre-faulted buffers, timed: the machine's limit, sampled right
// after each push so that both see the same host.
class MemcpyProbe {
 public:
  double sample_ms(size_t bytes) {
    if (bytes != bytes_) {
      release();
      bytes_ = bytes;
      src_ = static_cast<char*>(
          mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0));
      dst_ = static_cast<char*>(
          mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0));
      std::memset(src_, 1, bytes);
      std::memcpy(dst_, src_, bytes);  // warm-up
    }
    auto t0 = Clock::now();
    std::memcpy(dst_, src_, bytes);
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  }
  ~MemcpyProbe() { release(); }

 private:
  void release() {
    if (src_) munmap(src_, bytes_);
    if (dst_) munmap(dst_, bytes_);
    src_ = dst_ = nullptr;
  }
  size_t bytes_ = 0;
  char* src_ = nullptr;
  char* dst_ = nullptr;
};

}  // namespace
}  // namespace zr

int main(int argc, char** argv) {
  using namespace zr;
  CLI::App app{"zrollout weight update benchmark"};
  std::string model;
  bool pushes_only = false;
  std::string ipc_mode = "auto";
  app.add_option("--model", model);
  app.add_option("--ipc-mode", ipc_mode, "auto | pull | segment (PublishOptions::ipc_mode)")
      ->check(CLI::IsMember({"auto", "pull", "segment"}));
  app.add_flag("--pushes-only", pushes_only, "measure the idle-engine pushes only, not the pause under load");
  std::string json_path;
  app.add_option("--json", json_path, "write result rows to FILE (bench/bench_json.h)");
  CLI11_PARSE(app, argc, argv);
  bench::JsonRows rows(json_path);
  spdlog::set_level(spdlog::level::warn);
  if (model.empty()) model = bench::default_model("stories110M");
  if (model.empty()) return 1;
  Context ctx;
  EngineOptions eo;
  eo.kv_cache_bytes = size_t{256} << 20;
  RolloutActor actor(ctx, std::move(Engine::load(model, eo)).value(), RolloutActorOptions{});
  (void)actor.bind("inproc://bench-weights");
  actor.start();
  // The engine backs its first two staging buffers in the background from start on (a trainer's
  // first publish comes after a training step); the pushes below are timed once that is done.
  const double prepared_ms = actor.wait_staging_prepared();
  auto trainer = std::move(Trainer::connect(ctx, {"inproc://bench-weights"})).value();

  // 1. Publish-to-ack vs memcpy. Pushes 1 and 2 write new segments (the engine serves from the
  // first while the second arrives); from push 3 on the trainer rewrites the segment the engine
  // stopped serving from, and the engine reuses its mapping.
  struct Push {
    double ack_ms, total_ms, write_ms, stage_ms, memcpy_ms;
  };
  std::vector<Push> fresh, reused;
  MemcpyProbe probe;
  uint64_t bytes = 0;
  int zero_copy = 0;
  std::string used_mode, pages;
  PublishOptions po;
  po.ipc_mode = ipc_mode == "pull" ? IpcMode::pull : ipc_mode == "segment" ? IpcMode::segment : IpcMode::automatic;
  for (int v = 1; v <= 9; ++v) {
    auto r = trainer->publish(model, v, po);
    if (!r.ok()) return std::fprintf(stderr, "%s\n", r.status().to_string().c_str()), 1;
    const auto& a = r->acks[0];
    bytes = r->bytes;
    zero_copy = a.zero_copy_tensors;
    used_mode = r->ipc_mode;
    pages = r->pages;
    (v > 2 ? reused : fresh)  // pushes 1 and 2 fill new buffers (segments) on both sides
        .push_back({(a.stage_seconds + a.commit_seconds) * 1e3, r->seconds * 1e3, r->write_seconds * 1e3,
                    a.stage_seconds * 1e3, probe.sample_ms(bytes)});
  }
  auto med = [](const std::vector<Push>& p, double Push::*f) {
    std::vector<double> v;
    for (const Push& x : p) v.push_back(x.*f);
    return median(v);
  };
  auto ratio = [](const std::vector<Push>& p, double Push::*f) {  // paired: each push / its memcpy
    std::vector<double> v;
    for (const Push& x : p) v.push_back(x.*f / x.memcpy_ms);
    return median(v);
  };
  std::printf("zrollout bench_weight_update: %s, %.0f MB of weights, drain, idle engine\n", model.c_str(), bytes / 1e6);
  std::printf("host: %s%s; ipc mode %s (asked: %s); trainer's transfer buffer in %s\n", thp_line().c_str(),
              huge_pages_wanted() ? "" : ", ZR_NO_HUGEPAGES set", used_mode.c_str(), ipc_mode.c_str(), pages.c_str());
  std::printf(
      "engine: staging buffers faulted in ahead of the first pushes in %.0f ms (background, from start;"
      " ZR_NO_STAGING_PREFAULT=1: none)\n",
      prepared_ms);
  if (used_mode != "pull" && !shmem_thp_available())
    std::printf("  (shared-memory segments run in 4 KiB pages here: shmem_enabled=advise gives them 2 MiB pages)\n");
  std::printf(
      "(ratios: median over pushes of push time / one memcpy of the same bytes between pre-faulted\n"
      " buffers, timed right after that push)\n");
  for (const auto* p : {&fresh, &reused}) {
    std::printf("ipc, %s (median of %zu pushes):\n",
                p == &fresh ? "pushes 1-2: new buffers / segments (first pushes)"
                            : "pushes 3-9: buffers / segments reused (steady state)",
                p->size());
    std::printf("  one memcpy of the same bytes          %8.1f ms\n", med(*p, &Push::memcpy_ms));
    std::printf("  engine: map + verify + commit (ack)   %8.1f ms  = %.2fx memcpy  (%d tensors zero-copy)\n",
                med(*p, &Push::ack_ms), ratio(*p, &Push::ack_ms), zero_copy);
    std::printf("    of which staging (map + verify)     %8.1f ms\n", med(*p, &Push::stage_ms));
    std::printf("  trainer: write into the segment       %8.1f ms  = %.2fx memcpy\n", med(*p, &Push::write_ms),
                ratio(*p, &Push::write_ms));
    std::printf("  publish -> last ack (+ new segment)   %8.1f ms  = %.2fx memcpy\n", med(*p, &Push::total_ms),
                ratio(*p, &Push::total_ms));
  }

  rows.add({"weight_update_publish_ms", med(reused, &Push::total_ms), "ms", med(reused, &Push::memcpy_ms)});
  rows.add({"weight_update_engine_ms", med(reused, &Push::ack_ms), "ms", med(reused, &Push::memcpy_ms)});
  if (pushes_only) return rows.write() ? 0 : 1;
  // 2. Generation pause under continue.
  std::mutex mu;
  std::vector<double> gaps;  // ms between consecutive chunks, all streams
  std::map<std::string, Clock::time_point> last;
  double push_at = 0, push_end = 0, max_gap_across = 0;
  auto t0 = Clock::now();
  auto direct = Client::connect("inproc://bench-weights", &ctx.zmq());  // raw streaming calls beside the trainer
  if (!direct.ok()) return spdlog::error("{}", direct.status().to_string()), 1;
  Client& client = **direct;
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 8; ++i) {
    GenerateRequest r;
    r.rid = "s" + std::to_string(i);
    r.input_ids = {1, 5, 6, 7, 8};
    r.sampling_params.max_new_tokens = 96;
    r.sampling_params.ignore_eos = true;
    r.sampling_params.seed = i;
    r.stream = true;
    reqs.push_back(r);
  }
  auto fut = client.generate_stream_async(reqs, [&](const StreamChunk& c) {
    std::lock_guard<std::mutex> lock(mu);
    auto now = Clock::now();
    auto it = last.find(c.rid);
    if (it != last.end()) {
      double gap = std::chrono::duration<double, std::milli>(now - it->second).count();
      double at = std::chrono::duration<double, std::milli>(now - t0).count();
      gaps.push_back(gap);
      if (push_at > 0 && at - gap <= push_end && at >= push_at) max_gap_across = std::max(max_gap_across, gap);
    }
    last[c.rid] = now;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  PublishOptions cont;
  cont.in_flight = InFlightPolicy::continue_;
  push_at = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  cont.ipc_mode = po.ipc_mode;
  auto r = trainer->publish(model, 10, cont);
  push_end = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  auto done = fut.get();
  actor.stop();
  if (!r.ok() || !done.ok()) return std::fprintf(stderr, "push or stream failed\n"), 1;
  int switched = 0;
  for (const auto& o : done->outputs) switched += o.meta_info.weight_version_spans.size() == 2;
  std::printf("generation pause under continue (8 streams, stories110M shape):\n");
  std::printf("  median gap between chunks              %8.1f ms\n", median(gaps));
  std::printf("  longest gap across the push            %8.1f ms  (push took %.1f ms end to end)\n", max_gap_across,
              push_end - push_at);
  std::printf("  pause (longest gap - median gap)       %8.1f ms  (target < 50 ms); %d/8 streams switched versions\n",
              max_gap_across - median(gaps), switched);
  rows.add({"weight_update_pause_ms", max_gap_across - median(gaps), "ms", 50});
  return rows.write() ? 0 : 1;
}
