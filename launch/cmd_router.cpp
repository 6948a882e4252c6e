// `zrollout router`: a Router (actors/router.h) in front of rollout engines, speaking their
// protocol (docs/protocol.md §10), until SIGINT/SIGTERM or op shutdown. It balances requests by
// load, keeps sessions on their engine, and re-routes the requests of an engine that stops
// answering heartbeats; `get_engines` tells which engine died.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <cstdio>
#include <optional>

#include "actors/router_actor.h"
#include "launch/cluster.h"
#include "launch/commands.h"
#include "launch/engine_options.h"
#include "launch/security_options.h"
#include "runtime/signals.h"

namespace zr::cli {

namespace {

struct RouterJob {
  std::string bind, tokenizer, log_level = "info";
  std::vector<std::string> engines;
  int heartbeat_ms = static_cast<int>(kRouterHeartbeatInterval.count());
  int heartbeat_liveness = kRouterHeartbeatLiveness;
  ServerSecurityCli security;     // the router's own ROUTER (its callers)
  ClientSecurityCli engine_keys;  // how it reaches the engines (a trainer key)
  CallLimits limits;
};

int run_router(RouterJob job) {
  install_shutdown_signals();     // before any thread exists, so every thread inherits the mask
  std::optional<MpiGroup> world;  // under mpirun: the engines are the job's serve ranks
  if (under_mpirun()) {
    auto w = MpiGroup::init(nullptr, nullptr);
    if (!w.ok()) return std::fprintf(stderr, "MPI: %s\n", w.status().to_string().c_str()), 1;
    world.emplace(std::move(w).value());
  }
  set_process_logger("router", job.log_level);
  std::optional<JobKeys> job_keys;
  if (world) {
    auto roles = exchange_roles(*world, "router", "");
    if (roles.ok()) job_keys = roles->keys;
    if (!roles.ok()) return spdlog::error("MPI endpoint exchange: {}", roles.status().to_string()), 1;
    job.engines.insert(job.engines.end(), roles->engine_endpoints.begin(), roles->engine_endpoints.end());
    spdlog::info("rank {}: {} engine(s) found through MPI", world->world_rank(), roles->engine_endpoints.size());
  }
  if (job.engines.empty())
    return spdlog::error("--engine: give at least one engine endpoint (or launch under mpirun)"), 1;
  spdlog::info("router: {} engine(s), heartbeat every {} ms, dead after {} silent heartbeats, tokenizer {}",
               job.engines.size(), job.heartbeat_ms, job.heartbeat_liveness,
               job.tokenizer.empty() ? "from the engines' model_path" : job.tokenizer);
  Context ctx;
  RouterActorOptions opt;
  opt.router.heartbeat_interval = Millis{job.heartbeat_ms};
  opt.router.heartbeat_liveness = job.heartbeat_liveness;
  opt.router.tokenizer = job.tokenizer;
  opt.router.limits = job.limits;
  opt.on_shutdown = [] { kill(getpid(), SIGTERM); };  // the wait below then stops the router
  auto explicit_keys = load(job.engine_keys);
  if (!explicit_keys.ok()) return spdlog::error("{}", explicit_keys.status().to_string()), 2;
  opt.engine_curve_for = [job_keys, keys = *explicit_keys](const std::string& ep) {
    return engine_keys(ep, job_keys, keys);
  };
  ActorOptions security;
  std::optional<CurveServerKeys> mpi_keys;
  // Under mpirun a router bound beyond loopback without its own --curve-secret serves with the job's
  // keys (the trainer rank, and clients given the job's client key by `trainer --keys-out`, can then
  // call it); with one, its own keys and folders decide.
  if (job_keys && job.security.curve_secret.empty()) mpi_keys = job_keys->server_side();
  if (Status st =
          configure_server(job.security, job.bind, security, local_only_endpoint(job.bind) ? std::nullopt : mpi_keys);
      !st.ok())
    return spdlog::error("{}", st.to_string()), 2;
  opt.curve = security.curve;
  opt.max_message_bytes = security.max_message_bytes;
  auto router = RouterActor::create(ctx, job.engines, opt);
  if (!router.ok()) return spdlog::error("{}", router.status().to_string()), 1;
  if (Status st = (*router)->bind(job.bind); !st.ok()) return spdlog::error("bind {}: {}", job.bind, st.to_string()), 1;
  (*router)->start();
  std::string engines;
  for (const auto& e : job.engines) engines += (engines.empty() ? "" : ", ") + e;
  spdlog::info("routing on {} to {}", (*router)->endpoint(), engines);
  auto sig = wait_for_shutdown_signal();
  spdlog::info("signal {}: shutting down", sig.value_or(0));
  (*router)->stop();  // calls in flight answer with their partial outputs
  spdlog::info("stopped");
  return 0;
}

}  // namespace

void add_router(CLI::App& app) {
  auto job = std::make_shared<RouterJob>();
  CLI::App* cmd = app.add_subcommand("router", "balance requests across engines, re-route those of a dead engine");
  cmd->add_option("--bind", job->bind, "endpoint: tcp://HOST:PORT or ipc://PATH")->required();
  cmd->add_option("--engine", job->engines,
                  "engine endpoint (repeatable; under mpirun the job's serve ranks are added)");
  cmd->add_option("--heartbeat-ms", job->heartbeat_ms, "health ping interval per engine")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--heartbeat-liveness", job->heartbeat_liveness, "silent intervals before an engine is dead")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--tokenizer", job->tokenizer,
                  "tokenizer.json / tokenizer.model or model folder of the engines' model (default: their model_path, "
                  "if readable)");
  add_server_security_options(cmd, job->security);
  add_client_security_options(cmd, job->engine_keys);
  add_call_limit_options(cmd, job->limits);
  cmd->add_option("--log-level", job->log_level)->capture_default_str();
  cmd->callback([job] {
    if (int rc = run_router(*job); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace zr::cli
