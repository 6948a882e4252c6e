// The RolloutActor's weight operations: update_weights by ipc or disk (broadcast arrives with the
// MPI weight group), get_weight_version, get_weights_checksum, release/resume_memory, shutdown.
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "actors/rollout_actor.h"
#include "actors/weight_staging.h"
#include "comm/checksum.h"
#include "comm/shm_segment.h"
#include "comm/wire_weights.h"

namespace zr {

namespace {

using SteadyClock = std::chrono::steady_clock;

// Staging runs beside generation on the same cores: below the compute threads' priority, so a
// push slows decoding as little as possible (the commit itself is a pointer swap).
void lower_priority() { setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10); }

double seconds_since(SteadyClock::time_point t) {
  return std::chrono::duration<double>(SteadyClock::now() - t).count();
}

// Adds the rank to an error, so a failed update says where it failed.
Status on_rank(Status st, int rank) {
  if (st.ok()) return st;
  return make_error(st.code, st.message + " (rank " + std::to_string(rank) + ")");
}

}  // namespace

void RolloutActor::register_weight_handlers() {
  actor_.on("update_weights", [this](Frame& f, const ReplyTo& from) { on_update_weights(f, from); });
  actor_.on("get_weight_version", [this](Frame& f, const ReplyTo& from) {
    auto id = wire::decode_req_id_only(f.body);
    if (!id.ok()) return reply_error(from, wire::peek_req_id(f.body), id.status());
    actor_.send(from, "get_weight_version.reply", wire::encode(WeightVersionReply{*id, engine_->weight_version()}));
  });
  actor_.on("get_weights_checksum", [this](Frame& f, const ReplyTo& from) {
    auto c = wire::decode_weights_checksum(f.body);
    if (!c.ok()) return reply_error(from, wire::peek_req_id(f.body), c.status());
    WeightsChecksumReply r{c->req_id, opt_.weight_rank, engine_->weight_version(), {}};
    const ModelWeights& w = engine_->weights();
    for (const TensorSpec& s : w.specs()) {
      if (!c->names.empty() && std::find(c->names.begin(), c->names.end(), s.name) == c->names.end()) continue;
      const Weight* t = w.find(s.name);
      if (!t || !t->data) continue;
      r.tensors.push_back({s.name, dtype_name(t->dtype), checksum64(t->data, t->nbytes())});
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
      MemoryReply r{c->req_id, 0};
      if (release) {
        auto bytes = engine_->release_memory(w, kv);
        if (!bytes.ok()) return reply_error(from, c->req_id, bytes.status());
        r.bytes = *bytes;
      } else if (Status st = engine_->resume_memory(w, kv); !st.ok()) {
        return reply_error(from, c->req_id, st);
      }
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

void RolloutActor::on_update_weights(Frame& f, const ReplyTo& from) {
  auto call = wire::decode_update_weights(f.body);
  if (!call.ok()) return reply_error(from, wire::peek_req_id(f.body), call.status());
  if (weight_job_)
    return reply_error(from, call->req_id, make_error(ErrorCode::unavailable, "version: another update is in progress"));
  if (call->version <= engine_->weight_version() && call->path != "broadcast")
    return reply_error(from, call->req_id,
                       make_error(ErrorCode::invalid_argument, "version: " + std::to_string(call->version) +
                                                                   " must be greater than " +
                                                                   std::to_string(engine_->weight_version())));
  if (call->path == "broadcast" && !weight_group_)
    return reply_error(from, call->req_id,
                       make_error(ErrorCode::unsupported, "path: broadcast needs the MPI weight group (cluster launch)"));
  auto job = std::make_unique<WeightJob>();
  job->call = std::move(call).value();
  job->to = from;
  job->start = SteadyClock::now();
  const ModelWeights* current = &engine_->weights();
  const UpdateWeightsCall& c = job->call;
  if (c.path == "broadcast") {
    start_broadcast_receive(*job);
  } else if (c.path == "disk") {
    job->staged = std::async(std::launch::async, [current, dir = c.disk_path, v = c.version] {
      lower_priority();
      return stage_from_disk(*current, dir, v);
    });
  } else {  // ipc: map the trainer's segment and use its bytes in place where layout allows
    Status st = validate_update_meta(*current, c.tensors, c.shm_bytes);
    if (!st.ok()) return reply_error(from, c.req_id, on_rank(st, opt_.weight_rank));
    auto seg = ShmSegment::open(c.shm_name, c.shm_bytes, /*read_only=*/true, /*populate=*/false);
    if (!seg.ok()) return reply_error(from, c.req_id, on_rank(seg.status(), opt_.weight_rank));
    auto owner = std::make_shared<ShmSegment>(std::move(seg).value());
    job->staged = std::async(std::launch::async, [current, owner, metas = c.tensors, v = c.version] {
      lower_priority();
      auto base = static_cast<const uint8_t*>(owner->data());
      return stage_from_buffer(*current, metas, base, std::shared_ptr<const void>(owner, owner->data()), v);
    });
    job->bytes = c.shm_bytes;
  }
  weight_job_ = std::move(job);
}

// Joins the trainer's bucketed MPI broadcast on a worker thread; checksums are verified bucket by
// bucket as bytes arrive. A rank that will refuse the update (bad metadata, stale version) still
// takes part, into a scratch buffer, so the collective never hangs the other ranks.
void RolloutActor::start_broadcast_receive(WeightJob& job) {
  const UpdateWeightsCall& c = job.call;
  const uint64_t bytes = transfer_bytes(c.tensors);
  Status refuse = validate_update_meta(engine_->weights(), c.tensors, bytes);
  if (refuse.ok() && c.version <= engine_->weight_version())
    refuse = make_error(ErrorCode::invalid_argument, "version: " + std::to_string(c.version) + " must be greater than " +
                                                         std::to_string(engine_->weight_version()));
  std::shared_ptr<uint8_t> buf = staging_.get(std::max<uint64_t>(bytes, 64));
  const ModelWeights* current = &engine_->weights();
  job.bytes = bytes;
  job.staged = std::async(std::launch::async, [this, buf, bytes, current, refuse, c]() -> Result<StagedWeights> {
    lower_priority();
    if (!buf) return make_error(ErrorCode::unavailable, "staging buffer: cannot map " + std::to_string(bytes) + " bytes");
    TransferVerifier verifier(c.tensors);
    Status st = weight_group_->bcast_buckets(buf.get(), bytes, c.root, c.bucket_bytes, opt_.transfer_timeout,
                                             [&](size_t off, size_t len) { verifier.add(buf.get(), off, len); });
    if (!st.ok()) return st;
    if (!refuse.ok()) return refuse;
    ZR_RETURN_IF_ERROR(verifier.verify());
    return stage_from_buffer(*current, c.tensors, buf.get(), std::shared_ptr<const void>(buf, buf.get()), c.version,
                             /*verify_checksums=*/false);
  });
}

// Hands a finished stage to the engine (from tick, on the actor thread).
void RolloutActor::poll_weight_job() {
  WeightJob& job = *weight_job_;
  if (job.handed_to_engine || job.staged.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return;
  Result<StagedWeights> staged = job.staged.get();
  job.staged_at = SteadyClock::now();
  if (!staged.ok()) {
    reply_error(job.to, job.call.req_id, on_rank(staged.status(), opt_.weight_rank));
    weight_job_.reset();
    return;
  }
  job.bytes = staged->bytes;
  job.zero_copy = staged->zero_copy;
  job.handed_to_engine = true;
  Engine::UpdateOptions uo{*wire::in_flight_from_name(job.call.in_flight), job.call.flush_cache};
  StepOutputs out;
  Status st = engine_->request_update(std::move(staged).value(), uo, out);
  if (!st.ok()) {
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
    UpdateWeightsReply r{job.call.req_id, c.first, job.bytes,
                         std::chrono::duration<double>(job.staged_at - job.start).count(),
                         seconds_since(job.staged_at), job.zero_copy};
    actor_.send(job.to, "update_weights.reply", wire::encode(r));
    actor_.log().info("weights v{} served: {:.1f} MiB by {}, stage {:.1f} ms, commit {:.1f} ms", c.first,
                      job.bytes / 1048576.0, job.call.path, r.stage_seconds * 1e3, r.commit_seconds * 1e3);
  }
  weight_job_.reset();
}

}  // namespace zr
