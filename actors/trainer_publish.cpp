// Trainer: publishing tensors. The in-memory forms (tensors the caller holds: checked, laid out,
// then sent by ipc, written as a folder for disk, or broadcast) and the checkpoint-folder forms,
// which map the folder and call them. The ipc segment pool and the ack collection are in
// trainer.cpp.
#include <spdlog/spdlog.h>

#include <sys/stat.h>
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <thread>

#include "actors/trainer.h"
#include "comm/checksum.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace zr {

namespace {

using Clock = std::chrono::steady_clock;

bool wanted(const std::string& name, const std::vector<std::string>& only) {
  return only.empty() || std::find(only.begin(), only.end(), name) != only.end();
}

// The weights of checkpoint folder `dir`, as references into its mapping (alive as long as `ar`).
// The registry of the folder's config.json says which tensors are weights; the others (buffers,
// optimizer or training state saved beside them) are left out and named in the log. A folder
// without config.json: every tensor but the recomputed buffers (the engines check the names).
Result<std::vector<TensorRef>> weight_refs(const std::string& dir, const SafetensorsArchive& ar) {
  std::optional<WeightNames> weights;
  if (std::filesystem::exists(std::filesystem::path(dir) / "config.json")) {
    auto cfg = ModelConfig::from_dir(dir);
    if (!cfg.ok()) return make_error(cfg.status().code, dir + ": " + cfg.status().message);
    weights.emplace(model_tensor_specs(*cfg));
  }
  std::vector<TensorRef> refs;
  std::string skipped;
  size_t num_skipped = 0;
  for (const auto& [name, v] : ar.tensors()) {
    if (weights ? !weights->contains(name) : is_recomputed_buffer(name)) {
      skipped += (num_skipped++ ? ", " : "") + name;
      continue;
    }
    refs.push_back({name, dtype_name(v.dtype), v.shape, v.data, v.nbytes, {}});
  }
  if (num_skipped > 0)
    spdlog::info("publish from {}: {} tensor(s) that are not weights of its model left out: {}", dir, num_skipped,
                 skipped);
  return refs;
}

// The reason `t` cannot be published, or empty.
std::string tensor_problem(const TensorRef& t) {
  if (t.name.empty()) return "empty name";
  auto dt = dtype_from_name(t.dtype);
  if (!dt) return "dtype '" + t.dtype + "' (F32, BF16 or F16)";
  uint64_t numel = 1;
  for (int64_t d : t.shape) {
    if (d < 0) return "negative dimension in its shape";
    numel *= static_cast<uint64_t>(d);
  }
  if (numel * dtype_size(*dt) != t.nbytes)
    return "nbytes " + std::to_string(t.nbytes) + " does not match " + t.dtype + " of " + std::to_string(numel) +
           " elements";
  if (!t.data && t.nbytes > 0) return "no data";
  return {};
}

// What identifies the checkpoint files of `dir` as unchanged: name, inode, size and mtime of each.
std::string folder_stamp(const std::string& dir) {
  std::error_code ec;
  std::vector<std::string> parts;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!name.ends_with(".safetensors") && !name.ends_with(".index.json")) continue;
    struct stat st {};
    if (::stat(e.path().c_str(), &st) != 0) return {};
    parts.push_back(name + ":" + std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
                    std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec));
  }
  std::sort(parts.begin(), parts.end());
  std::string stamp;
  for (const auto& p : parts) stamp += p + ";";
  return stamp;
}

}  // namespace

Result<std::shared_ptr<SafetensorsArchive>> Trainer::archive_of(const std::string& dir) {
  const std::string stamp = folder_stamp(dir);
  if (!stamp.empty() && kept_archive_.archive && kept_archive_.dir == dir && kept_archive_.stamp == stamp)
    return kept_archive_.archive;
  kept_archive_ = {};
  auto ar = SafetensorsArchive::open_dir(dir);
  if (!ar.ok()) return ar.status();
  auto shared = std::make_shared<SafetensorsArchive>(std::move(ar).value());
  if (!stamp.empty()) kept_archive_ = {dir, stamp, shared};
  return shared;
}

