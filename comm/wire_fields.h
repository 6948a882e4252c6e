// Internal to the codecs (json_codec, wire_codec, wire_replies, wire_weights): typed reads of JSON
// values that report the field path, and a reader for one JSON object. Not part of the public API.
// Thread-safety: pure functions and a reader object owned by one call.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "comm/status.h"

namespace zr::wire::detail {

using nlohmann::json;

inline Status field_error(const std::string& path, const std::string& what) {
  return make_error(ErrorCode::invalid_argument, path + ": " + what);
}

template <class T>
struct IsVector : std::false_type {};
template <class T>
struct IsVector<std::vector<T>> : std::true_type {};

template <class T>
Status read_int(const json& v, const std::string& path, T& out) {
  if (!v.is_number_integer()) return field_error(path, "expected an integer");
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<T>::max())) return field_error(path, "integer out of range");
    out = static_cast<T>(u);
    return {};
  }
  int64_t s = v.get<int64_t>();
  if constexpr (std::is_unsigned_v<T>) {
    if (s < 0) return field_error(path, "expected a non-negative integer");
    if (uint64_t(s) > uint64_t(std::numeric_limits<T>::max())) return field_error(path, "integer out of range");
  } else {
    if (s < int64_t(std::numeric_limits<T>::min()) || s > int64_t(std::numeric_limits<T>::max()))
      return field_error(path, "integer out of range");
  }
  out = static_cast<T>(s);
  return {};
}

template <class T>
Status read_value(const json& v, const std::string& path, T& out);

// read_value with the path built only when the value is wrong (path_of() renders it): a body's
// fields and list elements are read without a string made for each.
template <class T, class PathFn>
Status read_value_at(const json& v, const PathFn& path_of, T& out) {
  static const std::string kUnrendered;
  if (read_value(v, kUnrendered, out).ok()) return {};
  return read_value(v, path_of(), out);
}

// bool, integers, float/double, std::string and std::vector of those.
template <class T>
Status read_value(const json& v, const std::string& path, T& out) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) return field_error(path, "expected true or false");
    out = v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    return read_int(v, path, out);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) return field_error(path, "expected a number");
    double d = v.get<double>();
    // Out of range is inf, not undefined behaviour.
    out = std::abs(d) > double(std::numeric_limits<T>::max()) && std::isfinite(d)
              ? std::copysign(std::numeric_limits<T>::infinity(), T(d > 0 ? 1 : -1))
              : static_cast<T>(d);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) return field_error(path, "expected a string");
    out = v.get<std::string>();
  } else if constexpr (IsVector<T>::value) {
    if (!v.is_array()) return field_error(path, "expected an array");
    out.clear();
    out.reserve(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      typename T::value_type e{};
      Status st = read_value_at(
          v[i], [&] { return path + "[" + std::to_string(i) + "]"; }, e);
      if (!st.ok()) return st;
      out.push_back(std::move(e));
    }
  } else {
    static_assert(sizeof(T) == 0, "unsupported field type");
  }
  return {};
}

// Reads the fields of one JSON object; the first error wins. Strict readers (requests) reject
// fields nobody asked for; lenient ones (replies) ignore them. Absent and null fields leave the
// output at its default.
class FieldReader {
 public:
  FieldReader(const json& j, std::string prefix, bool strict) : j_(j), prefix_(std::move(prefix)), strict_(strict) {
    if (!j.is_object())
      err_ = field_error(prefix_.empty() ? "body" : prefix_.substr(0, prefix_.size() - 1), "expected a map");
  }
  std::string path(const std::string& name) const { return prefix_ + name; }
  bool ok() const { return err_.ok(); }

  // The value of a present, non-null field (marked as used), else nullptr. `name` outlives the
  // reader (a literal, or a key of the object read).
  const json* take(const char* name) {
    used_.push_back(name);
    if (!err_.ok()) return nullptr;
    auto it = j_.find(name);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  template <class T>
  void get(const char* name, T& out) {
    if (const json* v = take(name))
      fail_status(read_value_at(
          *v, [&] { return path(name); }, out));
  }
  void fail(const char* name, const std::string& what) { fail_status(field_error(path(name), what)); }
  void fail_status(Status st) {
    if (err_.ok() && !st.ok()) err_ = std::move(st);
  }
  Status finish() const {
    if (!err_.ok() || !strict_) return err_;
    for (auto it = j_.begin(); it != j_.end(); ++it)
      if (std::find(used_.begin(), used_.end(), it.key()) == used_.end())
        return field_error(path(it.key()), "unknown field");
    return {};
  }

 private:
  const json& j_;
  std::string prefix_;
  bool strict_;
  std::vector<std::string_view> used_;  // a few fields each: a scan beats a set's allocations
  Status err_;
};

}  // namespace zr::wire::detail
