// Internal to comm/mpi_group*.cpp (the only files that include mpi.h): the group's state and the
// helpers the group and the bucket pipeline share. Not for other layers.
#pragma once

#include <mpi.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_group.h"

namespace zr {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace mpi_detail {
// The pull form's agreement (comm/mpi_bcast_pull.cpp): the MPI buffers of its small collectives.
// Held by the group, not on a stack: a timed-out agreement leaves them posted (drain()), and MPI
// may still write into them later.
struct PullAgreement {
  struct Offer {
    int64_t pid = 0;
    uint64_t bytes = 0;   // of the transfer
    int64_t regions = 0;  // how many PullRegions follow (a second broadcast)
    int64_t offered = 0;
  } offer;
  struct Region {
    uint64_t addr = 0;  // in the root; 0: `bytes` zero bytes (padding between pieces)
    uint64_t bytes = 0;
  };
  std::vector<Region> regions;  // the transfer laid end to end
  int mine = 0, all = 0;        // MPI_MIN over "this rank wants and may pull"
};
}  // namespace mpi_detail

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
  // The pull agreement's buffers (leaked with the ring when broadcasts stay pending).
  std::unique_ptr<mpi_detail::PullAgreement> agreement = std::make_unique<mpi_detail::PullAgreement>();
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

// How bcast_buckets cuts a transfer. Each bucket (bucket_bytes) moves as segments of at most
// kSegmentBytes, one MPI_Ibcast each; segments never cross a bucket's end. Every rank keeps at most
// window() segments posted and not yet consumed: the same number everywhere, so what a rank that
// fails has posted is what its peers post first (drain() relies on it). The cut is the same on
// every rank (message sizes must match); where a receiver lands a segment is its own choice:
//  - through the ring, when it has a core for each of its two threads (see use_ring): kRingSlots
//    slots that stay in the cache; the caller copies each slot into the destination with streaming
//    stores and verifies it from the slot: one DRAM read and one DRAM write per byte, like a plain
//    MPI_Bcast. Receiving in place and checksumming there reads every byte from DRAM a second time:
//    on a 2-core host np=2 reached 81-92% of one MPI_Bcast that way, 95-105% through the ring
//    (bench/bench_weight_sync.cpp).
//  - in place (into the destination), when cores are short: ring and copy cost CPU time that an
//    oversubscribed host does not have (np=4 on 2 cores: 75-88% through the ring, 105-124% in
//    place; one core per rank, mpirun's default binding: ~71% vs ~79%).
inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Transfers this large pull by default (ReceiveMode::automatic) where they can; smaller ones take
// the pipeline without the agreement's two extra collectives.
constexpr size_t kPullMinBytes = size_t{1} << 20;

constexpr size_t kSegmentBytes = size_t{2} << 20;
constexpr size_t kRingSlots = 4;

struct SegmentPlan {
  size_t bytes;
  size_t bucket;
  bool ring;  // this rank receives through the ring (never on the root)
  size_t segment = std::min({bucket, kSegmentBytes, (bytes + 63) / 64 * 64});
  size_t per_bucket = (bucket + segment - 1) / segment;
  size_t buckets() const { return (bytes + bucket - 1) / bucket; }
  size_t segments_in(size_t b) const { return (std::min(bucket, bytes - b * bucket) + segment - 1) / segment; }
  size_t count() const { return (buckets() - 1) * per_bucket + segments_in(buckets() - 1); }
  size_t bucket_of(size_t s) const { return s / per_bucket; }
  // Where segment s lands in a ring of kRingSlots slots.
  char* slot(char* ring_buf, size_t s) const { return ring_buf + (s % kRingSlots) * segment; }
  size_t offset(size_t s) const { return bucket_of(s) * bucket + (s % per_bucket) * segment; }
  size_t length(size_t s) const {
    size_t end = std::min(bytes, (bucket_of(s) + 1) * bucket);
    return std::min(segment, end - offset(s));
  }
  // Posted and not yet consumed, at most, on every rank (receiving through the ring or not): two
  // buckets, and no more than the ring has slots.
  size_t window() const { return std::min(kRingSlots, 2 * per_bucket); }
};

// "bucket 3/8 (64 MiB at offset ...)" when a bucket is one segment, else
// "bucket 3/8, segment 5/32 (2 MiB at offset ...)": how deadlines name a stalled segment.
inline std::string segment_name(const SegmentPlan& plan, size_t s) {
  std::string t = "bucket " + std::to_string(plan.bucket_of(s) + 1) + "/" + std::to_string(plan.buckets());
  if (size_t in = plan.segments_in(plan.bucket_of(s)); in > 1)
    t += ", segment " + std::to_string(s % plan.per_bucket + 1) + "/" + std::to_string(in);
  return t + " (" + size_text(plan.length(s)) + " at offset " + std::to_string(plan.offset(s)) + ")";
}

// Whether this receiver lands segments through the ring: it needs a core for each of its two
// threads, and so does every other receiver on this host (the root's thread mostly sleeps).
inline bool use_ring(const std::vector<char>& on_this_host, int root) {
#ifdef __linux__
  cpu_set_t mask;
  if (pthread_getaffinity_np(pthread_self(), sizeof mask, &mask) != 0) return false;
  const long cores = CPU_COUNT(&mask);
#else
  const long cores = static_cast<long>(std::thread::hardware_concurrency());
#endif
  long receivers = std::count(on_this_host.begin(), on_this_host.end(), char{1});
  if (root >= 0 && static_cast<size_t>(root) < on_this_host.size() && on_this_host[static_cast<size_t>(root)])
    --receivers;
  return cores >= 2 && cores >= 2 * std::max(1L, receivers);
}

// Through the ring, a receiver's two threads each keep a core busy (the helper copies segments
// in, inside MPI; the caller copies them out and verifies them), so they must not share one: when
// they did (the scheduler's wake-up placement does that on its own now and then), np=2 fell from
// ~95% to 50-65% of one MPI_Bcast. For the duration of a receive, receiver number i on this host
// (by rank, the root not counted) runs its caller on core 2i and its helper on core 2i+1 of its
// affinity mask (counted modulo the mask's size); the caller's mask is restored afterwards.
// use_ring() chose the ring only if the mask has two cores per receiver on the host.
class SplitCores {
 public:
  SplitCores(const std::vector<char>& on_this_host, int rank, int root) {
#ifdef __linux__
    if (pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) != 0 || CPU_COUNT(&saved_) < 2) return;
    std::vector<int> cpus;
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &saved_)) cpus.push_back(c);
    size_t index = 0;  // among this host's receivers
    for (int r = 0; r < rank && static_cast<size_t>(r) < on_this_host.size(); ++r)
      index += on_this_host[static_cast<size_t>(r)] && r != root;
    cpu_set_t mine;
    CPU_ZERO(&mine);
    CPU_SET(cpus[(2 * index) % cpus.size()], &mine);
    CPU_ZERO(&helper_);
    CPU_SET(cpus[(2 * index + 1) % cpus.size()], &helper_);
    active_ = pthread_setaffinity_np(pthread_self(), sizeof mine, &mine) == 0;
#else
    (void)on_this_host, (void)rank, (void)root;
#endif
  }
  ~SplitCores() {
#ifdef __linux__
    if (active_) (void)pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
#endif
  }
  SplitCores(const SplitCores&) = delete;
  SplitCores& operator=(const SplitCores&) = delete;

  // Called on the helper thread.
  void place_helper() const {
#ifdef __linux__
    if (active_) (void)pthread_setaffinity_np(pthread_self(), sizeof helper_, &helper_);
#endif
  }

 private:
#ifdef __linux__
  cpu_set_t saved_{};
  cpu_set_t helper_{};
#endif
  bool active_ = false;
};

}  // namespace mpi_detail
}  // namespace zr
