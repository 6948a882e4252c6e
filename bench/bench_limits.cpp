// bench_limits: this machine's limits (sgemm/sgemv peak, memory bandwidth) for 1 and 2 threads,
// as a Markdown table of medians (min-max over the repeats) measured in this run.
// Usage: bench_limits [--json FILE]: rows limit_<quantity>_t<threads> (medians), bench/bench_json.h.
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_json.h"
#include "bench/machine_limits.h"

namespace {

using zr::bench::Measurement;

struct Row {
  std::string quantity;
  std::string key;  // --json row name: limit_<key>_t<threads>
  std::string unit;
  std::function<Measurement(int threads)> run;
};

std::string cell(const Measurement& m) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.1f (%.1f-%.1f)", m.median, m.min, m.max);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  namespace b = zr::bench;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: bench_limits [--json FILE]\n");
      return 2;
    }
  }
  b::JsonRows json(json_path);
  const std::vector<int> threads = {1, 2};
  const std::vector<Row> rows = {
      {"sgemm n^3", "sgemm", "GFLOP/s", [](int t) { return b::sgemm_gflops(2048, t); }},
      {"sgemv 2048x768 (6 MiB, cache-hot)", "sgemv_hot", "GFLOP/s",
       [](int t) { return b::sgemv_gflops(2048, 768, t); }},
      {"sgemv 8192x4096 (128 MiB, DRAM)", "sgemv_dram", "GFLOP/s",
       [](int t) { return b::sgemv_gflops(8192, 4096, t); }},
      {"sgemv 8192x4096 (128 MiB, DRAM)", "sgemv_dram_read", "GB/s",
       [](int t) { return b::sgemv_gbps(8192, 4096, t); }},
      {"memory read, f32 sum", "mem_read", "GB/s", [](int t) { return b::mem_read_gbps(std::size_t{1} << 30, t); }},
      {"memcpy into pre-faulted buffer", "memcpy", "GB/s",
       [](int t) { return b::memcpy_gbps(std::size_t{256} << 20, t); }},
  };

  std::printf("%s\n\n", b::openblas_description().c_str());
  std::printf("| quantity | shape | unit |");
  for (int t : threads) std::printf(" %d thread%s |", t, t == 1 ? "" : "s");
  std::printf("\n|---|---|---|");
  for (size_t i = 0; i < threads.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (const auto& row : rows) {
    std::vector<Measurement> ms;
    for (int t : threads) {
      ms.push_back(row.run(t));
      json.add({"limit_" + row.key + "_t" + std::to_string(t), ms.back().median, row.unit, 0});
    }
    std::printf("| %s | %s | %s |", row.quantity.c_str(), ms[0].shape.c_str(), row.unit.c_str());
    for (const auto& m : ms) {
      std::string c = cell(m);
      if (m.shape != ms[0].shape) c += " at " + m.shape;  // sgemm shrinks n when a call is slow
      std::printf(" %s |", c.c_str());
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  std::printf("\nmedian (min-max) over the repeats; GB = 1e9 bytes\n");
  return json.write() ? 0 : 1;
}
