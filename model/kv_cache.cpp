#include "model/kv_cache.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "comm/status.h"

namespace zr {

KvCache::KvCache(const ModelConfig& cfg, int block_size, size_t budget_bytes, DType dtype)
    : num_layers_(cfg.num_layers), kv_dim_(cfg.kv_dim()), block_size_(block_size), dtype_(dtype) {
  ZR_CHECK(block_size > 0);
  ZR_CHECK_MSG(dtype == DType::f32 || dtype == DType::bf16, "KV cache dtype must be f32 or bf16");
  size_t per_block = bytes_per_block();
  num_blocks_ = static_cast<int>(std::max<size_t>(1, budget_bytes / per_block));
  bytes_ = per_block * num_blocks_;
  // Anonymous mapping: pages are faulted on first write, so an unused budget costs nothing.
  void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ZR_CHECK_MSG(p != MAP_FAILED, "KV cache allocation failed");
  data_ = static_cast<char*>(p);
}

KvCache::~KvCache() {
  if (data_) munmap(data_, bytes_);
}

size_t KvCache::half_bytes() const { return static_cast<size_t>(block_size_) * kv_dim_ * dtype_size(dtype_); }

size_t KvCache::bytes_per_block() const { return static_cast<size_t>(num_layers_) * 2 * half_bytes(); }

void* KvCache::keys_raw(int layer, int block, DType want) {
  ZR_CHECK_MSG(want == dtype_, "KV cache read with the wrong element type");
  const size_t layer_stride = 2 * static_cast<size_t>(num_blocks_) * half_bytes();
  return data_ + layer * layer_stride + static_cast<size_t>(block) * half_bytes();
}

void* KvCache::values_raw(int layer, int block, DType want) {
  ZR_CHECK_MSG(want == dtype_, "KV cache read with the wrong element type");
  const size_t layer_stride = 2 * static_cast<size_t>(num_blocks_) * half_bytes();
  const size_t keys_part = static_cast<size_t>(num_blocks_) * half_bytes();
  return data_ + layer * layer_stride + keys_part + static_cast<size_t>(block) * half_bytes();
}

size_t KvCache::release_pages() {
  madvise(data_, bytes_, MADV_DONTNEED);
  return bytes_;
}

size_t KvCache::prefault() {
#ifdef MADV_POPULATE_WRITE
  if (madvise(data_, bytes_, MADV_POPULATE_WRITE) == 0) return bytes_;
#endif
  // Older kernel: a write of what is there faults the page in without changing it.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  volatile uint8_t* p = reinterpret_cast<uint8_t*>(data_);
  for (size_t i = 0; i < bytes_; i += page) p[i] = p[i];
  return bytes_;
}

void KvCache::copy_block(int src, int dst) {
  const size_t n = half_bytes();
  for (int l = 0; l < num_layers_; ++l) {
    std::memcpy(keys_raw(l, dst, dtype_), keys_raw(l, src, dtype_), n);
    std::memcpy(values_raw(l, dst, dtype_), values_raw(l, src, dtype_), n);
  }
}

}  // namespace zr
