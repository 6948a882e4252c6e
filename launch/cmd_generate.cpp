// `zrollout generate` and `zrollout score`: JSONL in, JSONL out, one engine in this process.
// Output lines keep the input order (the samples of one request together, by index); a bad input
// line yields {"rid", "error": {"code", "message"}} and the other lines still run.
#include <spdlog/spdlog.h>

#include <chrono>
#include <fstream>
#include <map>
#include <optional>

#include "comm/json_codec.h"
#include "launch/commands.h"
#include "launch/engine_options.h"

namespace zr::cli {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct JsonlJob {
  std::string input, output;
  EngineCliOptions engine;
  bool score = false;
};

// Per input line: the rid and the output lines once known.
struct LineSlot {
  std::string rid;
  int expected = 1;
  std::vector<std::optional<json>> outputs;
};

class OrderedWriter {
 public:
  explicit OrderedWriter(std::ofstream& out) : out_(out) {}
  void add(LineSlot slot) { slots_.push_back(std::move(slot)); }
  LineSlot& slot(size_t i) { return slots_[i]; }
  // Writes every leading line whose outputs are all known.
  void flush_ready() {
    while (next_ < slots_.size()) {
      auto& s = slots_[next_];
      for (const auto& o : s.outputs)
        if (!o) return;
      for (const auto& o : s.outputs) out_ << o->dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
      s.outputs.clear();
      ++next_;
    }
    out_.flush();
  }
  size_t written() const { return next_; }
  size_t total() const { return slots_.size(); }

 private:
  std::ofstream& out_;
  std::vector<LineSlot> slots_;
  size_t next_ = 0;
};

Status submit_line(Engine& engine, const std::string& line, size_t index, bool score, LineSlot& slot) {
  slot.rid = std::to_string(index);
  json j = json::parse(line, nullptr, false);
  if (j.is_discarded())
    return make_error(ErrorCode::bad_message, "line " + std::to_string(index + 1) + ": not valid JSON");
  if (j.is_object() && j.contains("rid") && j["rid"].is_string()) slot.rid = j["rid"].get<std::string>();
  if (j.is_object() && !j.contains("rid")) j["rid"] = slot.rid;
  if (score) {
    auto req = score_request_from_json(j);
    if (!req.ok()) return req.status();
    return engine.submit_score(std::move(req).value());
  }
  auto req = generate_request_from_json(j);
  if (!req.ok()) return req.status();
  slot.expected = req->sampling_params.n;
  return engine.submit(std::move(req).value());
}

int run_jsonl(const JsonlJob& job) {
  log_startup(job.score ? "score" : "generate", job.engine);
  std::ifstream in(job.input);
  if (!in) {
    spdlog::error("cannot read {}", job.input);
    return 1;
  }
  auto engine = Engine::load(job.engine.model, job.engine.engine_options());
  if (!engine.ok()) {
    spdlog::error("{}", engine.status().to_string());
    return 1;
  }
  Engine& eng = **engine;
  std::ofstream out(job.output);
  if (!out) {
    spdlog::error("cannot write {}", job.output);
    return 1;
  }
  OrderedWriter writer(out);
  std::map<std::string, size_t> line_of_rid;  // in-flight rid -> input line
  std::string line;
  size_t index = 0, errors = 0;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    LineSlot slot;
    Status st = submit_line(eng, line, index, job.score, slot);
    slot.outputs.resize(st.ok() ? slot.expected : 1);
    if (!st.ok()) {
      slot.outputs[0] = error_to_json(slot.rid, st);
      ++errors;
    } else {
      line_of_rid[slot.rid] = index;
    }
    writer.add(std::move(slot));
    ++index;
  }
  spdlog::info("{} requests read ({} rejected)", index, errors);

  auto t0 = Clock::now(), last_report = t0;
  int64_t generated = 0, processed = 0;
  while (!eng.idle()) {
    StepOutputs step;
    eng.step(step);
    generated += step.tokens_generated;
    processed += step.tokens_processed;
    for (auto& o : step.finished) writer.slot(line_of_rid.at(o.rid)).outputs[o.index] = to_json(o);
    for (auto& o : step.scores) writer.slot(line_of_rid.at(o.rid)).outputs[0] = to_json(o);
    writer.flush_ready();
    auto now = Clock::now();
    if (now - last_report > std::chrono::seconds(2)) {
      double secs = std::chrono::duration<double>(now - t0).count();
      EngineStats s = eng.stats();
      spdlog::info("progress: {}/{} lines done, running {}, waiting {}, {} tokens generated ({:.1f} tok/s), KV {}/{}",
                   writer.written(), writer.total(), s.running, s.waiting, generated, generated / secs,
                   s.kv_blocks_used, s.kv_blocks_total);
      last_report = now;
    }
  }
  writer.flush_ready();
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  spdlog::info("done: {} lines, {} prompt+decode tokens processed, {} generated in {:.2f} s ({:.1f} tok/s)",
               writer.written(), processed, generated, secs, generated / std::max(secs, 1e-9));
  return 0;
}

void add_jsonl_command(CLI::App& app, const char* name, const char* help, bool score) {
  auto job = std::make_shared<JsonlJob>();
  job->score = score;
  CLI::App* cmd = app.add_subcommand(name, help);
  add_engine_options(cmd, job->engine);
  cmd->add_option("--input", job->input, "input JSONL (one request per line)")->required();
  cmd->add_option("--output", job->output, "output JSONL")->required();
  cmd->callback([job] {
    int rc = run_jsonl(*job);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace

void add_generate(CLI::App& app) {
  add_jsonl_command(app, "generate", "generate completions for a JSONL file of requests", false);
}

void add_score(CLI::App& app) {
  add_jsonl_command(app, "score", "teacher-forced per-token logprobs of completions (JSONL)", true);
}

}  // namespace zr::cli
