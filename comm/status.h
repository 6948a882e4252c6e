// Errors users can cause travel as values (Status / Result<T>) with a wire code and a message that
// names the offending field. Invariants that only a bug can break use ZR_CHECK, which stays on in
// release builds and aborts with file:line.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace zr {

// Stable wire codes: docs/protocol.md lists them. Append only.
enum class ErrorCode {
  ok = 0,
  bad_message,       // undecodable frame or msgpack
  unknown_op,        // message type not in the dispatch table
  invalid_argument,  // wrong type, unknown field, impossible value
  out_of_range,      // token id outside the vocabulary
  too_long,          // prompt (plus min_new_tokens) over the context length
  duplicate_rid,     // rid already in flight
  not_found,         // missing file / rid / session
  unsupported,       // architecture, dtype, feature this build does not have
  weight_mismatch,   // tensor name, shape or dtype does not match the model
  checksum_mismatch,
  io_error,     // truncated or unreadable file
  unavailable,  // memory released, engine shutting down
  timeout,
  aborted,
  internal,
  permission_denied,  // the connection's CURVE role may not call this op, or a path outside the allowed roots
};

const char* error_code_name(ErrorCode c);
std::optional<ErrorCode> error_code_from_name(std::string_view name);

struct Status {
  ErrorCode code = ErrorCode::ok;
  std::string message;

  static Status ok_status() { return {}; }
  bool ok() const { return code == ErrorCode::ok; }
  std::string to_string() const;
};

inline Status make_error(ErrorCode code, std::string message) { return Status{code, std::move(message)}; }

// A value or an error. Deliberately tiny: C++20 has no std::expected.
template <class T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}       // NOLINT(implicit)
  Result(Status error) : v_(std::move(error)) {}  // NOLINT(implicit)
  bool ok() const { return v_.index() == 0; }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const Status& status() const {
    static const Status kOk{};
    return ok() ? kOk : std::get<1>(v_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

[[noreturn]] void check_failed(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace zr

#define ZR_CHECK(cond)                                              \
  do {                                                              \
    if (!(cond)) ::zr::check_failed(#cond, __FILE__, __LINE__, {}); \
  } while (0)
#define ZR_CHECK_MSG(cond, msg)                                        \
  do {                                                                 \
    if (!(cond)) ::zr::check_failed(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
// Propagate an error Status from an expression returning Status.
#define ZR_RETURN_IF_ERROR(expr)     \
  do {                               \
    ::zr::Status zr_st_ = (expr);    \
    if (!zr_st_.ok()) return zr_st_; \
  } while (0)
