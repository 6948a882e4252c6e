// Internal to the msgpack codec (wire_codec.cpp, wire_pack.cpp): a msgpack writer for encoders
// that go straight from a wire struct to bytes, without a nlohmann::json tree in between (the
// tree cost ~15-30 us per reply body on a 1-token generate, bench_service --hops).
//
// Maps are written before their size is known: begin_map() reserves a map32 header, each key()
// counts one member, end_map() writes the smallest header for the count and moves the members
// back over the unused header bytes. The bytes are those msgpack-c's packer would write for the
// same values (pack_body's encoding: integers in their smallest form, floats always float64),
// with map members in the order written instead of sorted.
//
// Thread-safety: one writer per encode call. Ownership: the writer owns its buffer until take().
#pragma once

#include <msgpack.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace zr::wire::detail {

class MsgWriter {
 public:
  struct Map {
    size_t at;  // offset of the reserved header
    uint32_t count;
  };

  MsgWriter() : pk_(buf_) { buf_.s.reserve(256); }

  Map begin_map() {
    Map m{buf_.s.size(), 0};
    static constexpr char kReserved[5] = {static_cast<char>(0xdf), 0, 0, 0, 0};
    buf_.write(kReserved, sizeof kReserved);
    return m;
  }
  MsgWriter& key(Map& m, std::string_view k) {
    ++m.count;
    return str(k);
  }
  // The smallest header for m.count (fixmap, map16 or the reserved map32), members moved back.
  void end_map(const Map& m) {
    char* p = buf_.s.data() + m.at;
    const size_t body = buf_.s.size() - m.at - 5;
    size_t header = 5;
    if (m.count < 16) {
      p[0] = static_cast<char>(0x80 | m.count);
      header = 1;
    } else if (m.count < 65536) {
      p[0] = static_cast<char>(0xde);
      p[1] = static_cast<char>(m.count >> 8);
      p[2] = static_cast<char>(m.count);
      header = 3;
    } else {
      for (int i = 0; i < 4; ++i) p[1 + i] = static_cast<char>(m.count >> (24 - 8 * i));
    }
    if (header == 5) return;
    std::memmove(p + header, p + 5, body);
    buf_.s.resize(buf_.s.size() - (5 - header));
  }

  MsgWriter& array(size_t n) {
    pk_.pack_array(static_cast<uint32_t>(n));
    return *this;
  }
  MsgWriter& str(std::string_view s) {
    pk_.pack_str(static_cast<uint32_t>(s.size())).pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
    return *this;
  }
  MsgWriter& i64(int64_t v) {
    pk_.pack_int64(v);
    return *this;
  }
  MsgWriter& u64(uint64_t v) {
    pk_.pack_uint64(v);
    return *this;
  }
  // Always float64 (0xcb): msgpack-cxx's pack_double writes integral values as integers, and a
  // float field must stay a float on the wire (Python sees 0.0, not 0).
  MsgWriter& f64(double d) {
    uint64_t u = 0;
    std::memcpy(&u, &d, sizeof u);
    char b[9] = {static_cast<char>(0xcb)};
    for (int i = 0; i < 8; ++i) b[1 + i] = static_cast<char>(u >> (56 - 8 * i));
    buf_.write(b, sizeof b);
    return *this;
  }
  MsgWriter& boolean(bool b) {
    b ? pk_.pack_true() : pk_.pack_false();
    return *this;
  }
  MsgWriter& nil() {
    pk_.pack_nil();
    return *this;
  }
  MsgWriter& ints(const std::vector<int>& v) {
    array(v.size());
    for (int x : v) i64(x);
    return *this;
  }
  // Little-endian int32s as one bin (EncodeOptions::ids_as_bin).
  MsgWriter& bin_ids(const std::vector<int>& v) {
    pk_.pack_bin(static_cast<uint32_t>(v.size() * 4));
    std::string bytes(v.size() * 4, '\0');
    for (size_t i = 0; i < v.size(); ++i)
      for (int k = 0; k < 4; ++k) bytes[4 * i + k] = static_cast<char>(static_cast<uint32_t>(v[i]) >> (8 * k));
    pk_.pack_bin_body(bytes.data(), static_cast<uint32_t>(bytes.size()));
    return *this;
  }
  MsgWriter& strs(const std::vector<std::string>& v) {
    array(v.size());
    for (const auto& s : v) str(s);
    return *this;
  }

  std::string take() { return std::move(buf_.s); }

 private:
  struct Buffer {  // what msgpack::packer writes to; a std::string so end_map can shrink it
    std::string s;
    void write(const char* p, size_t n) { s.append(p, n); }
  };

  Buffer buf_;
  msgpack::packer<Buffer> pk_;
};

}  // namespace zr::wire::detail
