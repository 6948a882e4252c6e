// Trainer: the trainer side of the RL loop. Drives rollouts on engines (generate batches, collect
// results) and publishes weights under new integer versions: tensors held in memory (the Python
// trainer's state_dict, through python/zrollout/native), or all tensors of a checkpoint folder, or
// a subset by name.
//
// Every call to the engines goes through an embedded Router (actors/router/router.h): requests are
// balanced by load, and an engine that stops answering heartbeats is declared dead (a warning
// "engine K (endpoint) stopped answering heartbeats: N requests re-routed"), its requests finish
// on the others with their partial output kept, engines() reports it, and publishes skip it. The
// router is driven as RouterActor's is (RouterDriver on an Actor of the process's context), but
// only inside the Trainer's calls (generate, publish, ...), on the calling thread: liveness is
// watched while the trainer waits for engines, and a pause between two calls is never taken for
// an engine's silence.
// Ownership: the Context must outlive the Trainer.
// Thread-safety: one thread at a time uses a Trainer (not always the same: Python's publisher
// holds a lock).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "actors/router/router.h"
#include "actors/router_driver.h"
#include "comm/ipc_pull.h"
#include "comm/messages.h"
#include "comm/mpi_group.h"
#include "comm/shm_segment.h"
#include "comm/status.h"
#include "runtime/actor.h"
#include "runtime/context.h"

namespace zr {

class SafetensorsArchive;

// A tensor the caller holds in memory, published from where it lies: the transfer itself is the
// only read of its bytes (ipc: copied into the segment and checksummed on the way; broadcast: into
// the transfer buffer; disk: into the file). Not owned: `data` must stay valid and unchanged until
// publish returns.
struct TensorRef {
  std::string name;   // Hugging Face name, e.g. "model.layers.0.mlp.up_proj.weight"
  std::string dtype;  // "F32" | "BF16" | "F16"
  std::vector<int64_t> shape;
  const void* data = nullptr;  // nbytes contiguous little-endian bytes (null only if nbytes 0)
  uint64_t nbytes = 0;         // numel(shape) * dtype size
  // The caller's checksum64 of the bytes (e.g. computed where the tensor was made). Given: the
  // engines verify what they receive against it instead of against the trainer's own checksum of
  // what it sent, so a tensor damaged before the publish is refused (checksum_mismatch naming it).
  std::optional<uint64_t> checksum;
};

// How the ipc path moves the bytes to engines on this host (README, weight sync):
//  segment: a POSIX shared-memory segment the engines map and serve from in place (fast where
//           shmem THP gives it 2 MiB pages; in 4 KiB pages every fresh mapping costs ~1.5 us/page);
//  pull:    the engines copy the caller's tensors straight out of the trainer's memory with
//           process_vm_readv into staging buffers they backed ahead of need (comm/ipc_pull.h;
//           the tensors must stay unchanged until publish returns, as for every path); an engine
//           that may not (no ptrace access, seccomp) is sent a segment instead, and is not asked
//           to pull again;
//  automatic: segment when shmem THP is available, else pull. ZR_IPC_MODE=pull|segment in the
//           environment overrides automatic. The choice and why is logged once per trainer.
enum class IpcMode { automatic, pull, segment };

struct PublishOptions {
  WeightPath path = WeightPath::ipc;  // ipc | disk (broadcast: publish_broadcast, under mpirun)
  InFlightPolicy in_flight = InFlightPolicy::drain;
  bool flush_cache = false;
  std::vector<std::string> only;  // publish only these tensors (empty: all)
  // ipc: write into a segment of an earlier publish that no engine serves from any more (the
  // engines kept their mappings), instead of a new one. Off: every publish creates, faults in and
  // has the engines map a new segment.
  bool reuse_segments = true;
  IpcMode ipc_mode = IpcMode::automatic;
  uint64_t bucket_bytes = uint64_t{64} << 20;  // broadcast
  // disk, tensors in memory: the folder to write (created if needed; it must be readable by the
  // engines, e.g. on this host or a shared file system): model.safetensors, and config.json copied
  // from engine 0's model folder when the folder has none (docs/protocol.md §8, disk folders).
  std::string disk_dir;
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
};

struct PublishResult {
  int64_t version = 0;
  uint64_t bytes = 0;
  double seconds = 0;                    // publish to last ack
  double liveness_seconds = 0;           // broadcast: before it, asking the engines whether they are alive
                                         // (up to the router's liveness window when one is silent)
  double write_seconds = 0;              // of which writing the bytes: ipc: copying and checksumming them into the
                                         // segment; broadcast: laying them out, before `seconds` starts (the
                                         // bytes are sent from where they lie, checksummed as they go); disk:
                                         // the file
  std::vector<TensorMeta> tensors;       // what was published, in transfer order, checksums filled in
  std::vector<UpdateWeightsReply> acks;  // one per engine that acked
  std::vector<int> acked;                // the engine of each ack
  std::vector<int> dead;                 // engines skipped (dead before) or lost during the publish
  std::string shm_segment;               // ipc: the segment read (engines that had lost their
                                         // mapping of a reused one: the fresh one they were sent)
  bool shm_reused = false;               // ipc: it was written by an earlier publish
  std::string ipc_mode;                  // ipc: "pull", "segment", or "pull+segment" (some engines
                                         // could not pull)
  std::string pages;                     // ipc: the pages the trainer's side really got (smaps),
                                         // e.g. "2 MiB pages (100%)", "4 KiB pages"
};

struct TrainerOptions {
  RouterOptions router;
  // The CURVE keys to reach the engine at `endpoint` (server key + a trainer keypair); unset or
  // disabled keys: plain connection. Under mpirun: the job's keys for engines beyond loopback.
  std::function<CurveClientKeys(const std::string& endpoint)> curve_for;
};

class Trainer {
 public:
  // Connects to every engine endpoint (tcp://, ipc://; inproc:// in the engines' process), with
  // sockets of the process's one context.
  static Result<std::unique_ptr<Trainer>> connect(Context& ctx, const std::vector<std::string>& endpoints,
                                                  TrainerOptions opt = {});
  ~Trainer();

