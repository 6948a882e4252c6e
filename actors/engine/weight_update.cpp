#include "actors/engine/weight_update.h"

#include "actors/engine/engine.h"
#include "actors/engine/tp_group.h"
#include "comm/phase_probe.h"

namespace zr {

namespace {

using SteadyClock = std::chrono::steady_clock;

double seconds_between(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

// Adds the rank to an error, so a failed update says where it failed.
Status WeightUpdate::on_rank(Status st) const {
  if (st.ok()) return st;
  return make_error(st.code, st.message + " (rank " + std::to_string(rank_) + ")");
}

void WeightUpdate::drop_everywhere(int64_t version) {
  if (tp_) tp_->send(TpCommand{TpCommand::Kind::drop_staged, version, {}, {}});
}

Status WeightUpdate::begin(UpdateWeightsCall call, std::string body, const ModelWeights& serving,
                           int64_t serving_version, StageSources src, int rank) {
  if (job_) return make_error(ErrorCode::unavailable, "version: another update is in progress");
  rank_ = rank;
  auto job = std::make_unique<Job>();
  job->call = std::move(call);
  job->start = SteadyClock::now();
  src.on_done = [finished = job->finished, wake = std::move(src.on_done)] {
    phase_mark("engine: staged (verified)");
    finished->store(true);
    if (wake) wake();  // the shell's loop sleeps while the stage runs
  };
  auto started = begin_stage(job->call, serving, serving_version, src, &job->outcome.bytes);
  if (!started.ok()) return on_rank(started.status());
  job->staged = std::move(started).value();
  // Every rank stages its own shard of the same update (a broadcast needs every rank of the
  // weight group anyway).
  if (tp_) tp_->send(TpCommand{TpCommand::Kind::stage, job->call.version, {}, std::move(body)});
  job_ = std::move(job);
  return {};
}

std::optional<StagedWeights> WeightUpdate::take_staged(StepOutputs& out) {
  Job& job = *job_;
  Result<StagedWeights> staged = job.staged.get();  // ready within moments of `finished`
  job.staged_at = SteadyClock::now();
  phase_mark("engine: stage taken by the step loop");
  Status st = staged.ok() ? Status{} : on_rank(staged.status());
  if (tp_) {  // all ranks staged, or nobody commits
    tp_->send(TpCommand{TpCommand::Kind::stage_result, job.call.version, {}, {}});
    std::vector<std::string> lines = tp_->gather_strings(status_line(st));
    for (size_t r = 1; r < lines.size() && st.ok(); ++r)
      if (Status fst = status_from_line(lines[r]); !fst.ok())
        st = make_error(fst.code,
                        fst.message + " (rank " + std::to_string(rank_) + ", tp rank " + std::to_string(r) + ")");
    if (!st.ok()) drop_everywhere(job.call.version);
  }
  if (!st.ok()) {
    finish(st, out);
    return std::nullopt;
  }
  job.outcome.bytes = staged->bytes;
  job.outcome.zero_copy = staged->zero_copy;
  job.outcome.received = staged->received;
  job.handed = true;
  return std::move(staged).value();
}

void WeightUpdate::refuse(const Status& st, StepOutputs& out) {
  drop_everywhere(job_->call.version);
  finish(st, out);
}

void WeightUpdate::committed(int64_t version, const Status& st, StepOutputs& out) {
  // Every rank swaps before the next forward (the followers staged this version already).
  if (tp_) tp_->send(TpCommand{st.ok() ? TpCommand::Kind::commit : TpCommand::Kind::drop_staged, version, {}, {}});
  phase_mark("engine: committed");
  if (job_ && job_->handed && job_->call.version == version) finish(on_rank(st), out);
}

void WeightUpdate::finish(Status st, StepOutputs& out) {
  Job& job = *job_;
  UpdateOutcome o = std::move(job.outcome);
  o.call = std::move(job.call);
  o.status = std::move(st);
  if (job.handed) {
    o.stage_seconds = seconds_between(job.start, job.staged_at);
    o.commit_seconds = seconds_between(job.staged_at, SteadyClock::now());
  }
  out.updates.push_back(std::move(o));
  job_.reset();
}

}  // namespace zr