Result<PublishResult> Trainer::publish(const std::string& dir, int64_t version, const PublishOptions& opt) {
  if (opt.path == WeightPath::disk) {  // the engines read the folder itself
    if (!opt.only.empty()) return make_error(ErrorCode::invalid_argument, "only: a disk update loads the whole folder");
    UpdateWeightsCall call = base_call(WeightPath::disk, version, opt);
    call.disk_path = dir;
    return send_update(std::move(call), opt.timeout);
  }
  if (opt.path != WeightPath::ipc)
    return make_error(ErrorCode::invalid_argument, "path: broadcast needs the MPI group (publish_broadcast)");
  auto ar = archive_of(dir);
  if (!ar.ok()) return ar.status();
  auto refs = weight_refs(dir, **ar);
  if (!refs.ok()) return refs.status();
  return publish(*refs, version, opt);
}

Result<PublishResult> Trainer::publish(const std::vector<TensorRef>& tensors, int64_t version,
                                       const PublishOptions& opt) {
  if (opt.path == WeightPath::broadcast)
    return make_error(ErrorCode::invalid_argument, "path: broadcast needs the MPI group (publish_broadcast)");
  auto l = layout(tensors, opt.only);
  if (!l.ok()) return l.status();
  return opt.path == WeightPath::ipc ? publish_ipc(*l, version, opt) : publish_disk(*l, version, opt);
}

// Writes the tensors as DIR/model.safetensors (beside the old file, then renamed: an engine that
// maps the previous one keeps valid pages) and sends the engines the folder with the tensor list.
Result<PublishResult> Trainer::publish_disk(Layout& l, int64_t version, const PublishOptions& opt) {
  if (opt.disk_dir.empty()) {  // a fresh folder under the engines' first --weights-root, removed after
    auto dir = temp_dir_under_weights_root();
    if (!dir.ok()) return dir.status();
    PublishOptions o = opt;
    o.disk_dir = *dir;
    auto res = publish_disk(l, version, o);
    std::error_code ec;
    std::filesystem::remove_all(*dir, ec);
    return res;
  }
  std::error_code ec;
  std::filesystem::create_directories(opt.disk_dir, ec);
  if (ec) return make_error(ErrorCode::io_error, "disk_dir: cannot create " + opt.disk_dir + ": " + ec.message());
  ZR_RETURN_IF_ERROR(ensure_disk_config(opt.disk_dir));
  const auto t0 = Clock::now();
  std::vector<TensorBytes> files;
  for (size_t i = 0; i < l.metas.size(); ++i) {
    const TensorMeta& m = l.metas[i];
    files.push_back({m.name, *dtype_from_name(m.dtype), m.shape, l.src[i], m.nbytes});
    l.metas[i].checksum = l.claimed[i] ? *l.claimed[i] : checksum64_parallel(l.src[i], m.nbytes, 2);
  }
  ZR_RETURN_IF_ERROR(write_safetensors(opt.disk_dir + "/model.safetensors", files));
  const double write_s = std::chrono::duration<double>(Clock::now() - t0).count();
  UpdateWeightsCall call = base_call(WeightPath::disk, version, opt);
  call.disk_path = opt.disk_dir;
  call.tensors = l.metas;  // what the folder holds, with checksums (docs/protocol.md §8)
  auto res = send_update(std::move(call), opt.timeout);
  if (!res.ok()) return res;
  res->write_seconds = write_s;
  res->seconds += write_s;
  res->tensors = std::move(l.metas);
  return res;
}

Result<std::string> Trainer::temp_dir_under_weights_root() {
  int k = 0;
  while (k + 1 < static_cast<int>(endpoints_.size()) && !router_.alive(k)) ++k;
  auto info = model_info(k);
  if (!info.ok())
    return make_error(info.status().code, "disk_dir: engine " + endpoints_[k] + ": " + info.status().message);
  std::string root =
      info->weights_roots.empty() ? std::filesystem::temp_directory_path().string() : info->weights_roots[0];
  std::string tmpl = root + "/zrollout-weights-XXXXXX";
  if (!::mkdtemp(tmpl.data()))
    return make_error(ErrorCode::io_error,
                      "disk_dir: cannot make a folder under the engines' weights root " + root + " (give disk_dir)");
  return tmpl;
}

