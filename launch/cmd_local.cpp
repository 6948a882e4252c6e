// `zrollout local`: the whole system in one process. N rollout actors serve engines over inproc;
// a driver actor runs the main job: rollouts over a prompt file in groups of n samples with
// logprobs, balanced across engines by requests in flight, with a progress bar and a summary.
#include <spdlog/spdlog.h>

#include <unistd.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "actors/rollout_actor.h"
#include "actors/trainer.h"
#include "comm/json_codec.h"
#include "comm/wire_codec.h"
#include "launch/commands.h"
#include "launch/engine_options.h"
#include "model/make_model.h"

namespace zr::cli {

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

constexpr const char* kBuiltinPrompts[] = {"Once upon a time",
                                           "The little dog ran to the park",
                                           "Lily found a shiny red ball",
                                           "One day, the sun was hot and",
                                           "Tom and his mom went to the shop",
                                           "The old tree in the garden",
                                           "A small bird sat on the window",
                                           "The children wanted to build a boat",
                                           "Max was sad because",
                                           "In the morning, the cat",
                                           "The big bear liked honey",
                                           "Sara drew a picture of",
                                           "The rain stopped and the sky",
                                           "Ben had a new friend named",
                                           "The toy car was broken, so",
                                           "At night, the moon and the stars"};

struct LocalJob {
  std::string model, prompts, output, log_level = "warn", compute = "f32", kv_dtype = "f32";
  int engines = 2, n = 4, max_new_tokens = 64, threads = 0, kv_cache_mb = 256;
  bool no_prefix_cache = false;
  int steps = 1;     // rollout steps; a weight push between two steps
  std::string push;  // checkpoint published after each step (default: --model itself)
  float temperature = 1.0f;
  uint64_t seed = 0;
};

// The built-in default: the real stories260K shipped in the checkout (models/stories260K, MIT; its
// README says where it comes from); without it (an installed binary away from its checkout), the
// tiny random model, made once into the user's cache.
Result<std::string> default_model() {
#ifdef ZR_DEFAULT_MODEL_DIR
  if (std::filesystem::exists(std::string(ZR_DEFAULT_MODEL_DIR) + "/config.json"))
    return std::string(ZR_DEFAULT_MODEL_DIR);
#endif
  const char* env = std::getenv("ZROLLOUT_CACHE");
  const char* home = std::getenv("HOME");
  std::string root = env ? env : std::string(home ? home : "/tmp") + "/.cache/zrollout";
  std::string dir = root + "/tiny-seed0";
  if (std::filesystem::exists(dir + "/config.json")) return dir;
  spdlog::info("making the built-in tiny model in {}", dir);
  MakeModelOptions mo;
  mo.preset = "tiny";
  mo.out_dir = dir;
  if (Status st = make_model(mo); !st.ok()) return st;
  return dir;
}

Result<std::vector<std::string>> load_prompts(const std::string& path) {
  std::vector<std::string> out;
  if (path.empty()) return std::vector<std::string>(std::begin(kBuiltinPrompts), std::end(kBuiltinPrompts));
  std::ifstream in(path);
  if (!in) return make_error(ErrorCode::not_found, "--prompts: cannot read " + path);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);  // {"text": ...} lines or plain text lines
    out.push_back(j.is_object() && j.contains("text") && j["text"].is_string() ? j["text"].get<std::string>() : line);
  }
  return out;
}

// Drives rollouts: one generate call per prompt (n samples), to the engine with the fewest calls
// in flight. Runs on the main thread, stepped with run_once().
class Driver {
 public:
  Driver(Context& ctx, const LocalJob& job, std::vector<std::string> prompts, int step)
      : job_(job), prompts_(std::move(prompts)), step_(step), actor_(ctx, "driver") {
    actor_.set_error_body(wire::error_body);
    actor_.on("generate.reply", [this](Frame& f, const ReplyTo& from) { on_reply(f, from.peer); });
    actor_.on("error", [this](Frame& f, const ReplyTo& from) { on_error(f, from.peer); });
  }
  Status connect(const std::vector<std::string>& endpoints) {
    for (const auto& e : endpoints) {
      auto p = actor_.connect_peer(e);
      if (!p.ok()) return p.status();
      engines_.push_back({*p});
    }
    return {};
  }
  void run() {
    start_ = last_draw_ = Clock::now();
    while (next_ < prompts_.size() && dispatch()) {}
    while (done_ < prompts_.size()) {
      actor_.run_once(std::chrono::milliseconds(50));
      if (Clock::now() - last_draw_ > std::chrono::milliseconds(200)) draw_progress();
    }
    draw_progress();
    std::fprintf(stderr, "\n");
  }
  void summary(const std::string& model) const;
  int64_t tokens() const { return tokens_; }
  double seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  const std::vector<SampleOutput>& samples() const { return samples_; }
  size_t errors() const { return errors_; }

