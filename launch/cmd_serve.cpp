// `zrollout serve`: one rollout engine behind a ZeroMQ endpoint until SIGINT/SIGTERM.
// `zrollout client`: the same JSONL as `zrollout generate`, sent to a server.
#include <spdlog/spdlog.h>

#include <spdlog/fmt/ranges.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>

#include "actors/engine/request_validation.h"
#include "actors/engine/tp_follower.h"
#include "actors/engine/tp_group.h"
#include "actors/rollout_actor.h"
#include "comm/client.h"
#include "comm/json_codec.h"
#include "comm/wire_codec.h"
#include "launch/cluster.h"
#include "launch/commands.h"
#include "launch/engine_options.h"
#include "launch/security_options.h"
#include "runtime/actor.h"
#include "runtime/signals.h"

namespace zr::cli {

namespace {

using nlohmann::json;

struct ServeJob {
  EngineCliOptions engine;
  std::string bind, advertise_host, advertise_interface;
  int drain_timeout_s = 30;
  int tp = 1;
  ServerSecurityCli security;
  CallLimits limits;
  std::vector<std::string> weights_roots;
};

// The job's keys serve this rank when it is bound beyond loopback (mpirun with a trainer rank).
std::optional<CurveServerKeys> job_server_keys(const ServeJob& job, const std::optional<ClusterPlan>& plan) {
  if (!plan || !plan->keys || local_only_endpoint(job.bind)) return std::nullopt;
  return plan->keys->server_side();
}

constexpr int kPeerMisses = 3;  // health pings a TP peer may miss in a row (3 s each) before it is gone

// The peers' liveness check for TpGroup::set_peers_alive: every endpoint answers `health`. A
// leader that serves with the job's CURVE keys is pinged with the job's trainer key (`job`).
std::function<bool()> peers_answer(const std::vector<std::string>& endpoints, const std::optional<JobKeys>& job = {}) {
  struct Peer {
    std::unique_ptr<Client> client;
    int misses = 0;
  };
  auto peers = std::make_shared<std::vector<Peer>>();
  for (const auto& ep : endpoints) {
    Client::Options o;
    o.curve = engine_keys(ep, job);
    if (auto c = Client::connect(ep, nullptr, o); c.ok()) peers->push_back({std::move(c).value(), 0});
  }
  return [peers] {
    for (Peer& p : *peers) {
      p.misses = p.client->health(std::chrono::seconds(3)).ok() ? 0 : p.misses + 1;
      if (p.misses >= kPeerMisses) return false;
    }
    return true;
  };
}

// Where a follower answers its leader's liveness pings: --bind's host with any free port (an ipc
// path gets a suffix).
std::string follower_bind(const std::string& bind, int tp_rank) {
  if (bind.rfind("tcp://", 0) == 0) return bind.substr(0, bind.rfind(':')) + ":*";
  return bind + ".tp" + std::to_string(tp_rank);
}

// The engine actor's options from the flags; logs the limits it will enforce.
RolloutActorOptions actor_options(const ServeJob& job, const ActorOptions& security, std::optional<int> world_rank) {
  RolloutActorOptions opt;
  opt.model_path = job.engine.model;
  if (world_rank) opt.rank = opt.weight_rank = *world_rank;
  opt.drain_timeout = std::chrono::seconds(job.drain_timeout_s);
  opt.curve = security.curve;
  opt.max_message_bytes = security.max_message_bytes;
  opt.limits = job.limits;
  opt.weights_roots = job.weights_roots;
  if (opt.weights_roots.empty())
    opt.weights_roots.push_back(std::filesystem::weakly_canonical(job.engine.model).parent_path().string());
  spdlog::info("limits: max_prompts_per_call={} max_n={} max_in_flight={} max_message_mib={}; weights roots: {}",
               opt.limits.max_prompts_per_call, opt.limits.max_n, opt.limits.max_in_flight,
               job.security.max_message_mib, fmt::join(opt.weights_roots, ", "));
  return opt;
}

// A tensor-parallel rank other than the leader: replays the leader's steps until it shuts down.
int run_follower(const ServeJob& job, const ClusterPlan& plan, TpGroup& tp, MpiGroup& world) {
  EngineOptions eo = job.engine.engine_options();
  auto f = TpFollower::load(job.engine.model, eo, tp, nullptr);
  if (!f.ok()) {
    spdlog::critical("tp rank {}: {}; ending the job", tp.shard().rank, f.status().to_string());
    world.abort_group(1);  // the leader would wait for this rank forever
  }
  // A small actor that answers the leader's liveness pings (a follower serves no requests).
  Context ctx;
  ActorOptions ho;
  ho.max_message_bytes = static_cast<int64_t>(job.security.max_message_mib) << 20;
  Actor health(ctx, "tp-follower", ho);
  health.on("health", [&health](Frame& fr, const ReplyTo& from) {
    health.send(from, "health.reply", wire::encode(HealthReply{wire::peek_req_id(fr.body), "serving", 0}));
  });
  std::string ep;
  if (Status st = health.bind(follower_bind(job.bind, tp.shard().rank)); st.ok()) {
    auto adv = advertised_endpoint(health.endpoint(), job.advertise_host, job.advertise_interface);
    ep = adv.ok() ? *adv : health.endpoint();
  } else {
    spdlog::warn("tp rank {}: liveness endpoint: {}", tp.shard().rank, st.to_string());
  }
  health.start();
  auto roles = exchange_endpoints(world, plan, "");  // a follower serves no requests
  if (!roles.ok()) return spdlog::error("MPI endpoint exchange: {}", roles.status().to_string()), 1;
  tp.gather_strings(ep);  // the leader learns where to ping its followers
  (*f)->set_weight_group(&roles->weight_group);
  // Make sure the leader still lives (it may sit on another host): a leader that crashed must not
  // leave this rank waiting forever and the mpirun job never ending.
  tp.set_peers_alive(peers_answer({roles->engine_endpoints.at(static_cast<size_t>(plan.engine))}, roles->keys));
  (*f)->run();
  health.stop();
  return 0;
}

int run_serve(const ServeJob& job) {
  install_shutdown_signals();     // before any thread exists, so every thread inherits the mask
  std::optional<MpiGroup> world;  // under mpirun: endpoint exchange and the weight-sync group
  if (under_mpirun()) {
    auto w = MpiGroup::init(nullptr, nullptr);
    if (!w.ok()) return spdlog::error("MPI: {}", w.status().to_string()), 1;
    world.emplace(std::move(w).value());
  } else if (job.tp > 1) {
    set_process_logger("serve", job.engine.log_level);
    spdlog::error("--tp {}: tensor parallelism spans MPI ranks; launch with mpirun -np {} (or more)", job.tp, job.tp);
    return 2;
  }
  std::optional<ClusterPlan> plan;
  std::optional<TpGroup> tp;  // this engine's ranks, when --tp > 1
  if (world) {
    auto p = plan_cluster(*world, "serve", job.tp);
    if (!p.ok()) return spdlog::error("cluster: {}", p.status().to_string()), 2;
    plan = *p;
    auto g = split_engines(*world, *plan);
    if (!g.ok()) return spdlog::error("cluster: {}", g.status().to_string()), 1;
    if (plan->tp_size > 1) tp.emplace(std::move(g).value());
  }
  log_startup(plan && plan->tp_rank > 0 ? "tp-follower" : "serve", job.engine);
  if (plan)
    spdlog::info("engine {} of {}, tp rank {} of {}", plan->engine, plan->num_engines, plan->tp_rank, plan->tp_size);
  if (tp) {
    if (tp->mpi().thread_level() != MpiGroup::ThreadLevel::multiple)
      spdlog::warn("MPI gives {}: weight broadcasts while serving need MPI_THREAD_MULTIPLE",
                   MpiGroup::thread_level_name(tp->mpi().thread_level()));
    if (plan->tp_rank > 0) return run_follower(job, *plan, *tp, *world);
  }
  ActorOptions security;
  if (Status st = configure_server(job.security, job.bind, security, job_server_keys(job, plan)); !st.ok()) {
    spdlog::critical("{}", st.to_string());
    if (world) world->abort_group(2);  // the other ranks wait for this engine's endpoint
    return 2;
  }
  EngineOptions eo = job.engine.engine_options();
  eo.tp = tp ? &*tp : nullptr;
  auto engine = Engine::load(job.engine.model, eo);
  if (!engine.ok()) {
    spdlog::error("{}", engine.status().to_string());
    return 1;
  }
  std::optional<ClusterRoles> roles;  // holds the weight group: outlives the actor below
  Context ctx;
  RolloutActorOptions opt =
      actor_options(job, security, world ? std::optional<int>(world->world_rank()) : std::nullopt);
  RolloutActor actor(ctx, std::move(engine).value(), opt);
  if (Status st = actor.bind(job.bind); !st.ok()) {
    spdlog::error("bind {}: {}", job.bind, st.to_string());
    return 1;
  }
  if (world) {
    auto advertised = advertised_endpoint(actor.endpoint(), job.advertise_host, job.advertise_interface);
    if (!advertised.ok()) {
      spdlog::critical("{}; ending the job", advertised.status().to_string());
      world->abort_group(2);  // the other ranks wait for this endpoint
    }
    const std::string ep = *advertised;
    auto r = exchange_endpoints(*world, *plan, ep, job_server_keys(job, plan).has_value());
    if (!r.ok()) return spdlog::error("MPI endpoint exchange: {}", r.status().to_string()), 1;
    roles.emplace(std::move(r).value());
    actor.set_weight_group(&roles->weight_group);
    if (tp) {  // a follower that died must not leave this leader waiting in a collective forever
      std::vector<std::string> eps = tp->gather_strings("");
      eps.erase(std::remove(eps.begin(), eps.end(), std::string()), eps.end());
      tp->set_peers_alive(peers_answer(eps));
    }
    spdlog::info("rank {} of {}: engine at {} (trainer rank {})", world->world_rank(), world->size(), ep,
                 roles->trainer_rank);
  }
  actor.start();
  spdlog::info("serving on {}", actor.endpoint());
  auto sig = wait_for_shutdown_signal();
  spdlog::info("signal {}: draining and shutting down", sig.value_or(0));
  actor.stop();  // drains (up to --drain-timeout), replies to every call, then returns
  spdlog::info("stopped");
  return 0;
}

struct ClientJob {
  std::string connect, input, output, log_level = "info";
  ClientSecurityCli security;
  int concurrency = 64;
  int timeout_s = 600;
};

// One input line: either an error line already, or a request in flight.
struct Pending {
  std::string rid;
  std::optional<json> error_line;
  std::future<Result<GenerateReply>> reply;
};

void write_pending(Pending& p, std::ofstream& out) {
  if (p.error_line) {
    out << p.error_line->dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
    return;
  }
  Result<GenerateReply> r = p.reply.get();
  if (!r.ok()) {
    out << error_to_json(p.rid, r.status()).dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
    return;
  }
  for (const SampleOutput& o : r->outputs)
    out << to_json(o).dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
}

int run_client(const ClientJob& job) {
  set_process_logger("client", job.log_level);
  std::ifstream in(job.input);
  std::ofstream out(job.output);
  if (!in || !out) {
    spdlog::error("cannot open {} / {}", job.input, job.output);
    return 1;
  }
  auto keys = load(job.security);
  if (!keys.ok()) return spdlog::error("{}", keys.status().to_string()), 2;
  Client::Options co;
  co.curve = *keys;
  auto client = Client::connect(job.connect, nullptr, co);
  if (!client.ok()) {
    spdlog::error("connect {}: {}", job.connect, client.status().to_string());
    return 1;
  }
  std::deque<Pending> window;  // input order; at most `concurrency` requests in flight
  std::string line;
  size_t index = 0, written = 0;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Pending p;
    p.rid = std::to_string(index);
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) {
      p.error_line = error_to_json(
          p.rid, make_error(ErrorCode::bad_message, "line " + std::to_string(index + 1) + ": not valid JSON"));
    } else {
      if (j.is_object() && j.contains("rid") && j["rid"].is_string()) p.rid = j["rid"].get<std::string>();
      if (j.is_object() && !j.contains("rid")) j["rid"] = p.rid;
      auto req = generate_request_from_json(j);
      if (!req.ok()) p.error_line = error_to_json(p.rid, req.status());
      else p.reply = (*client)->generate_async({std::move(req).value()}, std::chrono::seconds(job.timeout_s));
    }
    window.push_back(std::move(p));
    ++index;
    while (window.size() >= static_cast<size_t>(job.concurrency)) {
      write_pending(window.front(), out);
      window.pop_front();
      ++written;
    }
  }
  for (; !window.empty(); window.pop_front(), ++written) write_pending(window.front(), out);
  spdlog::info("{} lines written to {}", written, job.output);
  return 0;
}

}  // namespace

