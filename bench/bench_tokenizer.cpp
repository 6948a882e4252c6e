// bench_tokenizer: encode, decode and streaming-decode throughput (MB of text per second, one
// thread) of the tokenizer.json BPE tokenizers (Qwen3, Llama 3) beside sentencepiece
// (stories260K's tokenizer.model), on the same texts in the same run:
//   english  the built-in corpus (model/assets/corpus.txt) repeated to --mb MB;
//   mixed    the texts of tokenizers/qwen3/cases.json (code, CJK, emoji, digits, ...) repeated.
// A text is cut into prompts of about --chunk-kb KB at line ends, encoded one by one (as the
// engine encodes text prompts); decode and stream take each prompt's ids. Encode is timed cold
// (first pass: the BPE word cache empty) and warm (best of --reps passes).
//
//   bench_tokenizer [--models ../shared/models] [--mb 4] [--chunk-kb 4] [--reps 3] [--json FILE]
// --json rows tokenizer_<text>_<qwen3|llama3|sentencepiece>_{encode,decode} (warm encode and decode,
// MB/s); the BPE rows are held against sentencepiece's on the same text (bound), bench/bench_json.h.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "bench/bench_json.h"

#include "model/make_model.h"
#include "model/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string repeat_to(const std::string& unit, size_t bytes) {
  std::string out;
  while (out.size() < bytes) out += unit;
  return out;
}

// Prompts of about `chunk` bytes, cut after a newline when there is one.
std::vector<std::string> chunks_of(const std::string& text, size_t chunk) {
  std::vector<std::string> out;
  for (size_t at = 0; at < text.size();) {
    size_t end = std::min(text.size(), at + chunk);
    if (end < text.size()) {
      const size_t nl = text.rfind('\n', end);
      if (nl != std::string::npos && nl > at) end = nl + 1;
    }
    out.push_back(text.substr(at, end - at));
    at = end;
  }
  return out;
}

struct Row {
  double encode_cold = 0, encode_warm = 0, decode = 0, stream = 0, bytes_per_token = 0;
};

Row measure(const zr::Tokenizer& tok, const std::vector<std::string>& prompts, int reps) {
  size_t bytes = 0;
  for (const auto& p : prompts) bytes += p.size();
  const double mb = bytes / 1e6;
  std::vector<std::vector<int>> ids(prompts.size());
  Row row;
  for (int rep = 0; rep <= reps; ++rep) {  // pass 0: cold
    const auto t0 = Clock::now();
    for (size_t i = 0; i < prompts.size(); ++i) ids[i] = tok.encode(prompts[i], false);
    const double rate = mb / seconds_since(t0);
    if (rep == 0) row.encode_cold = rate;
    else row.encode_warm = std::max(row.encode_warm, rate);
  }
  size_t tokens = 0, decoded = 0;
  for (const auto& v : ids) tokens += v.size();
  row.bytes_per_token = static_cast<double>(bytes) / tokens;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = Clock::now();
    decoded = 0;
    for (const auto& v : ids) decoded += tok.decode(v, true).size();
    row.decode = std::max(row.decode, decoded / 1e6 / seconds_since(t0));
  }
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = Clock::now();
    size_t streamed = 0;
    for (const auto& v : ids) {
      zr::IncrementalDetokenizer det(tok, true);
      for (int id : v) streamed += det.push(id).size();
      streamed += det.flush().size();
    }
    row.stream = std::max(row.stream, streamed / 1e6 / seconds_since(t0));
  }
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tokenizer.json BPE vs sentencepiece: encode / decode / stream MB/s, one thread"};
  std::string models = "../shared/models";
  double mb = 4;
  int chunk_kb = 4, reps = 3;
  app.add_option("--models", models, "folder holding tokenizers/{qwen3,llama3} and stories260K")->capture_default_str();
  app.add_option("--mb", mb, "MB of text per workload")->capture_default_str();
  app.add_option("--chunk-kb", chunk_kb, "prompt size in KB")->capture_default_str();
  app.add_option("--reps", reps, "timed passes (best is reported)")->capture_default_str();
  std::string json_path;
  app.add_option("--json", json_path, "write result rows to FILE (bench/bench_json.h)");
  CLI11_PARSE(app, argc, argv);
  zr::bench::JsonRows rows(json_path);
  spdlog::set_level(spdlog::level::warn);  // keep load lines out of the table

  struct Named {
    std::string name, path, key;  // key: the --json row name's part
  };
  const std::vector<Named> tokenizers = {
      {"qwen3 tokenizer.json", models + "/tokenizers/qwen3/tokenizer.json", "qwen3"},
      {"llama3 tokenizer.json", models + "/tokenizers/llama3/tokenizer.json", "llama3"},
      {"stories260K sentencepiece", models + "/stories260K/tokenizer.model", "sentencepiece"}};
  std::string mixed_unit;
  {
    std::ifstream f(models + "/tokenizers/qwen3/cases.json");
    if (!f) return std::fprintf(stderr, "no %s/tokenizers/qwen3/cases.json\n", models.c_str()), 1;
    const nlohmann::json cases = nlohmann::json::parse(f)["cases"];
    for (const auto& c : cases) mixed_unit += c["text"].get<std::string>() + "\n";
    if (mixed_unit.size() < 100) return std::fprintf(stderr, "cases.json holds no texts\n"), 1;
  }
  const size_t bytes = static_cast<size_t>(mb * 1e6);
  struct Text {
    std::string name, body;
  };
  const std::vector<Text> texts = {{"english", repeat_to(std::string(zr::builtin_corpus()), bytes)},
                                   {"mixed", repeat_to(mixed_unit, bytes)}};
  std::printf("one thread; prompts of ~%d KB; MB/s of text (decode/stream: of output text)\n", chunk_kb);
  std::printf("%-10s %-27s %10s %12s %12s %10s %10s\n", "text", "tokenizer", "bytes/tok", "encode cold", "encode warm",
              "decode", "stream");
  for (const Text& text : texts) {
    const auto prompts = chunks_of(text.body, static_cast<size_t>(chunk_kb) * 1024);
    std::vector<std::pair<std::string, Row>> measured;  // sentencepiece (the bound) comes last
    for (const Named& t : tokenizers) {
      auto tok = zr::Tokenizer::load(t.path);
      if (!tok.ok()) {
        std::printf("%-10s %-27s %s\n", text.name.c_str(), t.name.c_str(), tok.status().to_string().c_str());
        continue;
      }
      const Row r = measure(*tok, prompts, reps);
      std::printf("%-10s %-27s %10.2f %12.1f %12.1f %10.1f %10.1f\n", text.name.c_str(), t.name.c_str(),
                  r.bytes_per_token, r.encode_cold, r.encode_warm, r.decode, r.stream);
      measured.emplace_back(t.key, r);
    }
    const Row* spm = measured.empty() || measured.back().first != "sentencepiece" ? nullptr : &measured.back().second;
    for (const auto& [key, r] : measured) {
      const bool bounded = spm && key != "sentencepiece";
      rows.add(
          {"tokenizer_" + text.name + "_" + key + "_encode", r.encode_warm, "MB/s", bounded ? spm->encode_warm : 0});
      rows.add({"tokenizer_" + text.name + "_" + key + "_decode", r.decode, "MB/s", bounded ? spm->decode : 0});
    }
    std::printf("  (%s: %.1f MB in %zu prompts)\n", text.name.c_str(), text.body.size() / 1e6, prompts.size());
  }
  return rows.write() ? 0 : 1;
}
