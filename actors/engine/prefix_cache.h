// PrefixCache: automatic prefix caching (as vLLM's hashed blocks and SGLang's RadixAttention). Full
// KV blocks of finished and running sequences are indexed by a chain hash of their tokens,
//   h(0) = mix(seed(weight version), tokens of block 0),  h(i) = mix(h(i-1), tokens of block i),
// so block i's key covers every token before it (a block's KV depends on all earlier positions).
// A new sequence reuses the longest chain of cached blocks that matches its tokens.
//
// Exactness: the index holds at most one node per hash, and each node keeps its block's tokens and
// its parent's hash; a lookup compares both, so by induction a matched chain holds exactly the
// sequence's tokens (a 64-bit collision only costs a miss, never a wrong hit).
// Versions: the seed is the weight version and set_version() empties the index, so KV made under
// other weights is never reused.
// Ownership: a node holds one reference to its block (BlockAllocator::retain); the scheduler that
// owns both the allocator and this index decides when to evict. Only leaves whose block nobody
// else holds are evicted, least recently used first, so a chain never loses an inner node while a
// longer one remains reachable.
// Thread-safety: none; the scheduler's thread owns it.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "model/block_allocator.h"

namespace zr {

class PrefixCache {
 public:
  explicit PrefixCache(BlockAllocator& blocks) : blocks_(blocks) {}
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // Empties the index and seeds new keys with `version`; returns the blocks that became free.
  int set_version(int64_t version);
  int64_t version() const { return version_; }

  // Appends to `hashes` the chain hashes of the full blocks of `tokens` it does not cover yet.
  void extend_hashes(std::span<const int> tokens, std::vector<uint64_t>& hashes) const;

  // The blocks of the longest cached chain matching the first `max_blocks` blocks of `tokens`
  // (hashes from extend_hashes). Marks them used now; does not retain them.
  std::vector<int> match(std::span<const int> tokens, std::span<const uint64_t> hashes, int max_blocks);
  // Indexes the first `full_blocks` blocks of a sequence (table[i] holds block i's KV, computed
  // under the current version). Blocks already indexed under the same key keep their node.
  void insert(std::span<const int> tokens, std::span<const uint64_t> hashes, const BlockTable& table, int full_blocks);

  // Frees up to `want` blocks held only by the index (LRU leaves); returns how many it freed.
  int evict(int want);
  // Frees every node's reference; returns the blocks that became free.
  int clear();

  int size() const { return static_cast<int>(nodes_.size()); }
  // Blocks only the index holds: free on demand (evict), so not counted as used by requests.
  int num_idle() const;
  bool contains(uint64_t hash) const { return nodes_.count(hash) != 0; }

 private:
  struct Node {
    uint64_t parent = 0;  // the previous block's hash (the seed for block 0)
    int block = -1;
    int children = 0;
    int64_t used = 0;  // logical time of the last match or insert
    std::vector<int> tokens;
  };
  uint64_t seed() const;
  bool same(const Node& n, uint64_t parent, std::span<const int> tokens) const;
  void erase(std::unordered_map<uint64_t, Node>::iterator it);

  BlockAllocator& blocks_;
  int64_t version_ = 0;
  int64_t clock_ = 0;
  std::unordered_map<uint64_t, Node> nodes_;
};

}  // namespace zr
