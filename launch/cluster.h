// Cluster launch under mpirun (MPMD: `mpirun -np 1 zrollout trainer ... : -np K zrollout serve ...`).
// Every rank says its role and ZeroMQ endpoint once through MPI at start-up, so nobody types an
// address; the world communicator is the weight-sync group.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/curve_keys.h"
#include "comm/mpi_group.h"
#include "comm/status.h"

namespace zr::cli {

// True when this process was started by mpirun (Open MPI or a PMI launcher).
bool under_mpirun();

// The endpoint other hosts should dial: a wildcard or 0.0.0.0 host is replaced by
// `advertise_host`, else by the IPv4 address of `advertise_interface` (e.g. "eth1" on a host with
// several networks), else by this host's first non-loopback IPv4 address.
// Errors: the named interface has no IPv4 address.
Result<std::string> advertised_endpoint(const std::string& bound, const std::string& advertise_host,
                                        const std::string& advertise_interface = "");

// The job's CURVE keys: made fresh by the trainer rank at start-up and handed to every rank in
// plan_cluster's allgather, so nobody handles key files under mpirun. A serve or router rank
// bound beyond loopback serves with `server`, admits `trainer` as a trainer key and `client` as a
// client key; the trainer rank and a router rank reach the engines with `trainer`. `client` leaves
// the job only through write_job_keys (--keys-out), for clients outside the job.
struct JobKeys {
  CurveKeyPair server, trainer, client;
  std::vector<std::string> curve_endpoints;  // engines that serve with these keys (exchange_endpoints)
  CurveServerKeys server_side() const {
    CurveServerKeys k{server, {trainer.public_key}, {}};
    if (!client.public_key.empty()) k.client_keys.push_back(client.public_key);
    return k;
  }
  CurveClientKeys client_side() const { return {server.public_key, trainer}; }
};

// --keys-out DIR: writes DIR/server.key (the job's server public key) and DIR/client.key +
// DIR/client.key_secret (mode 0600), the client-role key pair, in zcert format, so a client
// outside the mpirun job (`zrollout client`, the Python client) can reach its engines and router
// bound beyond loopback. Each file appears whole (written aside, then renamed), client.key_secret
// last. Errors: io_error naming the file; unavailable when the job has no keys.
Status write_job_keys(const std::string& dir, const std::optional<JobKeys>& keys);

// True for inproc://, ipc:// and tcp:// on 127.0.0.0/8, ::1 or localhost (protected mode's test).
bool local_only_endpoint(const std::string& endpoint);
// The keys a trainer or router uses for the engine at `endpoint`: `explicit_keys` when given (flags),
// else the job's keys for an engine that said it serves with them (a serve rank bound beyond
// loopback), else none.
CurveClientKeys engine_keys(const std::string& endpoint, const std::optional<JobKeys>& job,
                            const CurveClientKeys& explicit_keys = {});

struct ClusterRoles {
  std::vector<std::string> engine_endpoints;  // one per engine (its leader's), in rank order
  std::vector<int> engine_ranks;              // the engines' leader ranks
  int trainer_rank = -1;
  std::optional<JobKeys> keys;  // from the trainer rank (none without one)
  // The weight-broadcast group: the trainer and every serve rank (TP followers included); other
  // roles (a router) get an invalid group. Destroy before the world group.
  MpiGroup weight_group;
};

// Who is who, from one allgather of each rank's role and --tp: the "serve" ranks, in rank order,
// form engines of tp consecutive ranks (serve ranks K must be a multiple of tp: K / tp engines).
struct ClusterPlan {
  int num_engines = 0;
  int engine = -1;  // this rank's engine (-1: not a serve rank)
  int tp_rank = 0;  // within its engine; 0 is the leader
  int tp_size = 1;
  int trainer_rank = -1;
  std::optional<JobKeys> keys;  // the trainer rank's fresh keys (none when the job has no trainer)
};

// Start-up sequence, collective over the world, called by every rank in this order:
//   1. plan_cluster(role, tp)
//   2. split_engines(plan): each engine's ranks get their TP group (others an invalid group)
//   3. exchange_endpoints(plan, endpoint): leaders give their endpoint, everyone learns them all
// exchange_roles() runs the three for a rank outside any engine (the trainer, a router).
// Roles: "trainer" | "serve" | "router" (a standalone router that finds the engines this way).
Result<ClusterPlan> plan_cluster(MpiGroup& world, const std::string& role, int tp);
Result<MpiGroup> split_engines(MpiGroup& world, const ClusterPlan& plan);
// `curve`: this leader serves with the job's keys (the others learn it with the endpoint).
Result<ClusterRoles> exchange_endpoints(MpiGroup& world, const ClusterPlan& plan, const std::string& endpoint,
                                        bool curve = false);
Result<ClusterRoles> exchange_roles(MpiGroup& world, const std::string& role, const std::string& endpoint);

}  // namespace zr::cli
