// `zrollout trainer`: in one invocation and in this order, whichever are given: publish a
// checkpoint folder's weights (--push DIR --path ipc|disk --version V), run generate requests
// through the engines (--input/--output, the JSONL of `zrollout generate`), stop the engines
// (--shutdown). Engines are addressed with --connect (repeatable). Under mpirun, --keys-out DIR
// writes the job's client keys for clients outside the job (launch/cluster.h write_job_keys).
#include <spdlog/spdlog.h>

#include <fstream>

#include "actors/trainer.h"
#include "comm/json_codec.h"
#include "comm/wire_weights.h"
#include "launch/cluster.h"
#include "launch/commands.h"
#include "launch/engine_options.h"
#include "launch/security_options.h"

namespace zr::cli {

namespace {

using nlohmann::json;

struct TrainerJob {
  std::vector<std::string> connect;
  std::string push, path = "ipc", in_flight = "drain", input, output, keys_out, log_level = "info";
  std::vector<std::string> only;
  int64_t version = 0;
  uint64_t bucket_mib = 64;
  bool shutdown = false, flush_cache = false;
  ClientSecurityCli security;
};

int run_push(Trainer& t, const TrainerJob& job, MpiGroup* world) {
  PublishOptions opt;
  opt.path = *wire::weight_path_from_name(job.path);  // --path is checked by CLI11
  opt.in_flight = *wire::in_flight_from_name(job.in_flight);
  opt.only = job.only;
  opt.flush_cache = job.flush_cache;
  opt.bucket_bytes = job.bucket_mib << 20;
  if (job.path == "broadcast" && !world)
    return spdlog::error("push refused: --path broadcast needs the mpirun launch (trainer and engines in one job)"), 2;
  auto res = job.path == "broadcast" ? t.publish_broadcast(job.push, job.version, opt, *world)
                                     : t.publish(job.push, job.version, opt);
  if (!res.ok()) {
    spdlog::error("push refused: {}", res.status().to_string());
    return 2;
  }
  for (size_t i = 0; i < res->acks.size(); ++i)
    spdlog::info("engine {}: serving v{} ({:.1f} MiB, stage {:.1f} ms, commit {:.1f} ms, {} tensors zero-copy)",
                 res->acked[i], res->acks[i].version, res->acks[i].bytes / 1048576.0, res->acks[i].stage_seconds * 1e3,
                 res->acks[i].commit_seconds * 1e3, res->acks[i].zero_copy_tensors);
  for (int k : res->dead) spdlog::warn("engine {}: not updated (it stopped answering heartbeats)", k);
  spdlog::info("published v{} by {} to {} engine(s) in {:.1f} ms", job.version, job.path, res->acks.size(),
               res->seconds * 1e3);
  return 0;
}

int run_requests(Trainer& t, const TrainerJob& job) {
  std::ifstream in(job.input);
  std::ofstream out(job.output);
  if (!in || !out) return spdlog::error("cannot open {} / {}", job.input, job.output), 1;
  std::vector<json> lines;  // output per input line, in order
  std::vector<GenerateRequest> reqs;
  std::vector<size_t> line_of_req;
  size_t index = 0;
  for (std::string line; std::getline(in, line); ++index) {
    json j = json::parse(line, nullptr, false);
    if (j.is_object() && !j.contains("rid")) j["rid"] = std::to_string(index);
    auto req = j.is_discarded() ? Result<GenerateRequest>(make_error(ErrorCode::bad_message, "not valid JSON"))
                                : generate_request_from_json(j);
    if (!req.ok()) {
      lines.push_back(error_to_json(std::to_string(index), req.status()));
      continue;
    }
    lines.push_back(nullptr);
    line_of_req.push_back(lines.size() - 1);
    reqs.push_back(std::move(req).value());
  }
  auto samples = t.generate(reqs);
  if (!samples.ok()) return spdlog::error("{}", samples.status().to_string()), 1;
  std::map<std::string, std::vector<json>> by_rid;
  for (const auto& s : *samples) by_rid[s.rid].push_back(to_json(s));
  for (size_t i = 0; i < reqs.size(); ++i) lines[line_of_req[i]] = json(by_rid[reqs[i].rid]);
  for (const auto& l : lines) {
    if (l.is_array())
      for (const auto& s : l) out << s.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
    else out << l.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
  }
  spdlog::info("{} samples written to {}", samples->size(), job.output);
  return 0;
}

int run_trainer(const TrainerJob& job) {
  std::optional<MpiGroup> world;
  std::optional<ClusterRoles> roles;  // its weight group (trainer + serve ranks) is the broadcast group
  std::vector<std::string> endpoints = job.connect;
  if (under_mpirun()) {  // the engines are the "serve" ranks of this mpirun job
    auto w = MpiGroup::init(nullptr, nullptr);
    if (!w.ok()) return std::fprintf(stderr, "MPI: %s\n", w.status().to_string().c_str()), 1;
    world.emplace(std::move(w).value());
  }
  set_process_logger("trainer", job.log_level);
  if (world) {
    auto r = exchange_roles(*world, "trainer", "");
    if (!r.ok()) return spdlog::error("MPI endpoint exchange: {}", r.status().to_string()), 1;
    roles.emplace(std::move(r).value());
    endpoints.insert(endpoints.end(), roles->engine_endpoints.begin(), roles->engine_endpoints.end());
    spdlog::info("rank {}: {} engine(s) found through MPI", world->world_rank(), roles->engine_endpoints.size());
  }
  if (!job.keys_out.empty()) {
    if (!roles) return spdlog::error("--keys-out: needs the mpirun launch (the job's keys are made there)"), 2;
    if (Status st = write_job_keys(job.keys_out, roles->keys); !st.ok()) return spdlog::error("{}", st.to_string()), 2;
    spdlog::info("keys-out: {0}/server.key, {0}/client.key_secret (client role)", job.keys_out);
  }
  if (endpoints.empty())
    return spdlog::error("--connect: give at least one engine endpoint (or launch under mpirun)"), 1;
  auto keys = load(job.security);
  if (!keys.ok()) return spdlog::error("{}", keys.status().to_string()), 2;
  TrainerOptions to;
  std::optional<JobKeys> job_keys = roles ? roles->keys : std::nullopt;
  to.curve_for = [job_keys, k = *keys](const std::string& ep) { return engine_keys(ep, job_keys, k); };
  Context ctx;  // the process's one ZeroMQ context; outlives the trainer
  auto t = Trainer::connect(ctx, endpoints, to);
  if (!t.ok()) return spdlog::error("{}", t.status().to_string()), 1;
  if (!job.push.empty())
    if (int rc = run_push(**t, job, roles ? &roles->weight_group : nullptr); rc != 0) {
      // A refused push leaves the engines serving the old version; with --shutdown they still stop,
      // so an mpirun job ends instead of waiting on them.
      if (job.shutdown) (void)(*t)->shutdown_engines();
      return rc;
    }
  if (!job.input.empty())
    if (int rc = run_requests(**t, job); rc != 0) return rc;
  if (job.shutdown) {
    if (Status st = (*t)->shutdown_engines(); !st.ok()) return spdlog::error("{}", st.to_string()), 1;
    spdlog::info("engines asked to shut down");
  }
  return 0;
}

}  // namespace

void add_trainer(CLI::App& app) {
  auto job = std::make_shared<TrainerJob>();
  CLI::App* cmd = app.add_subcommand("trainer", "publish weights, run requests, stop engines");
  cmd->add_option("--connect", job->connect, "engine endpoint (repeatable)");
  cmd->add_option("--push", job->push, "checkpoint folder whose weights to publish");
  cmd->add_option("--path", job->path, "broadcast (under mpirun) | ipc | disk")
      ->capture_default_str()
      ->check(CLI::IsMember({"ipc", "disk", "broadcast"}));
  cmd->add_option("--version", job->version, "new weight version (must grow)");
  cmd->add_option("--in-flight", job->in_flight, "drain | abort | continue | recompute")
      ->capture_default_str()
      ->check(CLI::IsMember({"drain", "abort", "continue", "recompute"}));
  cmd->add_option("--only", job->only, "publish only these tensor names");
  cmd->add_flag("--flush-cache", job->flush_cache, "drop cached KV with the update");
  cmd->add_option("--bucket-mib", job->bucket_mib,
                  "broadcast: bucket size in MiB (a bucket moves as MPI_Ibcast segments of at most 2 MiB)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--input", job->input, "generate requests (JSONL)");
  cmd->add_option("--output", job->output, "results (JSONL)");
  cmd->add_flag("--shutdown", job->shutdown, "stop the engines at the end");
  cmd->add_option("--keys-out", job->keys_out,
                  "under mpirun: write the job's server.key and a client key pair (client.key, client.key_secret) "
                  "into DIR, for clients outside the job");
  add_client_security_options(cmd, job->security);
  cmd->add_option("--log-level", job->log_level)->capture_default_str();
  cmd->callback([job] {
    if (!job->push.empty() && job->version <= 0)
      throw CLI::ValidationError("--version", "give a version > 0 with --push");
    if (int rc = run_trainer(*job); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace zr::cli