 private:
  struct EngineUse {
    PeerId peer;
    int in_flight = 0;
    int requests = 0;
    int64_t tokens = 0;
  };
  bool dispatch() {
    auto e = std::min_element(engines_.begin(), engines_.end(),
                              [](const EngineUse& a, const EngineUse& b) { return a.in_flight < b.in_flight; });
    if (e->in_flight >= 4) return false;  // a few calls per engine keep its batch full
    GenerateRequest r;
    r.rid = "prompt-" + std::to_string(next_);
    r.text = prompts_[next_];
    r.sampling_params.n = job_.n;
    r.sampling_params.max_new_tokens = job_.max_new_tokens;
    r.sampling_params.temperature = job_.temperature;
    r.sampling_params.seed = job_.seed + next_ * 1000003ull + step_ * 7919ull;
    r.return_logprob = true;
    actor_.send_peer(e->peer, "generate", wire::encode(GenerateCall{next_, {r}}));
    ++e->in_flight;
    ++e->requests;
    ++next_;
    return true;
  }
  EngineUse& engine_of(PeerId p) {
    return *std::find_if(engines_.begin(), engines_.end(), [p](const EngineUse& e) { return e.peer == p; });
  }
  void on_reply(Frame& f, PeerId peer) {
    EngineUse& e = engine_of(peer);
    --e.in_flight;
    ++done_;
    auto body = wire::unpack_body(f.body);
    auto reply = body.ok() ? wire::generate_reply_from_json(*body) : Result<GenerateReply>(body.status());
    if (!reply.ok()) {
      ++errors_;
      spdlog::error("bad reply: {}", reply.status().to_string());
    } else {
      for (auto& o : reply->outputs) {
        e.tokens += o.meta_info.completion_tokens;
        tokens_ += o.meta_info.completion_tokens;
        prompt_tokens_ += o.index == 0 ? o.meta_info.prompt_tokens : 0;
        samples_.push_back(std::move(o));
      }
    }
    while (next_ < prompts_.size() && dispatch()) {}
  }
  void on_error(Frame& f, PeerId peer) {
    --engine_of(peer).in_flight;
    ++done_;
    ++errors_;
    auto body = wire::unpack_body(f.body);
    spdlog::error("engine error: {}", body.ok() ? wire::status_from_error_json(*body).to_string() : "unreadable");
    while (next_ < prompts_.size() && dispatch()) {}
  }
  void draw_progress() {
    last_draw_ = Clock::now();
    double secs = std::chrono::duration<double>(last_draw_ - start_).count();
    const int width = 30;
    int filled = static_cast<int>(width * done_ / std::max<size_t>(1, prompts_.size()));
    std::fprintf(stderr, "\r[%s%s] %zu/%zu groups | %lld tokens | %.1f tok/s", std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), done_, prompts_.size(), static_cast<long long>(tokens_),
                 tokens_ / std::max(secs, 1e-9));
    std::fflush(stderr);
  }

  const LocalJob& job_;
  std::vector<std::string> prompts_;
  int step_;
  Actor actor_;
  std::vector<EngineUse> engines_;
  std::vector<SampleOutput> samples_;
  size_t next_ = 0, done_ = 0, errors_ = 0;
  int64_t tokens_ = 0, prompt_tokens_ = 0;
  Clock::time_point start_, last_draw_;
};

void Driver::summary(const std::string& model) const {
  double secs = std::chrono::duration<double>(Clock::now() - start_).count();
  std::printf("zrollout local: %zu prompts x n=%d on %zu engine(s), model %s\n", prompts_.size(), job_.n,
              engines_.size(), model.c_str());
  std::printf("  %-10s %-9s %-13s %-13s %-10s %-10s %-7s\n", "requests", "samples", "prompt tok", "generated tok",
              "elapsed s", "tok/s", "errors");
  std::printf("  %-10zu %-9zu %-13lld %-13lld %-10.2f %-10.1f %-7zu\n", prompts_.size(), samples_.size(),
              static_cast<long long>(prompt_tokens_), static_cast<long long>(tokens_), secs,
              tokens_ / std::max(secs, 1e-9), errors_);
  std::printf("  %-10s %-9s %-13s %-10s\n", "engine", "requests", "generated tok", "share");
  for (size_t i = 0; i < engines_.size(); ++i)
    std::printf("  %-10zu %-9d %-13lld %3.0f%%\n", i, engines_[i].requests, static_cast<long long>(engines_[i].tokens),
                100.0 * engines_[i].tokens / std::max<int64_t>(1, tokens_));
}

