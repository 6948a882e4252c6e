// MpiGroup: an MPI communicator with the few collectives zrollout needs (cluster mode, DESIGN.md):
// start-up endpoint exchange, split by role, barrier, float allreduce (tensor parallelism), small
// metadata broadcast, and the weight path: a pipelined, bucketed broadcast with a deadline.
// No MPI type appears here (mpi.h is included by comm/mpi_group_internal.h only, for
// comm/mpi_group.cpp and comm/mpi_bcast_buckets.cpp).
//
// Ownership: move-only RAII. init() returns the world group; its destructor calls MPI_Finalize
// (once, and only if init() called MPI_Init_thread). MPI_Finalize waits for every rank of the job,
// so when one died it would hang: after 10 s the process exits (code 0, a warning logged) instead. split() returns sub-groups owning their
// communicator (freed by the destructor). Destroy every sub-group before the world group.
//
// Thread-safety: a group is not thread-safe: one thread at a time calls into it, and collectives
// on one group are called in the same order on every member (MPI's rule). bcast_buckets runs its
// MPI calls on a helper thread while the caller runs on_segment, which needs MPI_THREAD_SERIALIZED;
// using *different* groups from different threads at the same time needs MPI_THREAD_MULTIPLE:
// check thread_level().
//
// Errors: MPI errors come back as Status (communicators use MPI_ERRORS_RETURN), code unavailable
// with MPI's error string. Deadlines: only bcast_buckets (and drain) take one; the other
// collectives block like MPI does.
//
// Poisoning: MPI cannot cancel a collective. After bcast_buckets fails (timeout, or on_segment
// threw) this rank has broadcasts posted that its peers may never match, so the communicator is out
// of step and must not be reused: the group is poisoned() and every later collective on it returns
// unavailable. The posted broadcasts still own the buffer: MPI may write into it (receivers in
// place) or read it (root) until they complete, so keep `data` alive until drain() returns ok or
// the process ends (a receiver through its ring only has the group's ring written, which the group
// keeps). Ways out: drain(timeout) (completes the
// posted broadcasts if the root catches up late), then drop the group; or abort_group() to end the
// whole MPI job (the launcher restarts it). A group destroyed with undrained broadcasts leaks its
// communicator (a sub-group) and its receive ring on purpose (freeing them is unsafe).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/status.h"

namespace zr {

class MpiGroup {
 public:
  enum class ThreadLevel { single, funneled, serialized, multiple };
  static constexpr size_t kDefaultBucketBytes = size_t{64} << 20;
  static constexpr int kNoColor = -1;  // split(): this rank joins no sub-group

  // MPI_Init_thread asking for MPI_THREAD_MULTIPLE; fails (unsupported) below SERIALIZED. If MPI
  // was already initialized by someone else, wraps MPI_COMM_WORLD and never finalizes. A second
  // init() while a world group is alive fails (invalid_argument).
  static Result<MpiGroup> init(int* argc, char*** argv);

  MpiGroup();  // an invalid (empty) group, like a kNoColor split result
  MpiGroup(MpiGroup&& other) noexcept;
  MpiGroup& operator=(MpiGroup&& other) noexcept;
  MpiGroup(const MpiGroup&) = delete;
  MpiGroup& operator=(const MpiGroup&) = delete;
  ~MpiGroup();

  bool valid() const;                // false for a moved-from group or a kNoColor split result
  int rank() const;                  // in this group (-1 if !valid())
  int size() const;                  // of this group (0 if !valid())
  int world_rank() const;            // this process in MPI_COMM_WORLD
  ThreadLevel thread_level() const;  // what MPI provided
  static const char* thread_level_name(ThreadLevel level);

  // Collective over this group: ranks with the same color form a sub-group, ordered by (key,
  // rank). color kNoColor (or any negative) gives an invalid (empty) group to this rank.
  Result<MpiGroup> split(int color, int key);

  // Collective: every rank contributes `local`; every rank gets all of them, indexed by rank.
  // Used at start-up so every rank learns each rank's ZeroMQ endpoint and role.
  Result<std::vector<std::string>> allgather_strings(const std::string& local);

  Status barrier();