  // Publishes the tensors of a checkpoint folder. ipc: one shared-memory segment (mode 0600,
  // unlinked once every engine acked) mapped by each engine on this host; the trainer and the
  // engines keep their mappings, and a later publish writes into a segment that no engine's ack
  // lists in shm_in_use (at most one idle segment is kept, so a trainer that pushes every version
  // in full holds two); an engine that lost its mapping (restarted) is sent a fresh segment
  // within the same publish. A segment an engine did not ack (refused, late, lost) counts as in
  // use by it until its next ack, so consecutive failed publishes hold one segment each.
  // disk: each engine reads the folder. Every live engine or an error naming the engine that refused. Engines already
  // dead are skipped, and one that dies during the publish is dropped: both are listed in `dead`
  // (the publish fails only when no engine is left). Each engine counts as updating (new
  // requests go elsewhere) until it acks.
  Result<PublishResult> publish(const std::string& checkpoint_dir, int64_t version, const PublishOptions& opt);
  // The same from tensors in memory (ipc as above; disk: writes opt.disk_dir, then each engine
  // reads it). Tensors are checked first (invalid_argument naming tensors[i] and its name: empty or
  // repeated name, unknown dtype, nbytes not matching dtype and shape, null data); recomputed
  // buffers (model/weights.h: rotary_emb.inv_freq) are skipped. The checkpoint form is a caller of
  // it with the folder's weights: the tensors its config.json's registry lists (others are left out).
  Result<PublishResult> publish(const std::vector<TensorRef>& tensors, int64_t version, const PublishOptions& opt);
  // Path broadcast: the engines are the other ranks of `group` (the trainer is the root); the
  // tensors go in pipelined MPI_Bcast buckets, each engine verifies them as they arrive. The
  // trainer keeps its transfer buffer (the size of the largest publish) for the next publish.
  // Survivors (docs/cluster.md, Failures): first every engine is asked for its weight version, and
  // one that stays silent for the router's liveness window (heartbeat interval x liveness; a
  // SIGSTOPped rank too) is declared dead. While an engine is dead, or after a failed broadcast,
  // the bytes go over a group re-formed over the trainer and the live engines' ranks (a new
  // epoch, MpiGroup::survivors; the warning names the ranks left out), and the dead engines are in
  // `dead`. The engines' ranks in `group` are taken to be its ranks other than the trainer's, in
  // order, engine after engine, all engines of one size (as launch/cluster.h forms it).
  Result<PublishResult> publish_broadcast(const std::string& checkpoint_dir, int64_t version, const PublishOptions& opt,
                                          MpiGroup& group);
  Result<PublishResult> publish_broadcast(const std::vector<TensorRef>& tensors, int64_t version,
                                          const PublishOptions& opt, MpiGroup& group);
  // Runs requests across the engines (one call per request, each to the least loaded live engine;
  // re-routed if its engine dies) and returns every sample, in request order.
  Result<std::vector<SampleOutput>> generate(const std::vector<GenerateRequest>& reqs,
                                             std::chrono::milliseconds timeout = std::chrono::minutes(10));
  Result<int64_t> weight_version(int engine = 0);
  // Asks every live engine to shut down (dead ones are skipped).
  Status shutdown_engines();
  size_t num_engines() const { return endpoints_.size(); }
  // Index, endpoint, alive, updating, requests in flight... of every engine, as the router sees them.
  std::vector<EngineState> engines() const { return router_.engines(); }
  // Engines updated by other means than publish: keep new requests off them meanwhile.
  void mark_updating(int engine, bool updating) { router_.mark_updating(engine, updating); }
  // ipc segments this trainer holds for later publishes (in use by an engine, or the one spare).
  size_t held_segments() const { return shm_pool_.size(); }

