#include "model/safetensors.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace zr {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// A read-only private mapping of a whole file; unmapped when the last TensorView owner lets go.
// Move-only by construction (held through shared_ptr, never copied).
class Mapping {
 public:
  Mapping(void* addr, size_t len, bool owned = true) : addr_(addr), len_(len), owned_(owned) {}
  ~Mapping() {
    if (addr_ && owned_) ::munmap(addr_, len_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(addr_); }
  size_t size() const { return len_; }

 private:
  void* addr_;
  size_t len_;
  bool owned_;  // false: borrowed bytes (parse_bytes)
};

// Thrown only while parsing a header; caught in open_file.
struct HeaderError {
  ErrorCode code;
  std::string message;
};

[[noreturn]] void fail(ErrorCode code, std::string message) { throw HeaderError{code, std::move(message)}; }

std::string errno_text() { return std::strerror(errno); }

Result<std::shared_ptr<const Mapping>> map_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    ErrorCode code = errno == ENOENT ? ErrorCode::not_found : ErrorCode::io_error;
    return make_error(code, path + ": cannot open: " + errno_text());
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string e = errno_text();
    ::close(fd);
    return make_error(ErrorCode::io_error, path + ": fstat failed: " + e);
  }
  const auto len = static_cast<size_t>(st.st_size);
  if (len < 8) {
    ::close(fd);
    return make_error(ErrorCode::io_error, path + ": truncated: " + std::to_string(len) + " bytes, no header");
  }
  void* addr = ::mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd, 0);
  std::string e = errno_text();
  ::close(fd);  // the mapping keeps the file referenced
  if (addr == MAP_FAILED) return make_error(ErrorCode::io_error, path + ": mmap failed: " + e);
  ::madvise(addr, len, MADV_WILLNEED);  // advisory; failure is harmless
#ifdef MADV_HUGEPAGE
  ::madvise(addr, len, MADV_HUGEPAGE);
#endif
  return std::shared_ptr<const Mapping>(std::make_shared<Mapping>(addr, len));
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

uint64_t get_u64(const json& v, const std::string& what) {
  if (!v.is_number_unsigned()) fail(ErrorCode::io_error, what + " must be a non-negative integer");
  return v.get<uint64_t>();
}

// One header entry -> TensorView pointing into the data section [data, data + data_len).
TensorView parse_entry(const std::string& name, const json& e, const uint8_t* data, uint64_t data_len) {
  const std::string where = "tensor " + name;
  if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
    fail(ErrorCode::io_error, where + ": header entry needs dtype, shape and data_offsets");
  if (!e["dtype"].is_string()) fail(ErrorCode::io_error, where + ": dtype must be a string");
  const std::string dt = e["dtype"].get<std::string>();
  auto dtype = dtype_from_name(dt);
  if (!dtype) fail(ErrorCode::unsupported, where + ": dtype " + dt + " is not supported (F32, BF16, F16)");
  TensorView v;
  v.name = name;
  v.dtype = *dtype;
  if (!e["shape"].is_array()) fail(ErrorCode::io_error, where + ": shape must be a list");
  uint64_t numel = 1;
  for (const auto& d : e["shape"]) {
    uint64_t n = get_u64(d, where + ": shape entry");
    if (n > (uint64_t{1} << 48) || __builtin_mul_overflow(numel, n, &numel))
      fail(ErrorCode::io_error, where + ": shape is too large");
    v.shape.push_back(static_cast<int64_t>(n));
  }
  const json& off = e["data_offsets"];
  if (!off.is_array() || off.size() != 2) fail(ErrorCode::io_error, where + ": data_offsets must be [begin, end]");
  uint64_t begin = get_u64(off[0], where + ": data_offsets"), end = get_u64(off[1], where + ": data_offsets");
  if (begin > end) fail(ErrorCode::io_error, where + ": data_offsets begin > end");
  if (end > data_len)
    fail(ErrorCode::io_error, where + ": truncated: data ends at " + std::to_string(end) +
                                  " but the data section has " + std::to_string(data_len) + " bytes");
  uint64_t want = numel * dtype_size(*dtype);
  if (end - begin != want)
    fail(ErrorCode::io_error, where + ": data_offsets span " + std::to_string(end - begin) + " bytes but " + dt + " " +
                                  shape_text(v.shape) + " needs " + std::to_string(want));
  v.data = data + begin;
  v.nbytes = static_cast<size_t>(want);
  return v;
}

std::map<std::string, TensorView> parse_header(const Mapping& m) {
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | m.bytes()[i];  // little-endian u64
  if (hlen > m.size() - 8)
    fail(ErrorCode::io_error, "header length " + std::to_string(hlen) + " is beyond the file size " +
                                  std::to_string(m.size()) + " (truncated?)");
  const char* text = reinterpret_cast<const char*>(m.bytes() + 8);
  json h = json::parse(text, text + hlen);
  if (!h.is_object()) fail(ErrorCode::io_error, "header must be a JSON object");
  const uint8_t* data = m.bytes() + 8 + hlen;
  const uint64_t data_len = m.size() - 8 - hlen;
  std::map<std::string, TensorView> out;
  for (const auto& [name, e] : h.items()) {
    if (name == "__metadata__") continue;
    out.emplace(name, parse_entry(name, e, data, data_len));
  }
  return out;
}

