#include "comm/wire_weights.h"

#include <limits>

#include "comm/wire_fields.h"

namespace zr::wire {

using detail::field_error;
using detail::FieldReader;

namespace {

Status read_tensor(const json& j, const std::string& prefix, TensorMeta& m) {
  FieldReader f(j, prefix, true);
  f.get("name", m.name);
  f.get("dtype", m.dtype);
  f.get("shape", m.shape);
  f.get("nbytes", m.nbytes);
  f.get("checksum", m.checksum);
  f.get("offset", m.offset);
  ZR_RETURN_IF_ERROR(f.finish());
  if (m.name.empty()) return field_error(prefix + "name", "required");
  return {};
}

json tensor_json(const TensorMeta& m) {
  return {{"name", m.name},     {"dtype", m.dtype},       {"shape", m.shape},
          {"nbytes", m.nbytes}, {"checksum", m.checksum}, {"offset", m.offset}};
}

}  // namespace

std::optional<InFlightPolicy> in_flight_from_name(std::string_view s) {
  if (s == "drain") return InFlightPolicy::drain;
  if (s == "abort") return InFlightPolicy::abort;
  if (s == "continue") return InFlightPolicy::continue_;
  if (s == "recompute") return InFlightPolicy::recompute;
  return std::nullopt;
}

std::optional<WeightPath> weight_path_from_name(std::string_view s) {
  if (s == "broadcast") return WeightPath::broadcast;
  if (s == "ipc") return WeightPath::ipc;
  if (s == "disk") return WeightPath::disk;
  return std::nullopt;
}

const char* weight_path_name(WeightPath p) {
  switch (p) {
    case WeightPath::broadcast:
      return "broadcast";
    case WeightPath::ipc:
      return "ipc";
    case WeightPath::disk:
      return "disk";
  }
  return "ipc";
}

const char* in_flight_name(InFlightPolicy p) {
  switch (p) {
    case InFlightPolicy::drain:
      return "drain";
    case InFlightPolicy::abort:
      return "abort";
    case InFlightPolicy::continue_:
      return "continue";
    case InFlightPolicy::recompute:
      return "recompute";
  }
  return "drain";
}

Result<UpdateWeightsCall> decode_update_weights(std::string_view body) {
  auto j = unpack_body(body);
  if (!j.ok()) return j.status();
  UpdateWeightsCall c;
  FieldReader f(*j, "", true);
  f.get("req_id", c.req_id);
  f.get("version", c.version);
  std::string path, in_flight = "drain";
  f.get("path", path);
  f.get("in_flight", in_flight);
  f.get("flush_cache", c.flush_cache);
  f.get("shm_name", c.shm_name);
  f.get("shm_bytes", c.shm_bytes);
  f.get("shm_offset", c.shm_offset);
  f.get("shm_stream", c.shm_stream);
  f.get("shm_keep", c.shm_keep);
  f.get("shm_pool", c.shm_pool);
  f.get("pull_pid", c.pull_pid);
  f.get("pull_addr", c.pull_addr);
  f.get("pull_addrs", c.pull_addrs);
  f.get("disk_path", c.disk_path);
  f.get("bucket_bytes", c.bucket_bytes);
  f.get("root", c.root);
  f.get("group_epoch", c.group_epoch);
  f.get("group_ranks", c.group_ranks);
  f.get("checksum_trailer", c.checksum_trailer);
  if (const json* t = f.take("tensors")) {
    if (!t->is_array()) f.fail("tensors", "expected an array");
    for (size_t i = 0; f.ok() && t->is_array() && i < t->size(); ++i) {
      TensorMeta m;
      f.fail_status(read_tensor((*t)[i], "tensors[" + std::to_string(i) + "].", m));
      c.tensors.push_back(std::move(m));
    }
  }
  ZR_RETURN_IF_ERROR(f.finish());
  auto p = weight_path_from_name(path);
  if (!p) return field_error("path", "expected 'broadcast', 'ipc' or 'disk'");
  c.path = *p;
  auto policy = in_flight_from_name(in_flight);
  if (!policy) return field_error("in_flight", "expected drain, abort, continue or recompute");
  c.in_flight = *policy;
  if (c.path == WeightPath::disk && c.disk_path.empty()) return field_error("disk_path", "required for path disk");
  if (c.path == WeightPath::ipc && c.shm_name.empty() && c.pull_pid == 0)
    return field_error("shm_name", "required for path ipc (or pull_pid)");
  if (c.pull_pid < 0) return field_error("pull_pid", "must be a process id");
  if (c.pull_pid != 0 && !c.shm_name.empty()) return field_error("pull_pid", "a pull carries no shm_name");
  if (c.pull_pid != 0 && !c.shm_stream) return field_error("pull_pid", "a pull is a streamed transfer (shm_stream)");
  if (c.pull_pid != 0 && c.pull_addr == 0) return field_error("pull_addr", "required with pull_pid");
  if (!c.pull_addrs.empty() && c.pull_addrs.size() != c.tensors.size())
    return field_error("pull_addrs", "one address per tensor (" + std::to_string(c.tensors.size()) + "), got " +
                                         std::to_string(c.pull_addrs.size()));
  if (c.shm_offset % 64 != 0) return field_error("shm_offset", "must be a multiple of 64");
  if (c.shm_offset > std::numeric_limits<uint64_t>::max() - c.shm_bytes)
    return field_error("shm_offset", "shm_offset + shm_bytes overflows");
  if (c.shm_stream && c.shm_offset < 64 + 8 * c.tensors.size())
    return field_error("shm_offset", "a streamed segment's header (64 + 8 bytes per tensor) comes first");
  if (c.path != WeightPath::disk && c.tensors.empty())
    return field_error("tensors", std::string("required for path ") + path);
  if (c.bucket_bytes == 0) return field_error("bucket_bytes", "must be > 0");
  if (c.group_epoch == 0 && !c.group_ranks.empty())
    return field_error("group_ranks", "only with a group_epoch > 0 (epoch 0 is the whole weight group)");
  if (c.group_epoch > 0 && c.group_ranks.empty()) return field_error("group_ranks", "required with a group_epoch > 0");
  if (c.checksum_trailer && c.path != WeightPath::broadcast)
    return field_error("checksum_trailer", "only for path broadcast");
  return c;
}

Result<WeightsChecksumCall> decode_weights_checksum(std::string_view body) {
  auto j = unpack_body(body);
  if (!j.ok()) return j.status();
  WeightsChecksumCall c;
  FieldReader f(*j, "", true);
  f.get("req_id", c.req_id);
  f.get("names", c.names);
  ZR_RETURN_IF_ERROR(f.finish());
  return c;
}

Result<MemoryCall> decode_memory(std::string_view body) {
  auto j = unpack_body(body);
  if (!j.ok()) return j.status();
  MemoryCall c;
  FieldReader f(*j, "", true);
  f.get("req_id", c.req_id);
  f.get("tags", c.tags);
  ZR_RETURN_IF_ERROR(f.finish());
  if (c.tags.empty()) return field_error("tags", "give at least one of 'weights', 'kv_cache'");
  for (size_t i = 0; i < c.tags.size(); ++i)
    if (c.tags[i] != "weights" && c.tags[i] != "kv_cache")
      return field_error("tags[" + std::to_string(i) + "]", "expected 'weights' or 'kv_cache'");
  return c;
}

std::string encode(const UpdateWeightsCall& c) {
  json tensors = json::array();
  for (const auto& m : c.tensors) tensors.push_back(tensor_json(m));
  return pack_body({{"req_id", c.req_id},
                    {"version", c.version},
                    {"path", weight_path_name(c.path)},
                    {"tensors", tensors},
                    {"in_flight", in_flight_name(c.in_flight)},
                    {"flush_cache", c.flush_cache},
                    {"shm_name", c.shm_name},
                    {"shm_bytes", c.shm_bytes},
                    {"shm_offset", c.shm_offset},
                    {"shm_stream", c.shm_stream},
                    {"shm_keep", c.shm_keep},
                    {"shm_pool", c.shm_pool},
                    {"pull_pid", c.pull_pid},
                    {"pull_addr", c.pull_addr},
                    {"pull_addrs", c.pull_addrs},
                    {"disk_path", c.disk_path},
                    {"bucket_bytes", c.bucket_bytes},
                    {"root", c.root},
                    {"group_epoch", c.group_epoch},
                    {"group_ranks", c.group_ranks},
                    {"checksum_trailer", c.checksum_trailer}});
}
std::string encode(const WeightsChecksumCall& c) { return pack_body({{"req_id", c.req_id}, {"names", c.names}}); }
std::string encode(const MemoryCall& c) { return pack_body({{"req_id", c.req_id}, {"tags", c.tags}}); }
std::string encode(const UpdateWeightsReply& r) {
  return pack_body({{"req_id", r.req_id},
                    {"version", r.version},
                    {"bytes", r.bytes},
                    {"stage_seconds", r.stage_seconds},
                    {"commit_seconds", r.commit_seconds},
                    {"zero_copy_tensors", r.zero_copy_tensors},
                    {"shm_in_use", r.shm_in_use}});
}
std::string encode(const WeightVersionReply& r) {
  return pack_body({{"req_id", r.req_id}, {"version", r.version}, {"shm_in_use", r.shm_in_use}});
}
std::string encode(const WeightsChecksumReply& r) {
  json tensors = json::array();
  for (const auto& t : r.tensors)
    tensors.push_back({{"name", t.name}, {"dtype", t.dtype}, {"checksum", t.checksum}, {"tp_rank", t.tp_rank}});
  return pack_body(
      {{"req_id", r.req_id}, {"rank", r.rank}, {"version", r.version}, {"tp_size", r.tp_size}, {"tensors", tensors}});
}
std::string encode(const MemoryReply& r) {
  return pack_body({{"req_id", r.req_id},
                    {"bytes", r.bytes},
                    {"version", r.version ? json(*r.version) : json(nullptr)},
                    {"released", r.released}});
}

Result<UpdateWeightsReply> update_weights_reply_from_json(const json& j) {
  UpdateWeightsReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("version", r.version);
  f.get("bytes", r.bytes);
  f.get("stage_seconds", r.stage_seconds);
  f.get("commit_seconds", r.commit_seconds);
  f.get("zero_copy_tensors", r.zero_copy_tensors);
  f.get("shm_in_use", r.shm_in_use);
  ZR_RETURN_IF_ERROR(f.finish());
  return r;
}

Result<WeightVersionReply> weight_version_reply_from_json(const json& j) {
  WeightVersionReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("version", r.version);
  f.get("shm_in_use", r.shm_in_use);
  ZR_RETURN_IF_ERROR(f.finish());
  return r;
}

Result<WeightsChecksumReply> weights_checksum_reply_from_json(const json& j) {
  WeightsChecksumReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("rank", r.rank);
  f.get("version", r.version);
  f.get("tp_size", r.tp_size);
  if (const json* t = f.take("tensors"); t && t->is_array())
    for (size_t i = 0; i < t->size(); ++i) {
      TensorChecksum c;
      FieldReader g((*t)[i], "tensors[" + std::to_string(i) + "].", false);
      g.get("name", c.name);
      g.get("dtype", c.dtype);
      g.get("checksum", c.checksum);
      g.get("tp_rank", c.tp_rank);
      f.fail_status(g.finish());
      r.tensors.push_back(std::move(c));
    }
  ZR_RETURN_IF_ERROR(f.finish());
  return r;
}

Result<MemoryReply> memory_reply_from_json(const json& j) {
  MemoryReply r;
  FieldReader f(j, "", false);
  f.get("req_id", r.req_id);
  f.get("bytes", r.bytes);
  if (f.take("version")) {  // null or absent: nothing served
    int64_t v = 0;
    f.get("version", v);
    r.version = v;
  }
  f.get("released", r.released);
  ZR_RETURN_IF_ERROR(f.finish());
  return r;
}

}  // namespace zr::wire