 private:
  // Tensors (filtered by `only`) laid out for a transfer (TensorMeta::offset); the bytes stay where
  // the caller holds them (src).
  struct Layout {
    std::vector<TensorMeta> metas;
    std::vector<const void*> src;
    std::vector<std::optional<uint64_t>> claimed;  // TensorRef::checksum of each
    uint64_t bytes = 0;
    // Sets each meta's checksum: the claimed one, else checksum64 of its bytes, computed by
    // `threads` threads, each over an equal share of the transfer (the ipc pull path: the
    // trainer checksums while the engines copy).
    void checksum(unsigned threads);
    // The transfer as the root of MpiGroup::bcast_buckets_from sends it: the tensors in place and
    // the zero padding between them.
    std::vector<MpiGroup::RootPiece> pieces() const;
  };
  static Result<Layout> layout(const std::vector<TensorRef>& tensors, const std::vector<std::string>& only);
  Result<PublishResult> publish_ipc(Layout& l, int64_t version, const PublishOptions& opt);
  // ipc through segments to the engines `to` (adds to res).
  Status publish_segment(Layout& l, int64_t version, const PublishOptions& opt, const std::vector<int>& to,
                         PublishResult& res);
  // ipc pull to the engines `to` (adds to res); those that cannot pull go to *cannot.
  Status push_pull(Layout& l, const UpdateWeightsCall& base, const std::vector<int>& to,
                   SteadyClock::time_point deadline, PublishResult& res, std::vector<int>* cannot);
  IpcMode resolve_ipc_mode(IpcMode asked);
  Result<PublishResult> publish_disk(Layout& l, int64_t version, const PublishOptions& opt);
  // disk: puts config.json into `dir` from engine 0's model folder unless it holds one.
  Status ensure_disk_config(const std::string& dir);
  // A fresh folder under the first --weights-root an engine reports (get_model_info), for a disk
  // publish without disk_dir.
  Result<std::string> temp_dir_under_weights_root();
  Result<ModelInfoReply> model_info(int engine);  // through the router, awaited
  Result<PublishResult> send_update(UpdateWeightsCall call, std::chrono::milliseconds timeout);
  // Sends update_weights to every live engine, or to those in `only` when given (dead ones go to
  // res.dead); returns (engine, req_id).
  std::vector<std::pair<int, uint64_t>> start_update(UpdateWeightsCall call, PublishResult& res,
                                                     const std::vector<int>* only = nullptr);
  // Waits for the acks of `sent`; every live engine's refusal goes to `refused` when given.
  Status collect_acks(const std::vector<std::pair<int, uint64_t>>& sent, SteadyClock::time_point deadline,
                      PublishResult& res, std::vector<std::pair<int, Status>>* refused = nullptr);
  // ipc segments of earlier publishes (names unlinked; this trainer and the engines that acked keep
  // them mapped).
  struct PooledSegment {
    ShmSegment seg;
    std::set<int> mapped_by;  // engines that acked an update from it (they kept their mapping)
    // mapping_pages() after its first write, kept: reading /proc/self/smaps walks every mapping's
    // page tables, 16-48 ms with this process's 4 KiB mappings, and ran inside every publish.
    std::string pages;
  };
  // A pooled segment of at least `bytes` that every engine of `to` has mapped and none serves
  // from, else a new one (added to the pool). *reused tells which.
  Result<size_t> segment_for(uint64_t bytes, const std::vector<int>& to, bool reuse, int64_t version, bool* reused);
  bool segment_in_use(const std::string& name) const;
  // Sends one ipc update from pool entry `idx` to the live engines (of `to`, when given); records
  // their answers.
  Status push_segment(size_t idx, Layout& l, const UpdateWeightsCall& base, const std::vector<int>* to,
                      SteadyClock::time_point deadline, PublishResult& res,
                      std::vector<std::pair<int, Status>>& refused);
  static UpdateWeightsCall base_call(WeightPath path, int64_t version, const PublishOptions& opt);