  // In-place sum of n floats over the group (tensor-parallel partial sums).
  Status allreduce_sum(float* data, size_t n);

  // Root's `value` replaces `value` on every other rank (metadata: update_weights headers).
  Status bcast_small(std::string& value, int root);
  // bcast_small for a receiver that may wait long (a tensor-parallel follower between steps):
  // spins briefly, then sleeps in steps growing up to `max_sleep`, so an idle wait costs no core.
  // still_wanted (optional) is asked about once a second while the broadcast is stuck; false ends
  // the wait with unavailable (on a receiver: the root's process is gone; on the root: a receiver's
  // is, and the root cannot finish sending). The broadcast stays posted: the caller must not use
  // the group again (it is poisoned).
  Status bcast_small_idle(std::string& value, int root, std::chrono::microseconds max_sleep,
                          const std::function<bool()>& still_wanted = {});

  // Every rank sends `bytes` bytes; `out` (size() * bytes) receives them by rank on every rank.
  // still_wanted: as for bcast_small_idle (asked once a second while the collective is stuck).
  // These two use MPI's nonblocking collectives on every rank (they never match blocking ones).
  Status allgather_bytes(const void* in, size_t bytes, void* out, const std::function<bool()>& still_wanted = {});
  // Rank r sends counts[r] bytes; root receives them concatenated by rank in `out` (ignored on the
  // other ranks).
  Status gather_bytes(const void* in, const std::vector<size_t>& counts, void* out, int root,
                      const std::function<bool()>& still_wanted = {});

  // on_segment(offset, length, bytes): bytes [offset, offset + length) of the transfer are complete
  // on this rank (received, or on the root sent) and may be read, at `bytes`; data + offset holds
  // them too. A receiver that lands segments through its receive ring passes the ring's slot, still
  // in the cache: read them there (e.g. checksum), not from `data`, which costs a DRAM read.
  // Otherwise bytes == data + offset.
  using SegmentCallback = std::function<void(size_t offset, size_t length, const void* bytes)>;

  // Collective: broadcasts `bytes` bytes at `data` from `root` to every rank. Where every rank
  // shares one host, receivers by default copy the bytes out of the root's memory themselves (the
  // pull form, ReceiveMode below), with the same segments, on_segment calls, trailer and deadlines;
  // otherwise the pipeline described here runs. The transfer is cut
  // into buckets of bucket_bytes (a multiple of 64, at most 1 GiB); a bucket moves as segments of
  // at most 2 MiB, one MPI_Ibcast each (a smaller bucket is one segment). Every rank keeps at most
  // 4 segments (or two buckets, if smaller) posted and not yet consumed; segment k+1 arrives while
  // on_segment(k) runs. A receiver with a core for each of its two threads (and as many for every
  // other receiver on its host) lands segments in a ring of 4 slots owned by the group, which stays
  // in the (L3) cache, and copies each into `data` with streaming stores, so a verified broadcast
  // costs the memory traffic of an unverified one; its two threads are pinned to two cores of its
  // affinity mask meanwhile. Otherwise it receives in place.
  // on_segment is called on the calling thread, in order, once per segment, on every rank (root
  // included); it must not throw (if it does: the group is poisoned, the exception propagates).
  // All ranks pass the same bytes, root and bucket_bytes.
  // Deadline: `timeout` bounds every wait for progress (the next segment completing, counted from
  // the previous one or from the call): a stalled transfer fails within `timeout` of stalling with
  // ErrorCode::timeout, e.g. "broadcast of bucket 3/8, segment 5/32 (2 MiB at offset 142606336)
  // from rank 0 did not complete within 30000 ms", and the group is poisoned (see above). A
  // transfer that keeps moving never times out, however large. Never hangs: the call returns by
  // then.
  // Trailer (optional, at most kMaxTrailerBytes; every rank passes the same size): one more
  // broadcast of `trailer` from the root after the segments, posted on each rank once its
  // on_segment returned for the last segment. The root fills it by then (in that call: e.g. the
  // checksums of what it sent, so they need no pass over the bytes before the first goes out);
  // receivers find it there when the call returns ok. A stalled trailer times out like a segment
  // ("the trailer (N bytes)"). Nothing is sent when bytes is 0, the trailer neither.
  static constexpr size_t kMaxTrailerBytes = size_t{1} << 30;
  Status bcast_buckets(void* data, size_t bytes, int root, size_t bucket_bytes = kDefaultBucketBytes,
                       std::chrono::milliseconds timeout = std::chrono::milliseconds(30000),
                       const SegmentCallback& on_segment = {}, std::span<std::byte> trailer = {});

