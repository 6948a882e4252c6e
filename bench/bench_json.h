// Benchmark result rows for machines: `--json FILE` writes one JSON array of rows
//   {"name", "value", "unit", "bound", "ratio", "commit", "host"}
// so runs of different benches and commits can be put side by side (scripts, the README table).
// value is what was measured, bound the machine limit it is held against (0: none), ratio
// value / bound (0 without a bound); commit is `git rev-parse --short HEAD` of the working directory
// at run time ("unknown" outside a checkout), host the machine's hostname.
// Header-only so any bench can adopt it with one include.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace zr::bench {

struct JsonRow {
  std::string name;  // e.g. "decode_b64"
  double value = 0;
  std::string unit;  // e.g. "tok/s"
  double bound = 0;  // the limit value is compared with, same unit (0: none)
};

inline std::string git_commit() {
  std::string out;
  if (FILE* p = popen("git rev-parse --short HEAD 2>/dev/null", "r")) {
    char buf[64];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out.empty() ? "unknown" : out;
}

inline std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

// Collects rows and writes them as one array; write() is a no-op without a path.
class JsonRows {
 public:
  explicit JsonRows(std::string path) : path_(std::move(path)) {}
  void add(const JsonRow& r) { rows_.push_back(r); }
  // Returns false (and prints why) when the file cannot be written.
  bool write() const {
    if (path_.empty()) return true;
    const std::string commit = git_commit(), host = host_name();
    nlohmann::ordered_json arr = nlohmann::ordered_json::array();
    for (const JsonRow& r : rows_)
      arr.push_back({{"name", r.name},
                     {"value", r.value},
                     {"unit", r.unit},
                     {"bound", r.bound},
                     {"ratio", r.bound > 0 ? r.value / r.bound : 0.0},
                     {"commit", commit},
                     {"host", host}});
    std::ofstream out(path_, std::ios::trunc);
    out << arr.dump(1) << "\n";
    if (!out) {
      std::fprintf(stderr, "--json %s: write failed\n", path_.c_str());
      return false;
    }
    return true;
  }

 private:
  std::string path_;
  std::vector<JsonRow> rows_;
};

}  // namespace zr::bench
