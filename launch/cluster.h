// Cluster launch under mpirun (MPMD: `mpirun -np 1 zrollout trainer ... : -np K zrollout serve ...`).
// Every rank says its role and ZeroMQ endpoint once through MPI at start-up, so nobody types an
// address; the world communicator is the weight-sync group.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/mpi_group.h"
#include "comm/status.h"

namespace zr::cli {

// True when this process was started by mpirun (Open MPI or a PMI launcher).
bool under_mpirun();

// The endpoint other hosts should dial: a wildcard or 0.0.0.0 host is replaced by
// `advertise_host`, else by this host's first non-loopback IPv4 address.
std::string advertised_endpoint(const std::string& bound, const std::string& advertise_host);

struct ClusterRoles {
  std::vector<std::string> engine_endpoints;  // "serve" ranks, in rank order
  std::vector<int> engine_ranks;
  int trainer_rank = -1;
};

// Collective: every rank calls it once with its role ("trainer" | "serve") and endpoint ("" for
// the trainer).
Result<ClusterRoles> exchange_roles(MpiGroup& world, const std::string& role, const std::string& endpoint);

}  // namespace zr::cli
