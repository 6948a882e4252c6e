#include "actors/engine/tp_follower.h"

#include <spdlog/spdlog.h>

#include <thread>

#include "comm/wire_weights.h"

namespace zr {

Result<std::unique_ptr<TpFollower>> TpFollower::load(const std::string& dir, const EngineOptions& opt, TpGroup& tp,
                                                     MpiGroup* weight_group,
                                                     std::chrono::milliseconds transfer_timeout) {
  auto cfg = ModelConfig::from_dir(dir);
  if (!cfg.ok()) return cfg.status();
  auto w = ModelWeights::load_dir(*cfg, dir, tp.shard());
  if (!w.ok()) return w.status();
  if (opt.compute == kernels::Compute::bf16) w->round_matrices_to_bf16();
  if (opt.copy_weights)
    if (auto copied = w->copy_to_anonymous_memory(); !copied.ok()) return copied.status();
  auto f = std::unique_ptr<TpFollower>(new TpFollower(std::move(w).value(), opt, tp));
  f->model_dir_ = dir;
  f->sources_ = StageSources{weight_group, &f->staging_, transfer_timeout, &f->shm_, {}, {}};
  f->sources_.build_packs = f->tf_->pack_stager();  // each rank packs its own shard while staging
  return f;
}

TpFollower::TpFollower(ModelWeights w, const EngineOptions& opt, TpGroup& tp) : weights_(std::move(w)), tp_(tp) {
  int threads = opt.threads > 0 ? opt.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  pool_ = std::make_unique<ThreadPool>(threads);
  kv_ = std::make_unique<KvCache>(local_config(weights_.config(), tp.shard()), opt.kv_block_size, opt.kv_cache_bytes,
                                  opt.kv_dtype);
  kv_prefault_ = opt.kv_prefault;
  if (kv_prefault_) kv_->prefault();
  tf_ = std::make_unique<Transformer>(&weights_, kv_.get(), pool_.get(), &tp, opt.compute);
  TpLayout l = tp_layout(weights_.config(), tp.shard());
  spdlog::info(
      "tp rank {}/{}: heads [{}, {}), kv heads [{}, {}), ffn [{}, {}), vocab [{}, {}), {} threads, KV {} blocks",
      tp.shard().rank, tp.shard().size, l.heads.begin, l.heads.end(), l.kv_heads.begin, l.kv_heads.end(), l.ffn.begin,
      l.ffn.end(), l.vocab.begin, l.vocab.end(), threads, kv_->num_blocks());
}

TpFollower::~TpFollower() {
  if (staging_job_ && staging_job_->valid()) staging_job_->wait();
  if (reclaim_.valid()) reclaim_.wait();
}

void TpFollower::run() {
  using Kind = TpCommand::Kind;
  for (;;) {
    TpCommand cmd = tp_.receive();
    switch (cmd.kind) {
      case Kind::forward: {
        auto plan = decode_forward(cmd.ints);
        if (!plan.ok()) {
          spdlog::critical("tp: {}", plan.status().to_string());
          tp_.mpi().abort_group(70);
        }
        for (auto [src, dst] : plan->copies) kv_->copy_block(src, dst);
        tf_->forward(plan->chunks, no_logits_);
        break;
      }
      case Kind::stage:
        on_stage(cmd);
        break;
      case Kind::stage_result:
        on_stage_result(cmd);
        break;
      case Kind::drop_staged:
        staged_.reset();
        break;
      case Kind::commit:
        on_commit(cmd);
        break;
      case Kind::release:
        on_memory(cmd, true);
        break;
      case Kind::resume:
        on_memory(cmd, false);
        break;
      case Kind::checksum: {
        std::vector<std::string> names;
        for (size_t at = 0, nl; (nl = cmd.blob.find('\n', at)) != std::string::npos; at = nl + 1)
          names.push_back(cmd.blob.substr(at, nl - at));
        tp_.gather_strings(format_checksums(shard_checksums(weights_, names, tp_.shard().rank)));
        break;
      }
      case Kind::shutdown:
        spdlog::info("tp rank {}: shutdown from the leader", tp_.shard().rank);
        return;
    }
  }
}

void TpFollower::on_stage(const TpCommand& cmd) {
  staging_job_.reset();
  staged_.reset();
  stage_refused_ = {};
  auto call = wire::decode_update_weights(cmd.blob);
  if (!call.ok()) {
    stage_refused_ = call.status();
    return;
  }
  uint64_t bytes = 0;
  auto started = begin_stage(*call, weights_, version_, sources_, &bytes);
  if (!started.ok()) stage_refused_ = started.status();
  else staging_job_ = std::move(started).value();
}

void TpFollower::on_stage_result(const TpCommand& cmd) {
  Status st = stage_refused_;
  if (st.ok() && !staging_job_) st = make_error(ErrorCode::internal, "no update was staged on this rank");
  if (st.ok()) {
    Result<StagedWeights> r = staging_job_->get();
    staging_job_.reset();
    if (!r.ok()) st = r.status();
    else if (r->version != cmd.version)
      st = make_error(ErrorCode::internal,
                      "staged version " + std::to_string(r->version) + ", expected " + std::to_string(cmd.version));
    else staged_ = std::move(r).value();
  }
  if (!st.ok())
    spdlog::warn("tp rank {}: update to version {} failed here: {}", tp_.shard().rank, cmd.version, st.to_string());
  tp_.gather_strings(status_line(st));
}

void TpFollower::on_commit(const TpCommand& cmd) {
  if (!staged_ || staged_->version != cmd.version) {
    spdlog::critical("tp rank {}: commit of version {} without its staged weights", tp_.shard().rank, cmd.version);
    tp_.mpi().abort_group(70);
  }
  std::vector<Weight> old;
  if (Status st = weights_.replace(staged_->tensors, &old); !st.ok()) {
    spdlog::critical("tp rank {}: commit of version {}: {}", tp_.shard().rank, cmd.version, st.to_string());
    tp_.mpi().abort_group(70);
  }
  if (reclaim_.valid()) reclaim_.wait();
  reclaim_ = std::async(std::launch::async, [old = std::move(old)]() mutable { old.clear(); });
  tf_->adopt_packs(std::move(staged_->packs));  // built while staging
  tf_->refresh_packs();                         // only what staging did not pack
  version_ = cmd.version;
  staged_.reset();
  spdlog::info("tp rank {}: weights version {} committed", tp_.shard().rank, version_);
}

void TpFollower::on_memory(const TpCommand& cmd, bool release) {
  const bool weights = cmd.ints.size() > 0 && cmd.ints[0], kv = cmd.ints.size() > 1 && cmd.ints[1];
  if (release) {
    if (kv) kv_->release_pages();
    kv_released_ = kv_released_ || kv;
    if (weights) {
      weights_.release_all();
      tf_->drop_packs();
    }
    return;
  }
  if (kv && kv_released_) {  // the leader sends resume for whatever was asked, released or not
    kv_released_ = false;
    if (kv_prefault_) kv_->prefault();
  }
  // The leader says whether its served version is the folder's (reload) or came from an update
  // (the shard stays released until the next commit, as on the leader).
  const bool reload = cmd.ints.size() > 2 && cmd.ints[2];
  if (weights && reload && !weights_.complete()) {
    auto staged = stage_from_disk(weights_, model_dir_, cmd.version);
    Status st = staged.ok() ? weights_.replace(staged->tensors) : staged.status();
    if (!st.ok()) {
      spdlog::critical("tp rank {}: resume_memory: {}", tp_.shard().rank, st.to_string());
      tp_.mpi().abort_group(70);
    }
    tf_->refresh_packs();
  }
}

}  // namespace zr
