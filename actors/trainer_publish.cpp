// Trainer: publishing tensors. The in-memory forms (tensors the caller holds: checked, laid out,
// then sent by ipc, written as a folder for disk, or broadcast) and the checkpoint-folder forms,
// which map the folder and call them. The ipc segment pool and the ack collection are in
// trainer.cpp.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <sys/stat.h>

#include "actors/trainer.h"
#include "comm/checksum.h"
#include "model/safetensors.h"

namespace zr {

namespace {

using Clock = std::chrono::steady_clock;

bool wanted(const std::string& name, const std::vector<std::string>& only) {
  return only.empty() || std::find(only.begin(), only.end(), name) != only.end();
}

// The tensors of a checkpoint, as references into its mapping (alive as long as `ar`).
std::vector<TensorRef> refs_of(const SafetensorsArchive& ar) {
  std::vector<TensorRef> refs;
  for (const auto& [name, v] : ar.tensors()) refs.push_back({name, dtype_name(v.dtype), v.shape, v.data, v.nbytes, {}});
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
  return publish(refs_of(**ar), version, opt);
}

Result<PublishResult> Trainer::publish(const std::vector<TensorRef>& tensors, int64_t version, const PublishOptions& opt) {
  if (opt.path == WeightPath::broadcast)
    return make_error(ErrorCode::invalid_argument, "path: broadcast needs the MPI group (publish_broadcast)");
  auto l = layout(tensors, opt.only);
  if (!l.ok()) return l.status();
  return opt.path == WeightPath::ipc ? publish_ipc(*l, version, opt) : publish_disk(*l, version, opt);
}

// Writes the tensors as DIR/model.safetensors (beside the old file, then renamed: an engine that
// maps the previous one keeps valid pages) and sends the engines the folder with the tensor list.
Result<PublishResult> Trainer::publish_disk(Layout& l, int64_t version, const PublishOptions& opt) {
  if (opt.disk_dir.empty())
    return make_error(ErrorCode::invalid_argument, "disk_dir: give the folder to write (the engines read it)");
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

Status Trainer::ensure_disk_config(const std::string& dir) {
  const std::filesystem::path cfg = std::filesystem::path(dir) / "config.json";
  if (std::filesystem::exists(cfg)) return {};
  int k = 0;
  while (k + 1 < static_cast<int>(endpoints_.size()) && !router_->alive(k)) ++k;
  auto info = clients_[k]->get_model_info(std::chrono::seconds(30));
  if (!info.ok())
    return make_error(info.status().code, "disk_dir: no config.json in " + dir + ", and engine " + endpoints_[k] +
                                              ": " + info.status().message);
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
    if (!wanted(t.name, only) || t.name.ends_with("rotary_emb.inv_freq")) continue;
    l.metas.push_back({t.name, t.dtype, t.shape, t.nbytes, 0, 0});
    l.src.push_back(t.data);
    l.claimed.push_back(t.checksum);
  }
  if (l.metas.empty())
    return make_error(ErrorCode::invalid_argument, only.empty() ? "tensors: nothing to publish" : "only: no tensor matches");
  l.bytes = assign_transfer_offsets(l.metas);
  return l;
}

void Trainer::Layout::fill(uint8_t* dst) {
  for (size_t i = 0; i < metas.size(); ++i) {
    const uint64_t sum = checksum64_finish(checksum64_copy_partial(dst + metas[i].offset, src[i], metas[i].nbytes, 0),
                                           metas[i].nbytes);
    metas[i].checksum = claimed[i] ? *claimed[i] : sum;
  }
}

Result<PublishResult> Trainer::publish_broadcast(const std::string& dir, int64_t version, const PublishOptions& opt,
                                                 MpiGroup& group) {
  auto ar = archive_of(dir);
  if (!ar.ok()) return ar.status();
  return publish_broadcast(refs_of(**ar), version, opt, group);
}

Result<PublishResult> Trainer::publish_broadcast(const std::vector<TensorRef>& tensors, int64_t version,
                                                 const PublishOptions& opt, MpiGroup& group) {
  auto l = layout(tensors, opt.only);
  if (!l.ok()) return l.status();
  // Kept between publishes: a new 438 MB buffer costs ~240 ms of page faults and zeroing on this
  // host before the copy (README), several times the broadcast itself. In 2 MiB pages: receivers
  // copy out of it with process_vm_readv (Open MPI's CMA), which pins it page by page; from 4 KiB
  // pages a raw MPI_Bcast of 438 MB took 92 ms against 38 ms from huge pages (README).
  ZR_RETURN_IF_ERROR(bcast_buf_.reserve(l->bytes));
  uint8_t* buf = bcast_buf_.data();
  const uint64_t bytes = l->bytes;
  const auto t_fill = Clock::now();
  l->fill(buf);
  const double write_s = std::chrono::duration<double>(Clock::now() - t_fill).count();
  // A collective needs every member: find out who is alive, and leave the dead (or stopped) out.
  const auto t_probe = Clock::now();
  probe_engines();
  ZR_RETURN_IF_ERROR(choose_broadcast_group(group, version));
  auto t0 = Clock::now();
  UpdateWeightsCall call = base_call(WeightPath::broadcast, version, opt);
  call.tensors = l->metas;
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
  call.root = bcast_epoch_ == 0 ? group.rank()
                                : static_cast<int>(std::find(bcast_members_.begin(), bcast_members_.end(), group.rank()) -
                                                   bcast_members_.begin());
  auto sent = start_update(std::move(call), res);
  (void)pump([] { return true; }, SteadyClock::now());  // the metadata goes out now
  auto g = group.survivors(bcast_epoch_, bcast_epoch_ > 0 ? bcast_members_ : std::vector<int>{}, transfer_timeout);
  Status st = g.ok() ? (*g)->bcast_buckets(buf, bytes, (*g)->rank(), opt.bucket_bytes, transfer_timeout) : g.status();
  if (!st.ok()) {
    for (const auto& s : sent) awaiting_.erase(s.second);
    return make_error(st.code, "broadcast: " + st.message);
  }
  double bcast_s = std::chrono::duration<double>(Clock::now() - t0).count();
  ZR_RETURN_IF_ERROR(collect_acks(sent, SteadyClock::now() + opt.timeout, res));
  bcast_failed_ = false;
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  res.write_seconds = write_s;
  res.tensors = std::move(l->metas);
  spdlog::info("broadcast of {:.1f} MiB in {} bucket(s) of {:.0f} MiB took {:.1f} ms ({:.2f} GB/s), acks after {:.1f} ms",
               bytes / 1048576.0, (bytes + opt.bucket_bytes - 1) / opt.bucket_bytes,
               opt.bucket_bytes / 1048576.0, bcast_s * 1e3, bytes / bcast_s / 1e9, res.seconds * 1e3);
  return res;
}

}  // namespace zr
