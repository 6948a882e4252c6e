// TpGroup: the MPI ranks of one tensor-parallel engine (rank 0 leads). It is the TpComm the
// sharded forward uses (model/tp.h) and the leader's command channel to its followers: the leader
// owns the ZeroMQ endpoint, the scheduler and the sampler, and before each forward broadcasts the
// step's plan (tokens, positions, KV block tables, copy-on-write copies); followers replay it on
// their shard. Weight updates, commits and memory release travel the same ordered channel, so every
// rank of the engine commits a version between the same two steps.
//
// Failure: a collective that fails mid-step leaves the ranks out of step for good (MPI cannot
// cancel), so TpGroup logs the error and ends the process (MPI_Abort of the job, exit code 70). The
// router sees the engine stop answering heartbeats and re-routes its requests.
// Thread-safety: one thread (the engine thread on the leader, the follower loop) uses a TpGroup.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "comm/messages.h"
#include "comm/mpi_group.h"
#include "model/kv_cache.h"
#include "model/tp.h"
#include "model/transformer.h"
#include "model/weights.h"

namespace zr {

struct TpCommand {
  enum class Kind : int {
    forward = 1,   // ints: the step plan (encode_forward)
    commit,        // version: swap in the staged weights of this version
    stage,         // blob: the update_weights call body (msgpack), relayed from the engine's endpoint
    stage_result,  // version: every follower reports its staging outcome (gather_strings)
    drop_staged,   // version: an update failed on some rank; drop it
    release,       // ints: [weights, kv_cache]
    resume,        // ints: [weights, kv_cache]; version: the serving version
    checksum,      // blob: tensor names, '\n'-separated (empty: all); followers answer via gather_strings
    shutdown,
  };
  Kind kind = Kind::shutdown;
  int64_t version = 0;
  std::vector<int32_t> ints;
  std::string blob;
};

// A decoded forward plan; chunks point into this object's storage.
struct ForwardPlan {
  std::vector<std::pair<int, int>> copies;  // KV block copies (src, dst) to apply first
  std::vector<std::vector<int>> tokens, tables;
  std::vector<SeqChunk> chunks;
};
std::vector<int32_t> encode_forward(std::span<const SeqChunk> chunks, const std::vector<std::pair<int, int>>& copies);
Result<ForwardPlan> decode_forward(const std::vector<int32_t>& ints);

class TpGroup final : public TpComm {
 public:
  explicit TpGroup(MpiGroup group);
  TpShard shard() const override { return {group_.rank(), group_.size()}; }
  bool leader() const { return group_.rank() == 0; }

  // TpComm: deterministic sum (allgather, then a rank-ordered sum on every rank).
  void allreduce_sum(float* data, size_t n) override;
  void gather_to_leader(const float* local, std::span<const size_t> counts, float* out) override;

  // Leader: one command to every follower.
  void send(const TpCommand& cmd);
  // Follower: the next command; waits without burning a core while the leader is idle.
  TpCommand receive();
  // Asked once a second while this rank waits on the others (a follower between steps, any rank
  // inside a collective); false means a peer is gone (a follower's leader, a leader's follower),
  // and the process exits (code 3) rather than wait forever: its engine is lost, the rest of the
  // job goes on (no MPI_Abort).
  void set_peers_alive(std::function<bool()> check) { peers_alive_ = std::move(check); }
  // Every rank contributes a string; every rank gets all of them by rank.
  std::vector<std::string> gather_strings(const std::string& local);
  MpiGroup& mpi() { return group_; }

  // Time this rank spent inside each kind of collective (for benchmarks: the allreduce share).
  struct Stats {
    double allreduce_s = 0, gather_s = 0, command_s = 0;
    int64_t allreduce_calls = 0;
    uint64_t allreduce_bytes = 0;  // payload per rank (n floats), summed over calls
  };
  const Stats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  [[noreturn]] void fail(const Status& st, const char* what);
  [[noreturn]] void peer_gone();
  MpiGroup group_;
  std::vector<float> parts_;
  Stats stats_;
  std::function<bool()> peers_alive_;
};

// checksum64 of the bytes this rank serves for each named tensor (all when `names` is empty), and
// their text form for gather_strings.
std::vector<TensorChecksum> shard_checksums(const ModelWeights& w, const std::vector<std::string>& names,
                                            int tp_rank = 0);
std::string format_checksums(const std::vector<TensorChecksum>& sums);
std::vector<TensorChecksum> parse_checksums(const std::string& text, int tp_rank);

// A staging outcome as one line for gather_strings: "" when ok, else "<code> <message>".
std::string status_line(const Status& st);
Status status_from_line(const std::string& line);

}  // namespace zr