  // The root's side of bcast_buckets when its bytes do not lie in one buffer: `pieces`, laid end to
  // end in order, are the transfer (pulled: the receivers read each piece where it lies) (a trainer's tensors where the caller holds them, with null
  // pieces for the zero padding between them). A segment inside one piece is sent from it in place,
  // with no copy; one that spans pieces is first assembled in a scratch slot (one per posted
  // segment, 2 MiB each, so it stays in the cache). The other ranks call bcast_buckets with the sum
  // of the pieces' sizes and the same root and bucket_bytes: the messages match byte for byte.
  // The root only (invalid_argument on another rank); pieces must stay unchanged until it returns.
  // on_segment and trailer as for bcast_buckets: on_segment's `bytes` are where the segment was
  // sent from (the piece, or the scratch slot it was assembled in: still in the cache).
  struct RootPiece {
    const void* data = nullptr;  // null: `bytes` zero bytes
    size_t bytes = 0;
  };
  Status bcast_buckets_from(std::span<const RootPiece> pieces, int root, size_t bucket_bytes = kDefaultBucketBytes,
                            std::chrono::milliseconds timeout = std::chrono::milliseconds(30000),
                            const SegmentCallback& on_segment = {}, std::span<std::byte> trailer = {});

  // How this rank's bcast_buckets receives (every rank of the group sets the same mode, the root
  // too; only ring and in_place may be mixed).
  // automatic (the default): pull where it can, else the pipeline. pull: when every rank shares
  // one host, the transfer is at least kPullMinBytes (explicit pull: any size) and each receiver
  // has two cores (use_ring), each receiver copies the transfer out of the root's memory with
  // process_vm_readv on its helper thread while its caller runs on_segment behind it
  // (comm/mpi_bcast_pull.cpp), from one buffer or from the root's pieces (bcast_buckets_from). The
  // ranks agree on it first (two or three small collectives); the pipeline runs instead when a
  // receiver may not read the root (ptrace rules) or ZR_NO_BCAST_PULL is set on any rank.
  // Deadlines name the first bucket while the agreement waits, as the pipeline's do. Unlike the
  // pipeline, a late peer cannot complete the transfer once the others timed out: both sides
  // fail with timeout (the agreement's buffers are the group's, so drain() is safe).
  // pipeline: the bucket pipeline, through the ring when every receiver on this host has two
  // cores, else in place. ring / in_place: the pipeline, forced either way.
  enum class ReceiveMode { automatic, ring, in_place, pull, pipeline };
  void set_receive_mode(ReceiveMode mode);
  // Whether a bcast_buckets from `root` would reach this rank through the ring (false on the root).
  bool receives_through_ring(int root) const;
  // Where the last bcast_buckets on this rank spent its time (wall seconds; always measured, a few
  // clock reads per 2 MiB segment). Caller thread: waiting for segments, copying them out of the
  // ring, in on_segment (e.g. checksums). Helper thread: inside MPI_Ibcast posts and MPI_Test
  // calls (where Open MPI's shared-memory transport does a receiver's copy from the root).
  struct BcastPhases {
    double total = 0, wait = 0, copy_out = 0, on_segment = 0;
    double post = 0, test = 0;
    size_t segments = 0;
    bool ring = false;
    bool pull = false;  // pulled: `post` is the helper's time in process_vm_readv, `copy_out` the caller's
  };
  const BcastPhases& last_bcast_phases() const;
  // How this rank's receive ring is backed ("2 MiB pages (100%)", "4 KiB pages"; "none" before a
  // broadcast through it allocated it), from /proc/self/smaps: for benchmark headers.
  std::string receive_ring_pages() const;

