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
  UpdateWeightsCall call;
  call.version = version;
  call.path = "disk";
  call.disk_path = dir;
  call.in_flight = wire::in_flight_name(opt.in_flight);
  call.flush_cache = opt.flush_cache;
  return send_update(std::move(call), opt.timeout);
}

// Lays the checkpoint's tensors out in one shared-memory segment, checksums them, and sends only
// the segment's name and the tensor list; engines map it and serve from it in place.
Result<PublishResult> Trainer::publish_ipc(const std::string& dir, int64_t version, const PublishOptions& opt) {
  auto ar = SafetensorsArchive::open_dir(dir);
  if (!ar.ok()) return ar.status();
  UpdateWeightsCall call;
  call.version = version;
  call.path = "ipc";
  call.in_flight = wire::in_flight_name(opt.in_flight);
  call.flush_cache = opt.flush_cache;
  std::vector<const TensorView*> views;
  for (const auto& [name, v] : ar->tensors()) {
    if (!wanted(name, opt.only) || name.ends_with("rotary_emb.inv_freq")) continue;
    call.tensors.push_back({name, dtype_name(v.dtype), v.shape, v.nbytes, 0, 0});
    views.push_back(&v);
  }
  if (call.tensors.empty()) return make_error(ErrorCode::invalid_argument, "only: no tensor of " + dir + " matches");
  call.shm_bytes = assign_transfer_offsets(call.tensors);
  auto seg = ShmSegment::create("zrollout-w" + std::to_string(version), call.shm_bytes);
  if (!seg.ok()) return seg.status();
  auto* base = static_cast<uint8_t*>(seg->data());
  for (size_t i = 0; i < views.size(); ++i) {
    std::memcpy(base + call.tensors[i].offset, views[i]->data, views[i]->nbytes);
    call.tensors[i].checksum = checksum64(base + call.tensors[i].offset, views[i]->nbytes);
  }
  call.shm_name = seg->name();
  auto res = send_update(std::move(call), opt.timeout);
  seg->unlink();  // every engine has mapped it (or failed); mappings outlive the name
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
