#include "python/native/mpi_session.h"

#include <spdlog/spdlog.h>

#include <memory>
#include <mutex>
#include <optional>

#include "launch/cluster.h"

namespace zr::python {

namespace {

struct State {
  std::mutex mu;
  bool finalized = false;
  std::optional<MpiGroup> world;
  std::optional<cli::ClusterRoles> roles;  // its weight_group is destroyed before the world
};

State& state() {
  static State* s = new State();  // never destroyed: finalize() ends MPI at a chosen time, not at unload
  return *s;
}

}  // namespace

bool under_mpirun() { return cli::under_mpirun(); }

CurveClientKeys engine_keys_for(const std::string& endpoint) {
  State& s = state();
  std::lock_guard lock(s.mu);
  if (!s.roles) return {};
  return cli::engine_keys(endpoint, s.roles->keys);
}

Status write_job_keys(const std::string& dir) {
  State& s = state();
  std::lock_guard lock(s.mu);
  if (!s.roles) return make_error(ErrorCode::unavailable, "keys_out: join the mpirun job first (from_mpi)");
  return cli::write_job_keys(dir, s.roles->keys);
}

Result<MpiSession> session() {
  State& s = state();
  std::lock_guard lock(s.mu);
  if (s.finalized) return make_error(ErrorCode::unavailable, "MPI: already finalized in this process");
  if (!s.roles) {
    if (!cli::under_mpirun())
      return make_error(ErrorCode::unavailable,
                        "MPI: this process was not started by mpirun (mpirun -np 1 python3 train.py : -np K zrollout "
                        "serve ...)");
    auto w = MpiGroup::init(nullptr, nullptr);
    if (!w.ok()) return make_error(w.status().code, "MPI: " + w.status().message);
    s.world.emplace(std::move(w).value());
    auto r = cli::exchange_roles(*s.world, "trainer", "");
    if (!r.ok()) return make_error(r.status().code, "MPI endpoint exchange: " + r.status().message);
    s.roles.emplace(std::move(r).value());
    spdlog::info("rank {}: {} engine(s) found through MPI", s.world->world_rank(), s.roles->engine_endpoints.size());
  }
  MpiSession out;
  out.world_rank = s.world->world_rank();
  out.world_size = s.world->size();
  out.engine_endpoints = s.roles->engine_endpoints;
  out.engine_ranks = s.roles->engine_ranks;
  out.weight_group = &s.roles->weight_group;
  return out;
}

void finalize() {
  State& s = state();
  std::lock_guard lock(s.mu);
  if (s.finalized) return;
  s.finalized = true;
  s.roles.reset();  // sub-groups before the world (comm/mpi_group.h)
  s.world.reset();  // MPI_Finalize, if MpiGroup::init called MPI_Init
}

}  // namespace zr::python