int run_local(LocalJob job) {
  set_process_logger("local", job.log_level);
  if (job.model.empty()) {
    auto m = default_model();
    if (!m.ok()) return spdlog::error("{}", m.status().to_string()), 1;
    job.model = *m;
  }
  auto prompts = load_prompts(job.prompts);
  if (!prompts.ok()) return spdlog::error("{}", prompts.status().to_string()), 1;
  int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  EngineCliOptions eo;
  eo.model = job.model;
  eo.threads = job.threads > 0 ? job.threads : std::max(1, hw / job.engines);
  eo.kv_cache_mb = job.kv_cache_mb;
  eo.compute = job.compute;
  eo.kv_dtype = job.kv_dtype;
  eo.no_prefix_cache = job.no_prefix_cache;
  Context ctx;
  std::vector<std::unique_ptr<RolloutActor>> engines;
  std::vector<std::string> endpoints;
  for (int i = 0; i < job.engines; ++i) {
    auto engine = Engine::load(job.model, eo.engine_options());
    if (!engine.ok()) return spdlog::error("{}", engine.status().to_string()), 1;
    RolloutActorOptions ro;
    ro.name = "rollout-" + std::to_string(i);
    ro.model_path = job.model;
    engines.push_back(std::make_unique<RolloutActor>(ctx, std::move(engine).value(), ro));
    std::string ep = "inproc://rollout-" + std::to_string(i);
    if (Status st = engines.back()->bind(ep); !st.ok()) return spdlog::error("{}", st.to_string()), 1;
    engines.back()->start();
    endpoints.push_back(ep);
  }
  // Rollout steps; between two steps the trainer publishes weights (ipc: one shared-memory segment
  // mapped by every engine) under the next version, as an RL loop does after each training step.
  auto trainer = Trainer::connect(ctx, endpoints);
  if (!trainer.ok()) return spdlog::error("{}", trainer.status().to_string()), 1;
  std::vector<SampleOutput> samples;
  size_t errors = 0;
  std::vector<std::string> rows;
  for (int step = 0; step < job.steps; ++step) {
    Driver driver(ctx, job, *prompts, step);
    if (Status st = driver.connect(endpoints); !st.ok()) return spdlog::error("{}", st.to_string()), 1;
    driver.run();
    errors += driver.errors();
    samples.insert(samples.end(), driver.samples().begin(), driver.samples().end());
    double push_ms = 0;
    if (step + 1 < job.steps) {
      auto res = (*trainer)->publish(job.push.empty() ? job.model : job.push, step + 1, PublishOptions{});
      if (!res.ok()) return spdlog::error("push: {}", res.status().to_string()), 1;
      push_ms = res->seconds * 1e3;
    }
    char row[160];
    std::snprintf(row, sizeof row, "  %-6d %-8d %-8zu %-10lld %-10.1f %s", step, step, driver.samples().size(),
                  static_cast<long long>(driver.tokens()), driver.tokens() / std::max(driver.seconds(), 1e-9),
                  step + 1 < job.steps ? (std::to_string(static_cast<int>(push_ms * 10) / 10.0).substr(0, 5) + " (v" +
                                          std::to_string(step + 1) + " by ipc)")
                                             .c_str()
                                       : "-");
    rows.push_back(row);
    if (step + 1 == job.steps) driver.summary(job.model);
  }
  if (job.steps > 1) {
    std::printf("  %-6s %-8s %-8s %-10s %-10s %s\n", "step", "version", "samples", "tokens", "tok/s", "push ms after");
    for (const auto& r : rows) std::printf("%s\n", r.c_str());
  }
  for (auto& e : engines) e->stop();
  if (!job.output.empty()) {
    std::ofstream out(job.output);
    for (const auto& s : samples) out << to_json(s).dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
    std::printf("  %zu samples written to %s\n", samples.size(), job.output.c_str());
  }
  return errors == 0 ? 0 : 1;
}

}  // namespace

void add_local(CLI::App& app) {
  auto job = std::make_shared<LocalJob>();
  CLI::App* cmd = app.add_subcommand("local", "one process: N rollout actors and a driver over inproc (the main job)");
  cmd->add_option("--model", job->model, "model folder (default: the shipped stories260K, models/stories260K)");
  cmd->add_option("--engines", job->engines, "rollout actors")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--prompts", job->prompts, "prompt file: text lines or JSONL with \"text\" (default: built-in)");
  cmd->add_option("--n", job->n, "samples per prompt")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-new-tokens", job->max_new_tokens)->capture_default_str();
  cmd->add_option("--temperature", job->temperature)->capture_default_str();
  cmd->add_option("--seed", job->seed)->capture_default_str();
  cmd->add_option("--threads", job->threads, "threads per engine (0 = cores / engines)")->capture_default_str();
  cmd->add_option("--kv-cache-mb", job->kv_cache_mb, "KV budget per engine")->capture_default_str();
  cmd->add_option("--compute", job->compute, "matmul mode of the engines (f32 | bf16, as serve --compute)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_option("--kv-dtype", job->kv_dtype, "KV cache element type of the engines (f32 | bf16, as serve --kv-dtype)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_flag("--no-prefix-cache", job->no_prefix_cache,
                "never reuse the KV of an equal token prefix across requests");
  cmd->add_option("--output", job->output, "write every sample as JSONL");
  cmd->add_option("--steps", job->steps, "rollout steps, with a weight push (next version) between two")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--push", job->push, "checkpoint pushed between steps (default: the model itself)");
  cmd->add_option("--log-level", job->log_level)->capture_default_str();
  cmd->callback([job] {
    if (int rc = run_local(*job); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace zr::cli
