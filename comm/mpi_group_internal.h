// Internal to comm/mpi_group*.cpp (the only files that include mpi.h): the group's state and the
// helpers the group and the bucket pipeline share. Not for other layers.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_group.h"

namespace zr {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct MpiGroup::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  bool is_world = false;
  bool finalize_on_destroy = false;  // init() called MPI_Init_thread
  int rank = -1;
  int size = 0;
  int world_rank = -1;
  ThreadLevel level = ThreadLevel::single;
  bool poisoned = false;
  std::string poison_reason;
  std::vector<MPI_Request> pending;  // broadcasts posted by a failed bcast_buckets, not completed
  std::vector<char> on_this_host;    // by rank: shares this process's host (MPI_COMM_TYPE_SHARED)
  ReceiveMode receive_mode = ReceiveMode::automatic;
  // bcast_buckets' receive ring (see SegmentPlan); pending broadcasts may still write into it.
  std::unique_ptr<char, void (*)(void*)> ring{nullptr, std::free};
  size_t ring_bytes = 0;
  BcastPhases phases;  // of the last bcast_buckets
  // survivors(): the sub-group of the latest epoch asked for (destroyed before this group).
  std::unique_ptr<MpiGroup> survivors;
  uint64_t survivors_epoch = 0;
  std::vector<int> survivor_members;
};

namespace mpi_detail {

// An MPI return code as a Status naming the call.
Status mpi_status(int rc, const std::string& what);
// "64 MiB", "1.50 MiB", "512 bytes".
std::string size_text(size_t b);
// Which ranks of `comm` share this process's host (collective over comm).
std::vector<char> ranks_on_this_host(MPI_Comm comm);

// Waiting for MPI: spin on MPI_Test first (MPI makes progress only inside its calls), yield the
// core once nothing moved for a while (oversubscribed hosts), sleep when a peer is clearly late.
class Backoff {
 public:
  void reset() { spins_ = 0; }
  void pause(Clock::duration idle) {
    if (++spins_ < 64) return;
    if (idle < milliseconds(50)) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(200));
  }

 private:
  int spins_ = 0;
};

}  // namespace mpi_detail
}  // namespace zr