  // ---- the embedded router, run on the caller's thread
  Trainer(Context& ctx, const std::vector<std::string>& endpoints, TrainerOptions opt);
  // Steps the actor (the engines' replies go to the router) until done() or the deadline (timeout).
  Status pump(const std::function<bool()>& done, SteadyClock::time_point deadline);
  void flush() { driver_.flush(); }
  // What the router answers to the trainer's calls (chunks of generate are not wanted).
  void on_answer(RouterMessage& m);
  // One call through the router to engine k (or to the router with engine -1), awaited.
  Result<RouterMessage> call(int engine, const std::string& op, std::string body, uint64_t req_id,
                             std::chrono::milliseconds timeout);
  bool answered(uint64_t req_id) const { return replies_.count(req_id) > 0; }

  std::vector<std::string> endpoints_;
  Millis heartbeat_interval_;
  int heartbeat_liveness_;
  Actor actor_;  // never started: pump() steps it with run_once
  Router router_;
  RouterDriver driver_;
  std::set<uint64_t> awaiting_;                // req_ids of the trainer's calls in flight
  std::map<uint64_t, RouterMessage> replies_;  // their final answers
  uint64_t next_id_ = 1;
  SteadyClock::time_point last_pump_;
  std::vector<PooledSegment> shm_pool_;
  std::string pull_pages_;                // mapping_pages() of the pulled tensors (see PooledSegment)
  const void* pull_pages_src_ = nullptr;  // the first tensor's address when pull_pages_ was read
  PullBuffer pull_buf_;                   // ipc pull: the header (version, checksums) the engines read
  std::set<int> no_pull_;                 // engines that refused a pull (sent segments from then on)
  std::string ipc_mode_logged_;           // the last choice logged
  // broadcast: the group the last publish used (epoch 0: the whole weight group) and its members;
  // a failed broadcast publish makes the next one form a new epoch.
  uint64_t bcast_epoch_ = 0;
  std::vector<int> bcast_members_;
  bool bcast_failed_ = false;
  // Asks every live engine for its version and waits until each answered or the router declared it
  // dead (a killed or stopped engine takes one liveness window).
  void probe_engines();
  // Chooses the broadcast's epoch and members (trainer + live engines' ranks in `group`) and logs
  // the ranks left out when they change.
  Status choose_broadcast_group(MpiGroup& group, int64_t version);
  // The checkpoint of the last folder publish, kept mapped while its files are unchanged (same
  // inode, size and mtime): a fresh mapping of 438 MB of page cache costs ~225 ms of page-table
  // work on a host with 4 KiB page-cache pages, 8x the copy it feeds (README, weight sync).
  struct KeptArchive {
    std::string dir, stamp;
    std::shared_ptr<SafetensorsArchive> archive;
  };
  KeptArchive kept_archive_;
  Result<std::shared_ptr<SafetensorsArchive>> archive_of(const std::string& dir);
  std::vector<std::set<std::string>> shm_in_use_;  // per engine: what its last answer said it serves from
  std::set<int> in_use_guessed_;                   // engines whose shm_in_use_ is a guess: they did not ack a push
  // Asks every engine in in_use_guessed_ what it serves from (get_weight_version), so that the
  // segments of refused publishes are not held for good.
  void refresh_guessed_in_use();
};

}  // namespace zr