Status Trainer::ensure_disk_config(const std::string& dir) {
  const std::filesystem::path cfg = std::filesystem::path(dir) / "config.json";
  if (std::filesystem::exists(cfg)) return {};
  int k = 0;
  while (k + 1 < static_cast<int>(endpoints_.size()) && !router_.alive(k)) ++k;
  auto info = model_info(k);
  if (!info.ok())
    return make_error(info.status().code, "disk_dir: no config.json in " + dir + ", and " + info.status().message);
  if (info->model_path.empty())
    return make_error(ErrorCode::invalid_argument, "disk_dir: no config.json in " + dir + ", and engine " +
                                                       endpoints_[k] + " names no model folder to copy it from");
  std::error_code ec;
  std::filesystem::copy_file(std::filesystem::path(info->model_path) / "config.json", cfg, ec);
  if (ec)
    return make_error(ErrorCode::io_error, "disk_dir: no config.json in " + dir + ", and the engines' " +
                                               info->model_path + "/config.json cannot be copied (" + ec.message() +
                                               "): put the model's config.json there");
  return {};
}

Result<Trainer::Layout> Trainer::layout(const std::vector<TensorRef>& tensors, const std::vector<std::string>& only) {
  Layout l;
  std::set<std::string> seen;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorRef& t = tensors[i];
    std::string problem = tensor_problem(t);
    if (problem.empty() && !seen.insert(t.name).second) problem = "listed twice";
    if (!problem.empty())
      return make_error(ErrorCode::invalid_argument, "tensors[" + std::to_string(i) + "] (" + t.name + "): " + problem);
    if (!wanted(t.name, only) || is_recomputed_buffer(t.name)) continue;
    l.metas.push_back({t.name, t.dtype, t.shape, t.nbytes, 0, 0});
    l.src.push_back(t.data);
    l.claimed.push_back(t.checksum);
  }
  if (l.metas.empty())
    return make_error(ErrorCode::invalid_argument,
                      only.empty() ? "tensors: nothing to publish" : "only: no tensor matches");
  l.bytes = assign_transfer_offsets(l.metas);
  return l;
}

void Trainer::Layout::checksum(unsigned threads) {
  // Thread t sums the transfer bytes [t * share, (t + 1) * share), cut on 8-byte boundaries (tensor
  // offsets are multiples of 64, so the cuts fall on 8-byte boundaries of each tensor too); the
  // partial sums of one tensor add up (comm/checksum.h).
  threads = std::max(1u, threads);
  std::vector<std::vector<uint64_t>> sums(threads, std::vector<uint64_t>(metas.size(), 0));
  auto cut = [&](unsigned t) { return t >= threads ? bytes : bytes / threads * t / 8 * 8; };
  auto work = [&](unsigned t) {
    for (size_t i = 0; i < metas.size(); ++i) {
      const uint64_t a = std::max(cut(t), metas[i].offset), b = std::min(cut(t + 1), metas[i].offset + metas[i].nbytes);
      if (claimed[i] || a >= b) continue;
      sums[t][i] =
          checksum64_partial(static_cast<const uint8_t*>(src[i]) + (a - metas[i].offset), b - a, a - metas[i].offset);
    }
  };
  std::vector<std::thread> helpers;
  for (unsigned t = 1; t < threads; ++t) helpers.emplace_back(work, t);
  work(0);
  for (auto& h : helpers) h.join();
  for (size_t i = 0; i < metas.size(); ++i) {
    uint64_t sum = 0;
    for (unsigned t = 0; t < threads; ++t) sum += sums[t][i];
    metas[i].checksum = claimed[i] ? *claimed[i] : checksum64_finish(sum, metas[i].nbytes);
  }
}

std::vector<MpiGroup::RootPiece> Trainer::Layout::pieces() const {
  std::vector<MpiGroup::RootPiece> out;
  uint64_t end = 0;
  for (size_t i = 0; i < metas.size(); ++i) {
    if (metas[i].offset > end) out.push_back({nullptr, metas[i].offset - end});
    out.push_back({src[i], metas[i].nbytes});
    end = metas[i].offset + metas[i].nbytes;
  }
  if (bytes > end) out.push_back({nullptr, bytes - end});
  return out;
}

Result<PublishResult> Trainer::publish_broadcast(const std::string& dir, int64_t version, const PublishOptions& opt,
                                                 MpiGroup& group) {
  auto ar = archive_of(dir);
  if (!ar.ok()) return ar.status();
  auto refs = weight_refs(dir, **ar);
  if (!refs.ok()) return refs.status();
  return publish_broadcast(*refs, version, opt, group);
}

