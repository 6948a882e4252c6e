// KvCache: paged key/value storage. A pool of fixed-size blocks (block_size positions each) sized
// by a memory budget; a sequence's block table (block ids in position order) says where its
// positions live. Which block holds what, reference counts and copy on write are the
// BlockAllocator's (model/block_allocator.h, owned by the engine's scheduler): this class only holds
// the bytes and copies a block when told to.
// Layout per layer: keys (num_blocks, kv_dim, block_size) f32 -- transposed inside a block so the
// attention kernel reads 16 positions of one dimension as one vector -- and values
// (num_blocks, num_kv_heads, block_size, head_dim): head-major like the keys, so one KV head's part
// of a block is one contiguous run (4 KiB at head_dim 64, block 16) for either.
// Thread-safety: none; the engine thread owns it. The forward writes disjoint positions from pool
// threads, which is safe because block tables never share a block that is written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "model/config.h"

namespace zr {

class KvCache {
 public:
  // budget_bytes bounds the storage; at least one block is always made.
  KvCache(const ModelConfig& cfg, int block_size, size_t budget_bytes);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int block_size() const { return block_size_; }
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

  float* keys(int layer, int block);    // (kv_dim, block_size)
  float* values(int layer, int block);  // (num_kv_heads, block_size, head_dim)

  // Copies every layer's keys and values of block src into block dst (a copy-on-write copy the
  // allocator recorded; TP followers replay the leader's list).
  void copy_block(int src, int dst);

 private:
  int num_layers_, kv_dim_, block_size_, num_blocks_;
  size_t bytes_ = 0;
  float* data_ = nullptr;  // mmap'd: [layer][k|v][block][...]: a block's kv_dim x block_size floats
};

}  // namespace zr
