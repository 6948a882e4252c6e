#include "actors/trainer.h"

#include <spdlog/spdlog.h>

#include <cstring>
#include <future>

#include "actors/weight_staging.h"
#include "comm/checksum.h"
#include "comm/shm_segment.h"
#include "comm/wire_weights.h"
#include "model/safetensors.h"

namespace zr {

namespace {

using Clock = std::chrono::steady_clock;

// The reply of a raw call as T, or the error it carried (naming the engine).
template <class T, class F>
Result<T> await_reply(std::future<Result<Client::RawReply>>& fut, const std::string& engine, F parse) {
  Result<Client::RawReply> raw = fut.get();
  if (!raw.ok()) return make_error(raw.status().code, "engine " + engine + ": " + raw.status().message);
  if (raw->op == "error") {
    Status st = wire::status_from_error_json(raw->json);
    return make_error(st.code, "engine " + engine + ": " + st.message);
  }
  return parse(raw->json);
}

bool wanted(const std::string& name, const std::vector<std::string>& only) {
  return only.empty() || std::find(only.begin(), only.end(), name) != only.end();
}

}  // namespace

Result<std::unique_ptr<Trainer>> Trainer::connect(const std::vector<std::string>& endpoints, zmq::context_t* context) {
  auto t = std::unique_ptr<Trainer>(new Trainer());
  for (const auto& e : endpoints) {
    auto c = Client::connect(e, context);
    if (!c.ok()) return make_error(c.status().code, "engine " + e + ": " + c.status().message);
    t->endpoints_.push_back(e);
    t->clients_.push_back(std::move(c).value());
  }
  return t;
}

Result<PublishResult> Trainer::send_update(UpdateWeightsCall call, std::chrono::milliseconds timeout) {
  auto t0 = Clock::now();
  std::vector<std::future<Result<Client::RawReply>>> futs;
  for (auto& c : clients_) {
    call.req_id = c->next_req_id();
    futs.push_back(c->call_raw("update_weights", wire::encode(call), {}, call.req_id, timeout));
  }
  PublishResult res;
  res.version = call.version;
  Status first_error;
  for (size_t i = 0; i < futs.size(); ++i) {
    auto ack = await_reply<UpdateWeightsReply>(futs[i], endpoints_[i], wire::update_weights_reply_from_json);
    if (!ack.ok()) {
      if (first_error.ok()) first_error = ack.status();
      continue;
    }
    res.bytes = std::max(res.bytes, ack->bytes);
    res.acks.push_back(*ack);
  }
  if (!first_error.ok()) return first_error;
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return res;
}

Result<PublishResult> Trainer::publish(const std::string& dir, int64_t version, const PublishOptions& opt) {
  if (opt.path == "ipc") return publish_ipc(dir, version, opt);
  if (opt.path != "disk") return make_error(ErrorCode::invalid_argument, "path: '" + opt.path + "' (ipc or disk here)");
  if (!opt.only.empty()) return make_error(ErrorCode::invalid_argument, "only: a disk update loads the whole folder");
  UpdateWeightsCall call = base_call("disk", version, opt);
  call.disk_path = dir;
  return send_update(std::move(call), opt.timeout);
}

// The fields every update of a publish carries.
UpdateWeightsCall Trainer::base_call(const char* path, int64_t version, const PublishOptions& opt) {
  UpdateWeightsCall call;
  call.version = version;
  call.path = path;
  call.in_flight = wire::in_flight_name(opt.in_flight);
  call.flush_cache = opt.flush_cache;
  call.bucket_bytes = opt.bucket_bytes;
  return call;
}

Result<Trainer::Layout> Trainer::layout(const SafetensorsArchive& ar, const std::vector<std::string>& only,
                                        const std::string& dir) {
  Layout l;
  for (const auto& [name, v] : ar.tensors()) {
    if (!wanted(name, only) || name.ends_with("rotary_emb.inv_freq")) continue;
    l.metas.push_back({name, dtype_name(v.dtype), v.shape, v.nbytes, 0, 0});
    l.src.push_back(v.data);
  }
  if (l.metas.empty()) return make_error(ErrorCode::invalid_argument, "only: no tensor of " + dir + " matches");
  l.bytes = assign_transfer_offsets(l.metas);
  return l;
}

void Trainer::Layout::fill(uint8_t* dst) {
  for (size_t i = 0; i < metas.size(); ++i) {
    std::memcpy(dst + metas[i].offset, src[i], metas[i].nbytes);
    metas[i].checksum = checksum64(dst + metas[i].offset, metas[i].nbytes);
  }
}

// Lays the checkpoint's tensors out in one shared-memory segment, checksums them, and sends only
// the segment's name and the tensor list; engines map it and serve from it in place.
Result<PublishResult> Trainer::publish_ipc(const std::string& dir, int64_t version, const PublishOptions& opt) {
  auto ar = SafetensorsArchive::open_dir(dir);
  if (!ar.ok()) return ar.status();
  auto l = layout(*ar, opt.only, dir);
  if (!l.ok()) return l.status();
  auto seg = ShmSegment::create("zrollout-w" + std::to_string(version), l->bytes);
  if (!seg.ok()) return seg.status();
  l->fill(static_cast<uint8_t*>(seg->data()));
  UpdateWeightsCall call = base_call("ipc", version, opt);
  call.tensors = l->metas;
  call.shm_name = seg->name();
  call.shm_bytes = l->bytes;
  auto res = send_update(std::move(call), opt.timeout);
  seg->unlink();  // every engine has mapped it (or failed); mappings outlive the name
  return res;
}

Result<PublishResult> Trainer::publish_broadcast(const std::string& dir, int64_t version, const PublishOptions& opt,
                                                 MpiGroup& group) {
  auto ar = SafetensorsArchive::open_dir(dir);
  if (!ar.ok()) return ar.status();
  auto l = layout(*ar, opt.only, dir);
  if (!l.ok()) return l.status();
  std::vector<uint8_t> buf(l->bytes);
  l->fill(buf.data());
  UpdateWeightsCall call = base_call("broadcast", version, opt);
  call.tensors = l->metas;
  call.root = group.rank();
  // The acks come after the bytes: send the metadata, then broadcast, then collect.
  auto t0 = Clock::now();
  std::vector<std::future<Result<Client::RawReply>>> futs;
  for (auto& c : clients_) {
    call.req_id = c->next_req_id();
    futs.push_back(c->call_raw("update_weights", wire::encode(call), {}, call.req_id, opt.timeout));
  }
  Status st = group.bcast_buckets(buf.data(), buf.size(), group.rank(), opt.bucket_bytes, std::chrono::seconds(60));
  if (!st.ok()) return make_error(st.code, "broadcast: " + st.message);
  double bcast_s = std::chrono::duration<double>(Clock::now() - t0).count();
  PublishResult res;
  res.version = version;
  res.bytes = buf.size();
  for (size_t i = 0; i < futs.size(); ++i) {
    auto ack = await_reply<UpdateWeightsReply>(futs[i], endpoints_[i], wire::update_weights_reply_from_json);
    if (!ack.ok()) return ack.status();
    res.acks.push_back(*ack);
  }
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  spdlog::info("broadcast of {:.1f} MiB took {:.1f} ms ({:.2f} GB/s), acks after {:.1f} ms", buf.size() / 1048576.0,
               bcast_s * 1e3, buf.size() / bcast_s / 1e9, res.seconds * 1e3);
  return res;
}

Result<std::vector<SampleOutput>> Trainer::generate(const std::vector<GenerateRequest>& reqs,
                                                    std::chrono::milliseconds timeout) {
  std::vector<std::future<Result<GenerateReply>>> futs;
  for (size_t i = 0; i < reqs.size(); ++i) futs.push_back(clients_[i % clients_.size()]->generate_async({reqs[i]}, timeout));
  std::vector<SampleOutput> out;
  for (size_t i = 0; i < futs.size(); ++i) {
    Result<GenerateReply> r = futs[i].get();
    if (!r.ok()) return make_error(r.status().code, "rid " + reqs[i].rid + ": " + r.status().message);
    for (auto& o : r->outputs) out.push_back(std::move(o));
  }
  return out;
}

Result<int64_t> Trainer::weight_version(int engine) {
  Client& c = *clients_.at(engine);
  uint64_t id = c.next_req_id();
  auto fut = c.call_raw("get_weight_version", wire::encode_req_id_only(id), {}, id, std::chrono::seconds(30));
  auto r = await_reply<WeightVersionReply>(fut, endpoints_[engine], wire::weight_version_reply_from_json);
  if (!r.ok()) return r.status();
  return r->version;
}

Status Trainer::shutdown_engines() {
  Status first;
  for (size_t i = 0; i < clients_.size(); ++i) {
    uint64_t id = clients_[i]->next_req_id();
    auto fut = clients_[i]->call_raw("shutdown", wire::encode_req_id_only(id), {}, id, std::chrono::seconds(30));
    auto r = fut.get();
    if (!r.ok() && first.ok()) first = make_error(r.status().code, "engine " + endpoints_[i] + ": " + r.status().message);
  }
  return first;
}

}  // namespace zr
