// Weight updates and memory release on the engine: what commits when, and what in-flight requests
// see. The bytes were staged and verified before (actors/weight_staging); this file only decides
// the moment of the swap, which is always between two steps.
#include <spdlog/spdlog.h>

#include <chrono>

#include "actors/engine/engine_state.h"
#include "actors/engine/tp_group.h"

namespace zr {

Status Engine::serving_check() const {
  if (weights_released_ && folder_weights_)
    return make_error(ErrorCode::unavailable, "weights are released: resume_memory first");
  if (weights_released_)
    return make_error(ErrorCode::unavailable, "weights are released: version " + std::to_string(weight_version_) +
                                                  " came from an update and was not kept; push a version above it "
                                                  "(update_weights) to serve again");
  if (kv_released_) return make_error(ErrorCode::unavailable, "kv_cache is released: resume_memory first");
  return {};
}

Status Engine::request_update(StagedWeights w, UpdateOptions opt, StepOutputs& out) {
  if (pending_update_)
    return make_error(ErrorCode::unavailable,
                      "version: update to " + std::to_string(pending_update_->weights.version) + " is still pending");
  if (w.version <= weight_version_)
    return make_error(ErrorCode::invalid_argument, "version: " + std::to_string(w.version) +
                                                       " must be greater than the serving version " +
                                                       std::to_string(weight_version_));
  if (opt.policy == InFlightPolicy::abort) {
    std::vector<std::string> running;
    for (const auto& [id, s] : seqs_)
      if (sched_.is_running(id)) running.push_back(s->req->is_score ? s->req->score.rid : s->req->gen.rid);
    for (const auto& rid : running) abort(AbortCall{0, rid, "", false}, out);
  }
  if (opt.policy == InFlightPolicy::drain) sched_.set_admit(false);
  pending_update_ = std::make_unique<PendingUpdate>(PendingUpdate{std::move(w), opt});
  maybe_commit(out);  // nothing running: commit now
  return {};
}

void Engine::advance_update(StepOutputs& out) {
  if (update_.stage_done()) {
    const UpdateOptions opt{update_.call()->in_flight, update_.call()->flush_cache};
    if (std::optional<StagedWeights> staged = update_.take_staged(out)) {
      Status st = request_update(std::move(*staged), opt, out);  // may commit (and end) at once
      if (!st.ok()) update_.refuse(st, out);
    }
  }
  maybe_commit(out);
}

std::pair<std::vector<TensorChecksum>, int> Engine::weight_checksums(const std::vector<std::string>& names) {
  std::vector<TensorChecksum> sums = shard_checksums(weights_, names);
  if (!opt_.tp) return {sums, 1};
  std::string joined;  // every rank's shard, in TP rank order
  for (const auto& n : names) joined += n + "\n";
  opt_.tp->send(TpCommand{TpCommand::Kind::checksum, 0, {}, joined});
  std::vector<std::string> all = opt_.tp->gather_strings(format_checksums(sums));
  for (size_t k = 1; k < all.size(); ++k) {
    std::vector<TensorChecksum> theirs = parse_checksums(all[k], static_cast<int>(k));
    sums.insert(sums.end(), theirs.begin(), theirs.end());
  }
  return {sums, static_cast<int>(all.size())};
}

// Commits the pending update if its policy allows it at this step boundary.
void Engine::maybe_commit(StepOutputs& out) {
  if (!pending_update_) return;
  PendingUpdate& u = *pending_update_;
  if (u.opt.policy == InFlightPolicy::drain && sched_.num_running() > 0) return;
  std::vector<Weight> old;
  Status st = weights_.replace(u.weights.tensors, &old);
  // The old version's mapping may be the last reference to hundreds of MB: unmap it elsewhere so
  // the commit stays a pointer swap. One reclaim at a time.
  if (reclaim_.valid()) reclaim_.wait();
  reclaim_ = std::async(std::launch::async, [old = std::move(old)]() mutable { old.clear(); });
  if (st.ok()) folder_weights_ = false;
  if (st.ok() && weights_released_ && weights_.complete()) weights_released_ = false;
  if (st.ok()) tf_->adopt_packs(std::move(u.weights.packs));  // built while staging: a pointer swap
  if (st.ok()) repack();                          // only what staging did not pack (a caller that staged no packs)
  update_.committed(u.weights.version, st, out);  // the followers swap too; the ack
  if (st.ok()) {
    weight_version_ = u.weights.version;
    if (u.opt.policy == InFlightPolicy::recompute) preemptions_ += static_cast<int64_t>(sched_.preempt_all().size());
    if (u.opt.flush_cache) flush_cache();
    sched_.set_weight_version(weight_version_);  // cached KV (sessions', prefixes') is the old weights'
    spdlog::info("weights: version {} committed ({} tensors, {:.1f} MiB, in-flight policy {})", weight_version_,
                 u.weights.tensors.size(), u.weights.bytes / 1048576.0, static_cast<int>(u.opt.policy));
  }
  sched_.set_admit(true);
  out.committed.emplace_back(u.weights.version, st);
  pending_update_.reset();
}

void Engine::build_packs(StagedWeights& w) const { build_staged_packs(tf_->pack_stager(), weights_, w); }

PackStager Engine::pack_stager() const { return tf_->pack_stager(); }

const WeightPacks& Engine::packs() const { return tf_->packs(); }

// The weights whose packs are not current are packed now (model/weight_packs.h): after a commit
// that adopted its staged packs, none; after a resume, all of them. Before the next step, so the
// first step on the new bytes does not pay for it.
void Engine::repack() {
  const auto t0 = std::chrono::steady_clock::now();
  const size_t bytes = tf_->refresh_packs();
  if (bytes == 0) return;
  spdlog::info("weights: packed {:.1f} MiB in {:.1f} ms on the step loop", bytes / 1048576.0,
               std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
}

Result<size_t> Engine::release_memory(bool weights, bool kv_cache) {
  if (update_.active()) return make_error(ErrorCode::unavailable, "a weight update is in progress");
  if (!idle())
    return make_error(ErrorCode::unavailable, "release_memory: requests are in flight (abort or let them finish)");
  size_t bytes = 0;
  if (kv_cache && !kv_released_) {
    sched_.drop_all_cached();
    ZR_CHECK(sched_.blocks().num_used() == 0);  // idle: no sequence holds KV
    bytes += kv_->release_pages();
    kv_released_ = true;
  }
  if (weights && !weights_released_) {
    bytes += weights_.release_all() + tf_->pack_bytes();
    tf_->drop_packs();
    weights_released_ = true;
  }
  if (opt_.tp) opt_.tp->send(TpCommand{TpCommand::Kind::release, 0, {weights, kv_cache}, {}});
  return bytes;
}

Result<size_t> Engine::resume_memory(bool weights, bool kv_cache) {
  if (update_.active()) return make_error(ErrorCode::unavailable, "a weight update is in progress");
  size_t bytes = 0;
  if (kv_cache && kv_released_) {
    kv_released_ = false;
    if (opt_.kv_prefault) prefault_kv();
    bytes += kv_->bytes();
  }
  // Only the folder's own version can be reloaded from the folder: the bytes of a pushed version
  // are gone (reloading the folder under its number was issue 21).
  const bool reload = weights && weights_released_ && folder_weights_;
  if (reload) {
    auto staged = stage_from_disk(weights_, model_dir_, weight_version_);
    if (!staged.ok()) return staged.status();
    ZR_RETURN_IF_ERROR(weights_.replace(staged->tensors));
    repack();
    weights_released_ = false;
    bytes += staged->bytes;
  } else if (weights && weights_released_) {
    spdlog::warn(
        "resume_memory: weights stay released: version {} came from an update and was not kept; "
        "generate and score answer unavailable until an update commits",
        weight_version_);
  }
  if (opt_.tp) opt_.tp->send(TpCommand{TpCommand::Kind::resume, weight_version_, {weights, kv_cache, reload}, {}});
  return bytes;
}

std::optional<int64_t> Engine::served_version() const {
  if (weights_released_) return std::nullopt;
  return weight_version_;
}

}  // namespace zr
