// BlockAllocator: which KV block holds what. The KV pool (model/kv_cache.h) is storage only; this
// class hands out its block ids, counts references to them (the n samples of one prompt share the
// prompt's blocks) and keeps block tables (a sequence's block ids in position order) writable by
// copy on write. It moves no bytes: the copies a write needs are recorded, and whoever owns the
// storage applies them, in order, before the next forward (KvCache::copy_block; TP followers get
// the same list with the step's plan). Applying them in order later is the same as copying at once:
// a block freed after being copied from is only written by a forward, which runs after the copies.
// Ownership: the engine's Scheduler owns the one allocator of an engine (prefix caching would sit
// here too: a cached block is one whose reference count the cache holds).
// Thread-safety: none; one thread owns it.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace zr {

using BlockTable = std::vector<int>;  // block ids; block i holds positions [i * block_size, (i+1) * block_size)

class BlockAllocator {
 public:
  BlockAllocator(int num_blocks, int block_size);

  int block_size() const { return block_size_; }
  int num_blocks() const { return static_cast<int>(refs_.size()); }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_used() const { return num_blocks() - num_free(); }
  int blocks_for(int positions) const { return (positions + block_size_ - 1) / block_size_; }

  // One block: -1 when none is free, else a block with reference count 1.
  int allocate();
  void retain(int block);   // one more holder of a block in use
  void release(int block);  // one holder fewer; the block is free again at zero
  int refcount(int block) const { return refs_[block]; }

  // Makes `table` cover positions [0, new_len), the blocks holding [write_from, new_len) held by
  // this table alone (shared ones are replaced by recorded copies). All or nothing: false, and
  // `table` unchanged, when too few blocks are free.
  bool prepare_write(BlockTable& table, int write_from, int new_len);
  // Blocks prepare_write would allocate: new blocks plus copy-on-write copies.
  int blocks_needed(const BlockTable& table, int write_from, int new_len) const;
  // A new table holding the same blocks (each one's count + 1).
  BlockTable share(const BlockTable& table);
  // Releases every block of the table and clears it.
  void free_table(BlockTable& table);

  // Copy-on-write copies (src, dst) recorded since the last call, in the order they must run.
  std::vector<std::pair<int, int>> take_copies() { return std::exchange(copies_, {}); }

 private:
  int block_size_;
  std::vector<int> refs_;  // per block: holders (0 = free)
  std::vector<int> free_;  // stack of free block ids, lowest id on top at start
  std::vector<std::pair<int, int>> copies_;
};

}  // namespace zr
