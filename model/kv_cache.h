// KvCache: paged key/value storage. A pool of fixed-size blocks (block_size positions each) sized
// by a memory budget; a sequence's block table (block ids in position order) says where its
// positions live. Which block holds what, reference counts and copy on write are the
// BlockAllocator's (model/block_allocator.h, owned by the engine's scheduler): this class only holds
// the bytes and copies a block when told to.
// Layout per layer: keys (num_blocks, kv_dim, block_size) -- transposed inside a block so the
// attention kernel reads 16 positions of one dimension as one vector -- and values
// (num_blocks, num_kv_heads, block_size, head_dim): head-major like the keys, so one KV head's part
// of a block is one contiguous run (4 KiB at head_dim 64, block 16, f32) for either.
// Element type (--kv-dtype): f32, or bf16 (K and V rounded with f32_to_bf16 when written and
// widened exactly when read: half the bytes for attention to stream, twice the positions for a
// budget).
// Thread-safety: none; the engine thread owns it. The forward writes disjoint positions from pool
// threads, which is safe because block tables never share a block that is written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "model/config.h"
#include "model/dtype.h"

namespace zr {

// "f32" | "bf16" (the --kv-dtype spelling).
inline const char* kv_dtype_name(DType t) { return t == DType::bf16 ? "bf16" : "f32"; }

class KvCache {
 public:
  // budget_bytes bounds the storage; at least one block is always made.
  // dtype: f32 or bf16 (the element type of keys and values).
  KvCache(const ModelConfig& cfg, int block_size, size_t budget_bytes, DType dtype = DType::f32);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int block_size() const { return block_size_; }
  DType dtype() const { return dtype_; }
  int num_blocks() const { return num_blocks_; }
  size_t bytes() const { return bytes_; }
  size_t bytes_per_block() const;
  int blocks_for(int positions) const { return (positions + block_size_ - 1) / block_size_; }

  // Returns the pool's pages to the OS (release_memory kv_cache); no block may be in use. The
  // pool stays mapped and pages come back zeroed on first use (or at the next prefault()).
  size_t release_pages();
  // Faults every page of the pool in now (MADV_POPULATE_WRITE; touching each page where the kernel
  // lacks it), so no forward step pays a first-touch page fault when it writes a new position: a
  // fault costs ~2-6 us per 4 KiB page on this VM, ~1100 of them per batch-64 decode step.
  // Contents are unchanged. Returns the bytes of the pool.
  size_t prefault();

  // f32 caches only.
  float* keys(int layer, int block) { return static_cast<float*>(keys_raw(layer, block, DType::f32)); }
  float* values(int layer, int block) { return static_cast<float*>(values_raw(layer, block, DType::f32)); }
  // bf16 caches only.
  uint16_t* keys_bf16(int layer, int block) { return static_cast<uint16_t*>(keys_raw(layer, block, DType::bf16)); }
  uint16_t* values_bf16(int layer, int block) { return static_cast<uint16_t*>(values_raw(layer, block, DType::bf16)); }
  // The element type as a template argument (float or uint16_t for bf16): keys (kv_dim,
  // block_size), values (num_kv_heads, block_size, head_dim) of one layer's block.
  template <class E>
  E* keys_as(int layer, int block) {
    return static_cast<E*>(keys_raw(layer, block, sizeof(E) == 4 ? DType::f32 : DType::bf16));
  }
  template <class E>
  E* values_as(int layer, int block) {
    return static_cast<E*>(values_raw(layer, block, sizeof(E) == 4 ? DType::f32 : DType::bf16));
  }

  // Copies every layer's keys and values of block src into block dst (a copy-on-write copy the
  // allocator recorded; TP followers replay the leader's list).
  void copy_block(int src, int dst);

 private:
  // Checks that `want` is the cache's dtype (a caller reading bf16 bytes as f32 is a bug).
  void* keys_raw(int layer, int block, DType want);
  void* values_raw(int layer, int block, DType want);
  size_t half_bytes() const;  // one layer's keys (or values) of one block

  int num_layers_, kv_dim_, block_size_, num_blocks_;
  DType dtype_;
  size_t bytes_ = 0;
  char* data_ = nullptr;  // mmap'd: [layer][k|v][block][...]: a block's kv_dim x block_size elements
};

}  // namespace zr
