// What one caller may ask of a server (an engine or a router): flags of `zrollout serve` and
// `zrollout router` with their defaults in the README. Each refusal is an error reply naming the
// field and the flag; nothing else is disturbed. Both servers check with the one function below,
// so a router refuses exactly what an engine would. Also SGLang's clip of max_new_tokens.
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string_view>

#include "comm/status.h"

namespace zr {

struct CallLimits {
  int max_prompts_per_call = 4096;  // requests in one generate / score call (--max-prompts-per-call)
  int max_n = 256;                  // sampling_params.n (--max-n)
  // Requests one connection may have in flight (--max-in-flight); connections with a trainer key
  // (a router, a trainer) are not counted.
  int max_in_flight = 65536;
};

// The limits for a call of `prompts` requests whose largest n is `max_n`, from a connection that
// already has `in_flight` requests in flight (nullopt: not counted, a trainer key).
// invalid_argument (batch / sampling_params.n) or unavailable (the in-flight cap).
Status check_call_limits(const CallLimits& limits, size_t prompts, int max_n, std::optional<size_t> in_flight);

// max_new_tokens: nil on the wire (SGLang's None): as many as the context allows, after the clip
// below. SGLang's own stand-in for None.
inline constexpr int kMaxNewTokensUnset = 1 << 30;

// What a generate request may produce at most, SGLang's rule (Scheduler.handle_generate_request):
// max_new_tokens is clipped to max_req_len - prompt_len - 1 with max_req_len = min(context_len - 1,
// kv_positions - 1), so prompt + output stays 2 below the context. Negative: not even one token.
inline int generation_budget(int prompt_len, int context_len, int kv_positions = kMaxNewTokensUnset) {
  const int max_req_len = std::min(context_len - 1, kv_positions - 1);
  return max_req_len - prompt_len - 1;
}

// Whether a connection with this CURVE role (Frame::user_id; "" without CURVE) counts against
// --max-in-flight: every one but a trainer key's.
inline bool counts_in_flight(std::string_view role) { return role != "trainer"; }

}  // namespace zr