  // Collective: one plain blocking MPI_Bcast of the whole buffer (in 1 GiB pieces): no deadline, no
  // pipeline, hangs if a peer never calls. The baseline bcast_buckets is measured against
  // (bench/bench_weight_sync.cpp); prefer bcast_buckets for weights.
  Status bcast_blocking(void* data, size_t bytes, int root);

  // After a failed bcast_buckets: waits up to `timeout` for the broadcasts this rank had posted to
  // complete (ok: MPI no longer uses the buffer; timeout: it still may). The group stays poisoned.
  Status drain(std::chrono::milliseconds timeout);
  bool poisoned() const;
  const std::string& poison_reason() const;

  // ---- survivors (docs/cluster.md, Failures). Open MPI 4.1 has no ULFM: a communicator that
  // counts a dead (or stopped) rank never again completes a collective over all its ranks, and no
  // collective over it can tell the living who died. So the living learn it another way (the
  // trainer's liveness pings over ZeroMQ; it sends the member list with each broadcast update,
  // UpdateWeightsCall::group_epoch and group_ranks), and the broadcast runs over a sub-group
  // made by MPI_Comm_create_group, which only the members enter.
  //
  // The group for `epoch`: epoch 0 is this group itself (members empty or all ranks). Epoch > 0 is
  // the sub-group of `members` (ranks of this group, increasing, this rank among them): made on the
  // first call for that epoch, kept (owned by this group) and returned by later calls for it, and
  // dropped when another epoch is asked for. Every member asks for the same epoch with the same
  // members; epochs only grow. Allowed on a poisoned group: the creation is point-to-point among the
  // members, under its own tag, and does not meet the broadcasts left posted on this one.
  // Bounded: the creation runs on a helper thread. If a member does not enter it within `timeout`
  // (it died meanwhile), ErrorCode::timeout naming the missing ranks' epoch; the helper thread stays
  // blocked in MPI and is abandoned (Open MPI may then refuse to finish a later creation in this
  // process: restart the job).
  Result<MpiGroup*> survivors(uint64_t epoch, const std::vector<int>& members, std::chrono::milliseconds timeout);
  // The epoch of the group survivors() last returned (0: this group).
  uint64_t survivors_epoch() const;
  // MPI_COMM_WORLD ranks of these ranks of this group (for logs); -1 where out of range.
  std::vector<int> world_ranks_of(const std::vector<int>& ranks) const;

  // Ends the whole MPI job (MPI_Abort with `code`): the way out when a peer is stuck for good.
  [[noreturn]] void abort_group(int code);

  struct Impl;  // opaque (mpi.h types), defined in comm/mpi_group_internal.h

 private:
  explicit MpiGroup(std::unique_ptr<Impl> impl);
  Status usable(const char* what) const;
  // source (the root of bcast_buckets_from): where segment (offset, length) is, given a scratch
  // slot of one segment to assemble it in; data is null then.
  using SegmentSource = std::function<const char*(size_t offset, size_t length, char* scratch)>;
  Status run_bucket_pipeline(char* data, size_t bytes, int root, size_t bucket_bytes, std::chrono::milliseconds timeout,
                             const SegmentCallback& on_segment, std::span<std::byte> trailer,
                             const SegmentSource& source = {});

  // The pull form (comm/mpi_bcast_pull.cpp): whether the ranks try it for this transfer (the same
  // answer on every rank); whether this rank wants it; the agreement (all ranks; the root offers
  // `pieces`, the others pass none; the root's process and regions land in impl_->agreement); the
  // transfer (source: the root's segments when they are pieces, as for run_bucket_pipeline).
  bool pull_tried(size_t bytes) const;
  bool pull_wanted(int root) const;
  Result<bool> agree_on_pull(std::span<const RootPiece> pieces, size_t bytes, int root, size_t bucket_bytes,
                             std::chrono::milliseconds timeout);
  Status run_pull(char* data, size_t bytes, int root, size_t bucket_bytes, std::chrono::milliseconds timeout,
                  const SegmentCallback& on_segment, std::span<std::byte> trailer, const SegmentSource& source = {});

  std::unique_ptr<Impl> impl_;
};

}  // namespace zr