Result<PublishResult> Trainer::publish_broadcast(const std::vector<TensorRef>& tensors, int64_t version,
                                                 const PublishOptions& opt, MpiGroup& group) {
  auto l = layout(tensors, opt.only);
  if (!l.ok()) return l.status();
  // The bytes go from where the caller holds them (no copy into a transfer buffer: that cost a
  // write and a read of every byte before the first was sent), and their checksums come after
  // them as the broadcast's trailer (checksum_trailer): this rank checksums each segment once it
  // went out, while the engines receive the next ones, instead of in a pass over every byte before
  // the metadata (14.7 ms of a 116 ms publish, bench/bench_publish_mpi.py).
  const uint64_t bytes = l->bytes;
  const auto t_fill = Clock::now();
  const std::vector<MpiGroup::RootPiece> pieces = l->pieces();
  const double write_s = std::chrono::duration<double>(Clock::now() - t_fill).count();
  // A collective needs every member: find out who is alive, and leave the dead (or stopped) out.
  const auto t_probe = Clock::now();
  probe_engines();
  ZR_RETURN_IF_ERROR(choose_broadcast_group(group, version));
  auto t0 = Clock::now();
  UpdateWeightsCall call = base_call(WeightPath::broadcast, version, opt);
  call.tensors = l->metas;  // checksums 0: they go in the trailer
  call.checksum_trailer = true;
  call.group_epoch = bcast_epoch_;
  if (bcast_epoch_ > 0) call.group_ranks = bcast_members_;
  // The acks come after the bytes: send the metadata, then broadcast, then collect.
  PublishResult res;
  res.version = version;
  res.bytes = bytes;
  res.liveness_seconds = std::chrono::duration<double>(t0 - t_probe).count();
  bcast_failed_ = true;  // until the acks are in
  const std::chrono::milliseconds transfer_timeout = std::chrono::seconds(60);
  // The engines make the survivors' group when the metadata reaches them; so does this rank, first
  // sending it. The members' order is the weight group's, so the root is where the trainer sits.
  call.root = bcast_epoch_ == 0
                  ? group.rank()
                  : static_cast<int>(std::find(bcast_members_.begin(), bcast_members_.end(), group.rank()) -
                                     bcast_members_.begin());
  auto sent = start_update(std::move(call), res);
  (void)pump([] { return true; }, SteadyClock::now());  // the metadata goes out now
  auto g = group.survivors(bcast_epoch_, bcast_epoch_ > 0 ? bcast_members_ : std::vector<int>{}, transfer_timeout);
  TransferVerifier sent_sums(l->metas);
  std::vector<uint64_t> trailer(l->metas.size());
  auto on_segment = [&](size_t off, size_t len, const void* at) {
    sent_sums.add(at, off, len);
    if (off + len < bytes) return;
    // The last segment: fill the trailer (in place: the broadcast sends from its buffer) before it goes out.
    const std::vector<uint64_t> sums = sent_sums.checksums();
    for (size_t i = 0; i < trailer.size(); ++i) trailer[i] = l->claimed[i] ? *l->claimed[i] : sums[i];
  };
  Status st = g.ok() ? (*g)->bcast_buckets_from(pieces, (*g)->rank(), opt.bucket_bytes, transfer_timeout, on_segment,
                                                std::as_writable_bytes(std::span(trailer)))
                     : g.status();
  if (!st.ok()) {
    for (const auto& s : sent) awaiting_.erase(s.second);
    return make_error(st.code, "broadcast: " + st.message);
  }
  double bcast_s = std::chrono::duration<double>(Clock::now() - t0).count();
  ZR_RETURN_IF_ERROR(collect_acks(sent, SteadyClock::now() + opt.timeout, res));
  bcast_failed_ = false;
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  res.write_seconds = write_s;
  for (size_t i = 0; i < trailer.size(); ++i) l->metas[i].checksum = trailer[i];
  res.tensors = std::move(l->metas);
  spdlog::info(
      "broadcast of {:.1f} MiB in {} bucket(s) of {:.0f} MiB took {:.1f} ms ({:.2f} GB/s), acks after {:.1f} ms",
      bytes / 1048576.0, (bytes + opt.bucket_bytes - 1) / opt.bucket_bytes, opt.bucket_bytes / 1048576.0, bcast_s * 1e3,
      bytes / bcast_s / 1e9, res.seconds * 1e3);
  return res;
}

}  // namespace zr
