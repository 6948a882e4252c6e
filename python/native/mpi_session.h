// The MPI side of a Python trainer launched as `mpirun -np 1 python3 train.py : -np K zrollout
// serve ...`: this process is the trainer rank. It joins the start-up exchange every rank of the
// job runs (launch/cluster.h exchange_roles, the same as `zrollout trainer`), learns the engines'
// endpoints and keeps the weight group (trainer + serve ranks) that broadcast publishes use.
//
// Lifetime: one per process, created by the first session() and kept until finalize() (the
// Python package calls it at interpreter exit): MPI can be initialized only once per process. If
// MPI is already initialized (mpi4py imported first), the session wraps it and leaves
// MPI_Finalize to whoever initialized it; an mpi4py imported later finds MPI initialized and does
// not initialize it again.
// Thread-safety: session() and finalize() are serialized by a mutex; the groups themselves are
// used by one thread at a time (comm/mpi_group.h).
#pragma once

#include <string>
#include <vector>

#include "comm/curve_keys.h"
#include "comm/mpi_group.h"
#include "comm/status.h"

namespace zr::python {

struct MpiSession {
  int world_rank = -1;
  int world_size = 0;
  std::vector<std::string> engine_endpoints;  // one per engine, in rank order
  std::vector<int> engine_ranks;
  MpiGroup* weight_group = nullptr;  // owned by the session; the trainer is one of its ranks
};

// True when this process was started by mpirun.
bool under_mpirun();

// Initializes MPI and runs the exchange on the first call; later calls return the same session.
// Errors: not under mpirun (unavailable), MPI or exchange failures (naming them).
Result<MpiSession> session();

// The keys a trainer uses for the engine at `endpoint` in this job (launch/cluster.h engine_keys:
// the job's keys, made by this trainer rank, for an engine beyond loopback); disabled keys before
// a session exists or outside mpirun.
CurveClientKeys engine_keys_for(const std::string& endpoint);

// Writes the job's server.key and client key pair into `dir` (launch/cluster.h write_job_keys), for
// clients outside the job. Errors: no session yet (unavailable), write errors.
Status write_job_keys(const std::string& dir);

// Frees the weight group, then finalizes MPI if the session initialized it. Idempotent; a
// session() after it fails (MPI cannot start twice in a process).
void finalize();

}  // namespace zr::python
