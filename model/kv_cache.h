// KvCache: paged key/value storage. A pool of fixed-size blocks (block_size positions each) sized
// by a memory budget; a sequence owns a block table (block ids in position order). Blocks are
// reference-counted so the n samples of one prompt share the prompt's blocks; a shared block is
// copied before anyone writes into it (copy on write).
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
#include <utility>
#include <vector>

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
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_used() const { return num_blocks_ - num_free(); }
  size_t bytes() const { return bytes_; }
  size_t bytes_per_block() const;
  int blocks_for(int positions) const { return (positions + block_size_ - 1) / block_size_; }

  // Block reference counting.
  int allocate();  // -1 when the pool is empty; refcount 1
  void retain(int block);
  void release(int block);
  int refcount(int block) const { return refs_[block]; }

  // Makes `table` cover positions [0, new_len) with the blocks that hold [write_from, new_len)
  // owned by this table alone (shared ones are copied). All or nothing: false (and `table`
  // unchanged) when the pool has too few free blocks.
  bool prepare_write(std::vector<int>& table, int write_from, int new_len);
  // Blocks prepare_write would need to allocate (new blocks plus copy-on-write copies).
  int blocks_needed(const std::vector<int>& table, int write_from, int new_len) const;
  // Releases every block of the table and clears it.
  void free_table(std::vector<int>& table);
  // New table sharing all blocks of `table` (refcounts + 1).
  std::vector<int> share(const std::vector<int>& table);

  // Returns the pool's pages to the OS (release_memory kv_cache); every block must be free. The
  // pool stays mapped and pages come back zeroed on first use (or at the next prefault()).
  size_t release_pages();
  // Faults every page of the pool in now (MADV_POPULATE_WRITE; touching each page where the kernel
  // lacks it), so no forward step pays a first-touch page fault when it writes a new position: a
  // fault costs ~2-6 us per 4 KiB page on this VM, ~1100 of them per batch-64 decode step.
  // Contents are unchanged. Returns the bytes of the pool.
  size_t prefault();

  float* keys(int layer, int block);    // (kv_dim, block_size)
  float* values(int layer, int block);  // (num_kv_heads, block_size, head_dim)

  // Tensor parallelism: the leader's cache decides which blocks hold what and the other ranks'
  // caches (their KV heads, same block ids) follow. With logging on, every copy-on-write copy is
  // recorded so the leader can send it with the next step; followers replay it with copy_block.
  void log_copies(bool on) { log_copies_ = on; }
  std::vector<std::pair<int, int>> take_copies() { return std::exchange(copies_, {}); }
  void copy_block(int src, int dst);

 private:

  int num_layers_, kv_dim_, block_size_, num_blocks_;
  size_t bytes_ = 0;
  float* data_ = nullptr;  // mmap'd: [layer][k|v][block][...]: a block's kv_dim x block_size floats
  std::vector<int> refs_;
  std::vector<int> free_;  // stack of free block ids
  bool log_copies_ = false;
  std::vector<std::pair<int, int>> copies_;  // (src, dst) since the last take_copies()
};

}  // namespace zr
