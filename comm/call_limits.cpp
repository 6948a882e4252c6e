#include "comm/call_limits.h"

#include <string>

namespace zr {

Status check_call_limits(const CallLimits& l, size_t prompts, int max_n, std::optional<size_t> in_flight) {
  if (prompts > static_cast<size_t>(l.max_prompts_per_call))
    return make_error(ErrorCode::invalid_argument,
                      "batch: " + std::to_string(prompts) +
                          " requests in one call exceed the server's --max-prompts-per-call " +
                          std::to_string(l.max_prompts_per_call));
  if (max_n > l.max_n)
    return make_error(ErrorCode::invalid_argument, "sampling_params.n: " + std::to_string(max_n) +
                                                       " exceeds the server's --max-n " + std::to_string(l.max_n));
  if (in_flight && *in_flight + prompts > static_cast<size_t>(l.max_in_flight))
    return make_error(ErrorCode::unavailable, "batch: this connection has " + std::to_string(*in_flight) +
                                                  " requests in flight; " + std::to_string(prompts) +
                                                  " more exceed the server's --max-in-flight " +
                                                  std::to_string(l.max_in_flight));
  return {};
}

}  // namespace zr
