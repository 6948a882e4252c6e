// The only msgpack in runtime/: a three-field map, so bad input gets a decodable error reply even
// before the comm codec is installed.
#include "runtime/error_reply.h"

#include <msgpack.hpp>

namespace zr {

std::string default_error_body(uint64_t req_id, const Status& status) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(3);
  pk.pack(std::string_view("req_id"));
  pk.pack(req_id);
  pk.pack(std::string_view("code"));
  pk.pack(std::string_view(error_code_name(status.code)));
  pk.pack(std::string_view("message"));
  pk.pack(status.message);
  return std::string(buf.data(), buf.size());
}

uint64_t default_req_id_of(std::string_view body) {
  try {
    msgpack::object_handle oh = msgpack::unpack(body.data(), body.size());
    const msgpack::object& o = oh.get();
    if (o.type != msgpack::type::MAP) return 0;
    for (uint32_t i = 0; i < o.via.map.size; ++i) {
      const msgpack::object_kv& kv = o.via.map.ptr[i];
      if (kv.key.type != msgpack::type::STR) continue;
      if (std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) != "req_id") continue;
      return kv.val.type == msgpack::type::POSITIVE_INTEGER ? kv.val.via.u64 : 0;
    }
  } catch (const std::exception&) {
    // Undecodable body: the error reply still goes out, without a req_id.
  }
  return 0;
}

}  // namespace zr