Result<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::io_error, path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// weight_map of DIR/model.safetensors.index.json, grouped by shard file.
Result<std::map<std::string, std::vector<std::string>>> read_index(const std::string& path) {
  auto text = read_text(path);
  if (!text.ok()) return text.status();
  std::map<std::string, std::vector<std::string>> by_shard;
  try {
    json j = json::parse(*text);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      return make_error(ErrorCode::io_error, path + ": weight_map is missing or not an object");
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string())
        return make_error(ErrorCode::io_error, path + ": weight_map[" + name + "] is not a string");
      std::string f = file.get<std::string>();
      fs::path p(f);
      if (f.empty() || p.is_absolute() || f.find("..") != std::string::npos)
        return make_error(ErrorCode::io_error, path + ": weight_map[" + name + "] = '" + f + "' is not a file name");
      by_shard[f].push_back(name);
    }
  } catch (const json::exception& e) {
    return make_error(ErrorCode::io_error, path + ": invalid JSON: " + e.what());
  }
  return by_shard;
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const TensorView* SafetensorsArchive::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

Result<SafetensorsArchive> SafetensorsArchive::parse_bytes(const void* bytes, size_t len) {
  if (len < 8) return make_error(ErrorCode::io_error, "truncated: " + std::to_string(len) + " bytes, no header");
  auto borrowed = std::make_shared<const Mapping>(const_cast<void*>(bytes), len, /*owned=*/false);
  SafetensorsArchive ar;
  try {
    ar.tensors_ = parse_header(*borrowed);
  } catch (const HeaderError& e) {
    return make_error(e.code, e.message);
  } catch (const json::exception& e) {
    return make_error(ErrorCode::io_error, std::string("bad header JSON: ") + e.what());
  }
  return ar;
}

Result<SafetensorsArchive> SafetensorsArchive::open_file(const std::string& path) {
  auto mapping = map_file(path);
  if (!mapping.ok()) return mapping.status();
  SafetensorsArchive ar;
  try {
    ar.tensors_ = parse_header(**mapping);
  } catch (const HeaderError& e) {
    return make_error(e.code, path + ": " + e.message);
  } catch (const json::exception& e) {
    return make_error(ErrorCode::io_error, path + ": bad header JSON: " + e.what());
  }
  std::shared_ptr<const void> owner = *mapping;
  for (auto& [name, view] : ar.tensors_) view.owner = owner;
  return ar;
}

Result<SafetensorsArchive> SafetensorsArchive::open_dir(const std::string& dir) {
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::error_code ec;
  if (fs::exists(single, ec)) return open_file(single.string());
  if (!fs::exists(index, ec))
    return make_error(ErrorCode::not_found,
                      dir + ": no model.safetensors or model.safetensors.index.json in this directory");
  auto by_shard = read_index(index.string());
  if (!by_shard.ok()) return by_shard.status();
  SafetensorsArchive ar;
  for (const auto& [file, names] : *by_shard) {
    const std::string shard_path = (fs::path(dir) / file).string();
    auto shard = open_file(shard_path);
    if (!shard.ok())
      return make_error(shard.status().code, index.string() + ": shard " + file + ": " + shard.status().message);
    for (const auto& name : names) {
      const TensorView* v = shard->find(name);
      if (!v)
        return make_error(ErrorCode::io_error, index.string() + ": tensor " + name + " is listed in shard " + file +
                                                   " but the shard does not contain it");
      ar.tensors_.emplace(name, *v);
    }
    if (shard->tensors().size() != names.size())
      spdlog::warn("{}: {} tensors not listed in the index are ignored", shard_path,
                   shard->tensors().size() - names.size());
  }
  return ar;
}

namespace {

Result<std::string> make_header(const std::vector<TensorBytes>& tensors,
                                const std::map<std::string, std::string>& metadata) {
  json h = json::object();  // std::map-backed: keys sorted
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return make_error(ErrorCode::invalid_argument, "tensor " + t.name + ": negative dimension");
      numel *= static_cast<uint64_t>(d);
    }
    if (numel * dtype_size(t.dtype) != t.nbytes)
      return make_error(ErrorCode::invalid_argument, "tensor " + t.name + ": " + std::to_string(t.nbytes) +
                                                         " bytes do not match " + dtype_name(t.dtype) + " " +
                                                         shape_text(t.shape));
    if (t.name.empty() || t.name == "__metadata__" || h.contains(t.name))
      return make_error(ErrorCode::invalid_argument, "tensor '" + t.name + "': empty, reserved or duplicate name");
    h[t.name] = {{"dtype", dtype_name(t.dtype)},
                 {"shape", t.shape},
                 {"data_offsets", {offset, offset + numel * dtype_size(t.dtype)}}};
    offset += t.nbytes;
  }
  std::string text = h.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace

Status write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::vector<TensorBytes> views;
  views.reserve(tensors.size());
  for (const auto& t : tensors) views.push_back({t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
  return write_safetensors(path, views, metadata);
}

Status write_safetensors(const std::string& path, const std::vector<TensorBytes>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  auto header = make_header(tensors, metadata);
  if (!header.ok()) return make_error(header.status().code, path + ": " + header.status().message);
  // Written beside the target and renamed: readers that mapped the old file keep valid pages.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return make_error(ErrorCode::io_error, path + ": cannot create: " + errno_text());
  uint8_t len[8];
  uint64_t n = header->size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(header->data(), 1, n, f) == n;
  for (const auto& t : tensors) ok = ok && std::fwrite(t.data, 1, t.nbytes, f) == t.nbytes;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string e = errno_text();
    std::remove(tmp.c_str());
    return make_error(ErrorCode::io_error, path + ": write failed: " + e);
  }
  return Status::ok_status();
}

}  // namespace zr
