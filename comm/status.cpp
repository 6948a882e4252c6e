#include "comm/status.h"

#include <array>

namespace zr {

namespace {
constexpr std::array<const char*, 17> kNames = {
    "ok",
    "bad_message",
    "unknown_op",
    "invalid_argument",
    "out_of_range",
    "too_long",
    "duplicate_rid",
    "not_found",
    "unsupported",
    "weight_mismatch",
    "checksum_mismatch",
    "io_error",
    "unavailable",
    "timeout",
    "aborted",
    "internal",
    "permission_denied",
};
}  // namespace

const char* error_code_name(ErrorCode c) {
  auto i = static_cast<size_t>(c);
  return i < kNames.size() ? kNames[i] : "internal";
}

std::optional<ErrorCode> error_code_from_name(std::string_view name) {
  for (size_t i = 0; i < kNames.size(); ++i)
    if (name == kNames[i]) return static_cast<ErrorCode>(i);
  return std::nullopt;
}

std::string Status::to_string() const {
  if (ok()) return "ok";
  return std::string(error_code_name(code)) + ": " + message;
}

void check_failed(const char* expr, const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "ZR_CHECK failed: %s at %s:%d%s%s\n", expr, file, line, msg.empty() ? "" : ": ", msg.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace zr
