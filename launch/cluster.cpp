#include "launch/cluster.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <sstream>

namespace zr::cli {

bool under_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE"); }

namespace {

// The IPv4 address of interface `name`, or of the first non-loopback interface when name is empty.
std::optional<std::string> interface_ipv4(const std::string& name) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return std::nullopt;
  std::optional<std::string> ip;
  for (ifaddrs* a = list; a && !ip; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, buf, sizeof buf);
    if (name.empty() ? std::string(buf).rfind("127.", 0) != 0 : name == a->ifa_name) ip = buf;
  }
  freeifaddrs(list);
  return ip;
}

}  // namespace

Result<std::string> advertised_endpoint(const std::string& bound, const std::string& advertise_host,
                                        const std::string& advertise_interface) {
  const std::string tcp = "tcp://";
  if (bound.rfind(tcp, 0) != 0) return bound;  // ipc:// and inproc:// are host-local anyway
  size_t colon = bound.rfind(':');
  std::string host = bound.substr(tcp.size(), colon - tcp.size());
  if (host != "0.0.0.0" && host != "*") return bound;
  if (!advertise_host.empty()) return tcp + advertise_host + bound.substr(colon);
  auto ip = interface_ipv4(advertise_interface);
  if (!ip && !advertise_interface.empty())
    return make_error(ErrorCode::invalid_argument,
                      "advertise-interface: no IPv4 address on interface '" + advertise_interface + "'");
  // A host with no network but loopback (a laptop, a CI container): only local peers can dial it.
  return tcp + ip.value_or("127.0.0.1") + bound.substr(colon);
}

bool local_only_endpoint(const std::string& endpoint) {
  if (endpoint.rfind("tcp://", 0) != 0) return true;  // inproc://, ipc://: this host only
  std::string host = endpoint.substr(6, endpoint.rfind(':') - 6);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  // "tcp://eth0:5555" or "tcp://*:5555" is reachable from elsewhere; only loopback names are local.
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0 || host == "lo";
}

CurveClientKeys engine_keys(const std::string& endpoint, const std::optional<JobKeys>& job,
                            const CurveClientKeys& explicit_keys) {
  if (explicit_keys.enabled()) return explicit_keys;
  if (job &&
      std::find(job->curve_endpoints.begin(), job->curve_endpoints.end(), endpoint) != job->curve_endpoints.end())
    return job->client_side();
  return {};
}

Status write_job_keys(const std::string& dir, const std::optional<JobKeys>& keys) {
  if (!keys || keys->client.secret_key.empty())
    return make_error(ErrorCode::unavailable, "keys-out: this job has no CURVE keys (no trainer rank under mpirun)");
  namespace fs = std::filesystem;
  const fs::path aside = fs::path(dir) / (".keys-out." + std::to_string(::getpid()));
  ZR_RETURN_IF_ERROR(write_curve_public_cert((aside / "server").string(), keys->server.public_key));
  ZR_RETURN_IF_ERROR(write_curve_cert((aside / "client").string(), keys->client));
  std::error_code ec;
  for (const char* name : {"server.key", "client.key", "client.key_secret"}) {  // the secret last: all are whole
    fs::rename(aside / name, fs::path(dir) / name, ec);
    if (ec) return make_error(ErrorCode::io_error, "keys-out: cannot write " + (fs::path(dir) / name).string());
  }
  fs::remove_all(aside, ec);
  return {};
}

Result<ClusterPlan> plan_cluster(MpiGroup& world, const std::string& role, int tp) {
  std::string mine = role + " " + std::to_string(tp);
  if (role == "trainer") {         // the job's keys ride along (Z85 has no spaces)
    for (int k = 0; k < 3; ++k) {  // server, trainer, client
      auto pair = make_curve_keypair();
      if (!pair.ok()) break;
      mine += " " + pair->public_key + " " + pair->secret_key;
    }
  }
  auto all = world.allgather_strings(mine);
  if (!all.ok()) return all.status();
  ClusterPlan plan;
  int serve = 0, tp_all = 0;
  for (int r = 0; r < static_cast<int>(all->size()); ++r) {
    std::istringstream in((*all)[r]);
    std::string what;
    int t = 1;
    in >> what >> t;
    if (what == "trainer") {
      plan.trainer_rank = r;
      JobKeys k;
      if (in >> k.server.public_key >> k.server.secret_key >> k.trainer.public_key >> k.trainer.secret_key >>
          k.client.public_key >> k.client.secret_key)
        plan.keys = k;
      continue;
    }
    if (what != "serve") continue;
    if (tp_all == 0) tp_all = t;
    if (t != tp_all)
      return make_error(ErrorCode::invalid_argument, "tp: every serve rank must give the same --tp (rank " +
                                                         std::to_string(r) + " gave " + std::to_string(t) + ", not " +
                                                         std::to_string(tp_all) + ")");
    if (r == world.rank()) {
      plan.engine = serve / t;
      plan.tp_rank = serve % t;
    }
    ++serve;
  }
  plan.tp_size = std::max(tp_all, 1);
  if (serve % plan.tp_size != 0)
    return make_error(
        ErrorCode::invalid_argument,
        "tp: " + std::to_string(serve) + " serve ranks are not a multiple of --tp " + std::to_string(plan.tp_size));
  plan.num_engines = serve / plan.tp_size;
  return plan;
}

Result<MpiGroup> split_engines(MpiGroup& world, const ClusterPlan& plan) {
  return world.split(plan.engine >= 0 ? plan.engine : MpiGroup::kNoColor, world.rank());
}

Result<ClusterRoles> exchange_endpoints(MpiGroup& world, const ClusterPlan& plan, const std::string& endpoint,
                                        bool curve) {
  const bool leader = plan.engine >= 0 && plan.tp_rank == 0;
  auto all = world.allgather_strings(leader ? endpoint : std::string());
  if (!all.ok()) return all.status();
  auto roles = world.allgather_strings(leader ? (curve ? "leader curve" : "leader") : "-");
  if (!roles.ok()) return roles.status();
  const bool in_weights = plan.engine >= 0 || world.rank() == plan.trainer_rank;
  auto weights = world.split(in_weights ? 0 : MpiGroup::kNoColor, world.rank());
  if (!weights.ok()) return weights.status();
  ClusterRoles out;
  out.weight_group = std::move(weights).value();
  out.trainer_rank = plan.trainer_rank;
  out.keys = plan.keys;
  for (int r = 0; r < static_cast<int>(all->size()); ++r) {
    if ((*roles)[r].rfind("leader", 0) != 0) continue;
    if ((*roles)[r] == "leader curve" && out.keys) out.keys->curve_endpoints.push_back((*all)[r]);
    out.engine_endpoints.push_back((*all)[r]);
    out.engine_ranks.push_back(r);
  }
  return out;
}

Result<ClusterRoles> exchange_roles(MpiGroup& world, const std::string& role, const std::string& endpoint) {
  auto plan = plan_cluster(world, role, 1);
  if (!plan.ok()) return plan.status();
  auto group = split_engines(world, *plan);
  if (!group.ok()) return group.status();
  return exchange_endpoints(world, *plan, endpoint);
}

}  // namespace zr::cli
