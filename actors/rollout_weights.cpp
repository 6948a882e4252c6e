// The RolloutActor's weight operations: update_weights by ipc or disk (broadcast arrives with the
// MPI weight group), get_weight_version, get_weights_checksum, release/resume_memory, shutdown.
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "actors/rollout_actor.h"
#include "actors/engine/tp_group.h"
#include "actors/engine/weight_staging.h"
#include "comm/checksum.h"
#include "comm/shm_segment.h"
#include "comm/wire_weights.h"

namespace zr {

namespace {

using SteadyClock = std::chrono::steady_clock;

double seconds_since(SteadyClock::time_point t) {
  return std::chrono::duration<double>(SteadyClock::now() - t).count();
}

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

}  // namespace

void RolloutActor::register_weight_handlers() {
  actor_.on("update_weights", [this](Frame& f, const ReplyTo& from) { on_update_weights(f, from); });
  actor_.on("get_weight_version", [this](Frame& f, const ReplyTo& from) {
    auto id = wire::decode_req_id_only(f.body);
    if (!id.ok()) return reply_error(from, wire::peek_req_id(f.body), id.status());
    actor_.send(from, "get_weight_version.reply", wire::encode(WeightVersionReply{*id, engine_->weight_version(), segments_in_use()}));
  });
  actor_.on("get_weights_checksum", [this](Frame& f, const ReplyTo& from) {
    auto c = wire::decode_weights_checksum(f.body);
    if (!c.ok()) return reply_error(from, wire::peek_req_id(f.body), c.status());
    WeightsChecksumReply r{c->req_id, opt_.weight_rank, engine_->weight_version(), 1, {}};
    r.tensors = shard_checksums(engine_->weights(), c->names);
    if (TpGroup* tp = engine_->tp()) {  // every rank's shard, in TP rank order
      std::string names;
      for (const auto& n : c->names) names += n + "\n";
      tp->send(TpCommand{TpCommand::Kind::checksum, 0, {}, names});
      std::vector<std::string> all = tp->gather_strings(format_checksums(r.tensors));
      r.tp_size = static_cast<int>(all.size());
      for (size_t k = 1; k < all.size(); ++k) {
        std::vector<TensorChecksum> theirs = parse_checksums(all[k], static_cast<int>(k));
        r.tensors.insert(r.tensors.end(), theirs.begin(), theirs.end());
      }
    }
    actor_.send(from, "get_weights_checksum.reply", wire::encode(r));
  });
  auto memory = [this](bool release) {
    return [this, release](Frame& f, const ReplyTo& from) {
      auto c = wire::decode_memory(f.body);
      if (!c.ok()) return reply_error(from, wire::peek_req_id(f.body), c.status());
      bool w = std::count(c->tags.begin(), c->tags.end(), "weights") > 0;
      bool kv = std::count(c->tags.begin(), c->tags.end(), "kv_cache") > 0;
      if (weight_job_) return reply_error(from, c->req_id, make_error(ErrorCode::unavailable, "a weight update is in progress"));
      auto bytes = release ? engine_->release_memory(w, kv) : engine_->resume_memory(w, kv);
      if (!bytes.ok()) return reply_error(from, c->req_id, bytes.status());
      MemoryReply r{c->req_id, *bytes, engine_->served_version(), {}};
      if (engine_->weights_released()) r.released.push_back("weights");
      if (engine_->kv_released()) r.released.push_back("kv_cache");
      actor_.send(from, release ? "release_memory.reply" : "resume_memory.reply", wire::encode(r));
    };
  };
  actor_.on("release_memory", memory(true));
  actor_.on("resume_memory", memory(false));
  actor_.on("shutdown", [this](Frame& f, const ReplyTo& from) {
    actor_.send(from, "shutdown.reply", wire::encode_req_id_only(wire::peek_req_id(f.body)));
    actor_.log().info("shutdown requested");
    kill(getpid(), SIGTERM);  // the serve loop waits for it, then drains and exits 0
  });
}

std::vector<std::string> RolloutActor::segments_in_use() const {
  std::vector<std::string> in_use = shm_.in_use(engine_->weights());
  if (weight_job_ && weight_job_->call.path == WeightPath::ipc &&
      std::find(in_use.begin(), in_use.end(), weight_job_->call.shm_name) == in_use.end())
    in_use.push_back(weight_job_->call.shm_name);
  return in_use;
}

void RolloutActor::on_update_weights(Frame& f, const ReplyTo& from) {
  auto call = wire::decode_update_weights(f.body);
  if (!call.ok()) return reply_error(from, wire::peek_req_id(f.body), call.status());
  if (weight_job_)
    return reply_error(from, call->req_id, make_error(ErrorCode::unavailable, "version: another update is in progress"));
  if (serves_already(*call, served_metas_, engine_->weight_version(), engine_->tp() != nullptr) &&
      validate_update_meta(engine_->weights(), call->tensors, call->shm_bytes).ok()) {
    // Keep (or drop) mappings as any ipc update does: the writer may reuse this segment later.
    auto kept = shm_.acquire(call->shm_name, call->shm_offset + call->shm_bytes, call->shm_keep, call->shm_pool,
                             engine_->weights());
    if (!kept.ok()) return reply_error(from, call->req_id, on_rank(kept.status(), opt_.weight_rank));
    actor_.log().info("weights v{} re-sent: already serving these {} tensor(s), acked", call->version,
                      call->tensors.size());
    UpdateWeightsReply r{call->req_id, call->version, 0, 0, 0, 0, segments_in_use()};
    actor_.send(from, "update_weights.reply", wire::encode(r));
    return;
  }
  auto job = std::make_unique<WeightJob>();
  job->call = std::move(call).value();
  job->to = from;
  job->start = SteadyClock::now();
  StageSources src{weight_group_, &staging_, opt_.transfer_timeout, &shm_,
                   [finished = job->finished, this] {  // the actor loop sleeps while the stage runs
                     finished->store(true);
                     actor_.wake();
                   }};
  auto started = begin_stage(job->call, engine_->weights(), engine_->weight_version(), src, &job->bytes);
  if (!started.ok()) return reply_error(from, job->call.req_id, on_rank(started.status(), opt_.weight_rank));
  job->staged = std::move(started).value();
  // Tensor parallelism: every rank stages its own shard of the same update (a broadcast needs
  // every rank of the weight group anyway).
  if (TpGroup* tp = engine_->tp()) tp->send(TpCommand{TpCommand::Kind::stage, job->call.version, {}, f.body});
  weight_job_ = std::move(job);
}

// Hands a finished stage to the engine (from tick, on the actor thread).
void RolloutActor::poll_weight_job() {
  WeightJob& job = *weight_job_;
  if (job.handed_to_engine || !job.finished->load()) return;
  Result<StagedWeights> staged = job.staged.get();  // ready within moments of `finished`
  job.staged_at = SteadyClock::now();
  Status st = staged.ok() ? Status{} : on_rank(staged.status(), opt_.weight_rank);
  if (TpGroup* tp = engine_->tp()) {  // all ranks staged, or nobody commits
    tp->send(TpCommand{TpCommand::Kind::stage_result, job.call.version, {}, {}});
    std::vector<std::string> lines = tp->gather_strings(status_line(st));
    for (size_t r = 1; r < lines.size() && st.ok(); ++r)
      if (Status fst = status_from_line(lines[r]); !fst.ok())
        st = make_error(fst.code, fst.message + " (rank " + std::to_string(opt_.weight_rank) + ", tp rank " +
                                      std::to_string(r) + ")");
    if (!st.ok()) tp->send(TpCommand{TpCommand::Kind::drop_staged, job.call.version, {}, {}});
  }
  if (!st.ok()) {
    reply_error(job.to, job.call.req_id, st);
    weight_job_.reset();
    return;
  }
  job.bytes = staged->bytes;
  job.zero_copy = staged->zero_copy;
  job.received = staged->received;
  job.handed_to_engine = true;
  Engine::UpdateOptions uo{job.call.in_flight, job.call.flush_cache};
  StepOutputs out;
  st = engine_->request_update(std::move(staged).value(), uo, out);
  if (!st.ok()) {
    if (TpGroup* tp = engine_->tp()) tp->send(TpCommand{TpCommand::Kind::drop_staged, job.call.version, {}, {}});
    reply_error(job.to, job.call.req_id, st);
    weight_job_.reset();
  }
  route(out);  // abort policy: partial outputs; an idle engine commits at once
}

void RolloutActor::on_committed(const std::pair<int64_t, Status>& c) {
  if (!weight_job_ || weight_job_->call.version != c.first) return;
  WeightJob& job = *weight_job_;
  if (!c.second.ok()) {
    reply_error(job.to, job.call.req_id, on_rank(c.second, opt_.weight_rank));
  } else {
    if (job.call.path == WeightPath::disk) served_metas_.clear();
    for (const TensorMeta& m : job.received) served_metas_[m.name] = m;
    UpdateWeightsReply r{job.call.req_id, c.first, job.bytes,
                         std::chrono::duration<double>(job.staged_at - job.start).count(),
                         seconds_since(job.staged_at), job.zero_copy,
                         // TP followers serve the same tensors from the same segments (the
                         // zero-copy rule depends on dtype and layout only): the leader speaks for all
                         shm_.in_use(engine_->weights())};
    actor_.send(job.to, "update_weights.reply", wire::encode(r));
    actor_.log().info("weights v{} served: {:.1f} MiB by {}, stage {:.1f} ms, commit {:.1f} ms", c.first,
                      job.bytes / 1048576.0, wire::weight_path_name(job.call.path), r.stage_seconds * 1e3, r.commit_seconds * 1e3);
  }
  weight_job_.reset();
}

}  // namespace zr
