#include "actors/engine/prefix_cache.h"

#include <algorithm>
#include <utility>

#include "comm/status.h"
#include "model/splitmix64.h"

namespace zr {

namespace {

uint64_t block_hash(uint64_t parent, std::span<const int> tokens) {
  uint64_t h = parent;
  for (int t : tokens) h = splitmix64(h ^ static_cast<uint32_t>(t));
  return h;
}

}  // namespace

uint64_t PrefixCache::seed() const { return splitmix64(0x7a72'6f6c'6c6f'7574ull ^ static_cast<uint64_t>(version_)); }

int PrefixCache::set_version(int64_t version) {
  int freed = clear();
  version_ = version;
  return freed;
}

void PrefixCache::extend_hashes(std::span<const int> tokens, std::vector<uint64_t>& hashes) const {
  const size_t bs = static_cast<size_t>(blocks_.block_size());
  for (size_t i = hashes.size(); (i + 1) * bs <= tokens.size(); ++i)
    hashes.push_back(block_hash(i ? hashes[i - 1] : seed(), tokens.subspan(i * bs, bs)));
}

bool PrefixCache::same(const Node& n, uint64_t parent, std::span<const int> tokens) const {
  return n.parent == parent && std::equal(n.tokens.begin(), n.tokens.end(), tokens.begin(), tokens.end());
}

std::vector<int> PrefixCache::match(std::span<const int> tokens, std::span<const uint64_t> hashes, int max_blocks) {
  const size_t bs = static_cast<size_t>(blocks_.block_size());
  const size_t n = std::min(hashes.size(), static_cast<size_t>(std::max(0, max_blocks)));
  std::vector<int> found;
  ++clock_;
  for (size_t i = 0; i < n; ++i) {
    auto it = nodes_.find(hashes[i]);
    if (it == nodes_.end() || !same(it->second, i ? hashes[i - 1] : seed(), tokens.subspan(i * bs, bs))) break;
    it->second.used = clock_;
    found.push_back(it->second.block);
  }
  return found;
}

void PrefixCache::insert(std::span<const int> tokens, std::span<const uint64_t> hashes, const BlockTable& table,
                         int full_blocks) {
  const size_t bs = static_cast<size_t>(blocks_.block_size());
  const size_t n = std::min({hashes.size(), table.size(), static_cast<size_t>(std::max(0, full_blocks))});
  ++clock_;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t parent = i ? hashes[i - 1] : seed();
    std::span<const int> toks = tokens.subspan(i * bs, bs);
    auto [it, fresh] = nodes_.try_emplace(hashes[i]);
    Node& node = it->second;
    if (!fresh && !same(node, parent, toks)) return;  // a hash collision: this chain stays uncached
    node.used = clock_;
    if (!fresh) continue;
    node.parent = parent;
    node.block = table[i];
    node.tokens.assign(toks.begin(), toks.end());
    blocks_.retain(node.block);
    if (i) ++nodes_.at(parent).children;  // the loop kept or made the parent one iteration ago
  }
}

void PrefixCache::erase(std::unordered_map<uint64_t, Node>::iterator it) {
  if (auto p = nodes_.find(it->second.parent); p != nodes_.end()) --p->second.children;
  blocks_.release(it->second.block);
  nodes_.erase(it);
}

int PrefixCache::evict(int want) {
  int freed = 0;
  while (freed < want) {
    // Leaves nobody but the index holds, oldest first; evicting them can turn parents into leaves.
    std::vector<std::pair<int64_t, uint64_t>> leaves;
    for (const auto& [h, n] : nodes_)
      if (n.children == 0 && blocks_.refcount(n.block) == 1) leaves.emplace_back(n.used, h);
    if (leaves.empty()) break;
    std::sort(leaves.begin(), leaves.end());
    for (size_t i = 0; i < leaves.size() && freed < want; ++i, ++freed) erase(nodes_.find(leaves[i].second));
  }
  return freed;
}

int PrefixCache::num_idle() const {
  int n = 0;
  for (const auto& [h, node] : nodes_) n += blocks_.refcount(node.block) == 1;
  return n;
}

int PrefixCache::clear() {
  const int before = blocks_.num_free();
  for (auto& [h, n] : nodes_) blocks_.release(n.block);
  nodes_.clear();
  return blocks_.num_free() - before;
}

}  // namespace zr
