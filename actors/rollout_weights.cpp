// The RolloutActor's weight operations: update_weights by ipc or disk (broadcast arrives with the
// MPI weight group), get_weight_version, get_weights_checksum, release/resume_memory, shutdown.
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <tuple>

#include "actors/engine/weight_staging.h"
#include "actors/rollout_actor.h"
#include "comm/checksum.h"
#include "comm/phase_probe.h"
#include "comm/shm_segment.h"
#include "comm/wire_weights.h"

namespace zr {

namespace {

// Adds the rank to an error, so a failed update says where it failed.
Status on_rank(Status st, int rank) {
  if (st.ok()) return st;
  return make_error(st.code, st.message + " (rank " + std::to_string(rank) + ")");
}

// An ipc update of the version already serving whose every tensor the engine got, verified, from
// an earlier update with the same dtype, nbytes and checksum (as the message lists them: a
// streamed update's first send has no checksums there, its resend does). A trainer re-sending a
// version (a router's fan-out where one engine lost a reused segment, and the trainer resent it
// fresh to all) gets an ack instead of a stale refusal. Not under tensor parallelism (the leader
// alone would answer for its followers), not for broadcast (every rank must enter the MPI call),
// not for disk (the folder, not the list, is what would load).
bool serves_already(const UpdateWeightsCall& c, const std::map<std::string, TensorMeta>& served, int64_t serving,
                    bool sharded) {
  if (sharded || c.path != WeightPath::ipc || c.version != serving || c.tensors.empty()) return false;
  for (const TensorMeta& m : c.tensors) {
    auto it = served.find(m.name);
    if (it == served.end() || it->second.dtype != m.dtype || it->second.nbytes != m.nbytes ||
        it->second.checksum != m.checksum)
      return false;
  }
  return true;
}

// A disk update may read only under the allowed roots (all of them when none are set). Both sides
// are resolved (symlinks, "..") before the prefix test, so a path cannot climb out of a root.
Status check_weights_root(const std::string& disk_path, const std::vector<std::string>& roots) {
  if (roots.empty()) return {};
  std::error_code ec;
  const std::filesystem::path p = std::filesystem::weakly_canonical(disk_path, ec);
  for (const auto& root : roots) {
    const std::filesystem::path r = std::filesystem::weakly_canonical(root, ec);
    auto [ri, pi] = std::mismatch(r.begin(), r.end(), p.begin(), p.end());
    if (ri == r.end() || (std::next(ri) == r.end() && ri->empty())) return {};
  }
  return make_error(ErrorCode::permission_denied,
                    "disk_path: " + disk_path + " is outside the server's --weights-root folders");
}

}  // namespace

void RolloutActor::register_weight_handlers() {
  actor_.on<UpdateWeightsCall>("update_weights", [this](UpdateWeightsCall& c, Frame& f, const ReplyTo& from) {
    return on_update_weights(c, f.body, from);
  });
  actor_.on<ReqIdOnly, WeightVersionReply>(
      "get_weight_version", [this](ReqIdOnly& c, const ReplyTo&) -> Result<WeightVersionReply> {
        return WeightVersionReply{c.req_id, engine_->weight_version(), segments_in_use()};
      });
  actor_.on<WeightsChecksumCall, WeightsChecksumReply>(
      "get_weights_checksum", [this](WeightsChecksumCall& c, const ReplyTo&) -> Result<WeightsChecksumReply> {
        WeightsChecksumReply r{c.req_id, opt_.weight_rank, engine_->weight_version(), 1, {}};
        std::tie(r.tensors, r.tp_size) = engine_->weight_checksums(c.names);
        return r;
      });
  auto memory = [this](bool release) {
    return [this, release](MemoryCall& c, const ReplyTo&) -> Result<MemoryReply> {
      bool w = std::count(c.tags.begin(), c.tags.end(), "weights") > 0;
      bool kv = std::count(c.tags.begin(), c.tags.end(), "kv_cache") > 0;
      auto bytes = release ? engine_->release_memory(w, kv) : engine_->resume_memory(w, kv);
      if (!bytes.ok()) return bytes.status();
      MemoryReply r{c.req_id, *bytes, engine_->served_version(), {}};
      if (engine_->weights_released()) r.released.push_back("weights");
      if (engine_->kv_released()) r.released.push_back("kv_cache");
      return r;
    };
  };
  actor_.on<MemoryCall, MemoryReply>("release_memory", memory(true));
  actor_.on<MemoryCall, MemoryReply>("resume_memory", memory(false));
  actor_.on("shutdown", [this](Frame& f, const ReplyTo& from) {  // any body: it only needs its req_id
    actor_.send(from, "shutdown.reply", wire::encode_req_id_only(wire::peek_req_id(f.body)));
    actor_.log().info("shutdown requested");
    kill(getpid(), SIGTERM);  // the serve loop waits for it, then drains and exits 0
  });
}

std::vector<std::string> RolloutActor::segments_in_use() const {
  std::vector<std::string> in_use = shm_.in_use(engine_->weights());
  const UpdateWeightsCall* pending = engine_->update_call();
  if (pending && pending->path == WeightPath::ipc && !pending->shm_name.empty() &&
      std::find(in_use.begin(), in_use.end(), pending->shm_name) == in_use.end())
    in_use.push_back(pending->shm_name);
  return in_use;
}

Status RolloutActor::on_update_weights(UpdateWeightsCall& call, const std::string& body, const ReplyTo& from) {
  phase_mark("engine: update_weights received");
  if (call.path == WeightPath::disk) ZR_RETURN_IF_ERROR(check_weights_root(call.disk_path, opt_.weights_roots));
  if (!engine_->update_in_progress() &&
      serves_already(call, served_metas_, engine_->weight_version(), engine_->tp() != nullptr) &&
      validate_update_meta(engine_->weights(), call.tensors, call.shm_bytes).ok()) {
    // Keep (or drop) mappings as any ipc update does: the writer may reuse this segment later.
    if (call.shm_name.empty()) {  // a pull: nothing to map
      shm_.retain(call.shm_pool);
    } else {
      auto kept = shm_.acquire(call.shm_name, call.shm_offset + call.shm_bytes, call.shm_keep, call.shm_pool,
                               engine_->weights());
      if (!kept.ok()) return on_rank(kept.status(), opt_.weight_rank);
    }
    actor_.log().info("weights v{} re-sent: already serving these {} tensor(s), acked", call.version,
                      call.tensors.size());
    UpdateWeightsReply r{call.req_id, call.version, 0, 0, 0, 0, segments_in_use()};
    actor_.send(from, "update_weights.reply", wire::encode(r));
    return {};
  }
  // build_packs: the engine sets it (its transformer's pack stager).
  StageSources src{weight_group_, &staging_, opt_.transfer_timeout, &shm_, [this] { actor_.wake(); }, {}};
  ZR_RETURN_IF_ERROR(engine_->begin_update(std::move(call), body, std::move(src), opt_.weight_rank));
  phase_mark("engine: staging started");
  update_reply_to_ = from;
  return {};
}

void RolloutActor::on_update_done(const UpdateOutcome& o) {
  if (!o.status.ok()) return reply_error(update_reply_to_, o.call.req_id, o.status);
  if (o.call.path == WeightPath::disk) served_metas_.clear();
  for (const TensorMeta& m : o.received) served_metas_[m.name] = m;
  // TP followers serve the same tensors from the same segments (the zero-copy rule depends on
  // dtype and layout only): the leader speaks for all.
  UpdateWeightsReply r{o.call.req_id,
                       o.call.version,
                       o.bytes,
                       o.stage_seconds,
                       o.commit_seconds,
                       o.zero_copy,
                       shm_.in_use(engine_->weights())};
  actor_.send(update_reply_to_, "update_weights.reply", wire::encode(r));
  phase_mark("engine: ack sent");
  // The next pull or broadcast needs a second buffer (this one serves): back it now, off this thread.
  if (o.call.pull_pid != 0 || o.call.path == WeightPath::broadcast) staging_.refill(staging_bytes_);
  actor_.log().info("weights v{} served: {:.1f} MiB by {}, stage {:.1f} ms, commit {:.1f} ms", o.call.version,
                    o.bytes / 1048576.0, wire::weight_path_name(o.call.path), r.stage_seconds * 1e3,
                    r.commit_seconds * 1e3);
}

}  // namespace zr