void add_serve(CLI::App& app) {
  auto job = std::make_shared<ServeJob>();
  CLI::App* cmd = app.add_subcommand("serve", "serve one rollout engine over ZeroMQ (msgpack, docs/protocol.md)");
  add_engine_options(cmd, job->engine);
  cmd->add_option("--bind", job->bind, "endpoint: tcp://HOST:PORT or ipc://PATH")->required();
  cmd->add_option("--drain-timeout", job->drain_timeout_s, "seconds to finish in-flight work on SIGTERM")
      ->capture_default_str();
  cmd->add_option("--advertise-interface", job->advertise_interface,
                  "network interface whose IPv4 address other ranks dial (when --bind uses 0.0.0.0 or *)");
  cmd->add_option(
         "--tp", job->tp,
         "tensor parallelism: ranks per engine (under mpirun; serve ranks form engines of --tp consecutive ranks)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--advertise-host", job->advertise_host,
                  "host or IP that other ranks dial when --bind uses 0.0.0.0 or * (default: first non-loopback IPv4)");
  add_server_security_options(cmd, job->security);
  add_call_limit_options(cmd, job->limits);
  cmd->add_option("--weights-root", job->weights_roots,
                  "folder a disk update may read under (repeatable; default: the parent of --model)")
      ->check(CLI::ExistingDirectory);
  cmd->callback([job] {
    if (int rc = run_serve(*job); rc != 0) throw CLI::RuntimeError(rc);
  });
}

void add_client(CLI::App& app) {
  auto job = std::make_shared<ClientJob>();
  CLI::App* cmd = app.add_subcommand("client", "send a JSONL file of generate requests to a server");
  cmd->add_option("--connect", job->connect, "server endpoint")->required();
  cmd->add_option("--input", job->input, "input JSONL (as for generate)")->required();
  cmd->add_option("--output", job->output, "output JSONL (as for generate)")->required();
  cmd->add_option("--concurrency", job->concurrency, "requests in flight")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--timeout", job->timeout_s, "seconds per request")->capture_default_str();
  add_client_security_options(cmd, job->security);
  cmd->add_option("--log-level", job->log_level)->capture_default_str();
  cmd->callback([job] {
    if (int rc = run_client(*job); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace zr::cli
