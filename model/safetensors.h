// Memory-mapped safetensors files, single or sharded (model.safetensors.index.json).
// Ownership: a SafetensorsArchive owns its mappings; TensorView pointers stay valid as long as the
// archive (or a shared_ptr to its mapping, see TensorView::owner) lives. Read-only, thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/status.h"
#include "model/dtype.h"

namespace zr {

struct TensorView {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // little-endian, possibly unaligned
  size_t nbytes = 0;
  std::shared_ptr<const void> owner;  // keeps the mapping alive
  int64_t numel() const;
};

class SafetensorsArchive {
 public:
  // DIR/model.safetensors, or the shards listed in DIR/model.safetensors.index.json.
  // Errors: not_found (no file), io_error (truncated / bad header), unsupported (dtype).
  static Result<SafetensorsArchive> open_dir(const std::string& dir);
  static Result<SafetensorsArchive> open_file(const std::string& path);
  // The same parse over bytes the caller keeps alive as long as the archive (fuzzing, tests):
  // the views point into `bytes`, nothing is copied or mapped.
  static Result<SafetensorsArchive> parse_bytes(const void* bytes, size_t len);

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;

 private:
  std::map<std::string, TensorView> tensors_;
};

// Writes one safetensors file with tensors in the given order (deterministic bytes: header keys
// sorted, 8-byte padded header, data in order). Used by make-model and tests.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
Status write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata = {});
// The same from bytes the caller holds (not copied first; alive during the call).
struct TensorBytes {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};
Status write_safetensors(const std::string& path, const std::vector<TensorBytes>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace zr
