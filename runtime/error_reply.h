// The runtime's defaults for error replies, used until the owner installs the comm codec's
// (Actor::set_error_body / set_req_id_of). The default body is the msgpack map of ErrorReply in
// comm/messages.h: {"req_id": uint, "code": error_code_name(code), "message": str}.
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "comm/status.h"

namespace zr {

std::string default_error_body(uint64_t req_id, const Status& status);

// The unsigned integer under key "req_id" when `body` is a msgpack map that has one, else 0.
// Never throws: a body that does not decode gives 0.
uint64_t default_req_id_of(std::string_view body);

}  // namespace zr
