#include "actors/router/prefix_map.h"

#include <algorithm>

namespace zr {

namespace {

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h = (h ^ (h >> 31)) * 0xbf58476d1ce4e5b9ull;
  return h ^ (h >> 29);
}

}  // namespace

std::vector<uint64_t> PrefixMap::keys(std::span<const int> ids, std::string_view text) {
  std::vector<uint64_t> out;
  uint64_t h = ids.empty() ? 0x7465787400000000ull : 0x6964730000000000ull;  // ids and text never meet
  if (!ids.empty()) {
    for (size_t i = 0; i + kIdsPerChunk <= ids.size(); i += kIdsPerChunk) {
      for (size_t j = i; j < i + kIdsPerChunk; ++j) h = mix(h, static_cast<uint32_t>(ids[j]));
      out.push_back(h);
    }
    return out;
  }
  for (size_t i = 0; i + kBytesPerChunk <= text.size(); i += kBytesPerChunk) {
    for (size_t j = i; j < i + kBytesPerChunk; ++j) h = mix(h, static_cast<unsigned char>(text[j]));
    out.push_back(h);
  }
  return out;
}

int PrefixMap::match(int engine, std::span<const uint64_t> keys) const {
  auto it = engines_.find(engine);
  if (it == engines_.end()) return 0;
  int n = 0;
  while (n < static_cast<int>(keys.size()) && it->second.last_used.count(keys[n])) ++n;
  return n;
}

void PrefixMap::insert(int engine, std::span<const uint64_t> keys) {
  if (keys.empty()) return;
  EngineMap& m = engines_[engine];
  ++clock_;
  for (uint64_t k : keys) m.last_used[k] = clock_;
  if (m.last_used.size() > capacity_) trim(m);
}

// Drops the least recently routed half (one sort per capacity/2 insertions).
void PrefixMap::trim(EngineMap& m) {
  std::vector<uint64_t> stamps;
  stamps.reserve(m.last_used.size());
  for (const auto& [k, t] : m.last_used) stamps.push_back(t);
  auto mid = stamps.begin() + static_cast<long>(stamps.size() / 2);
  std::nth_element(stamps.begin(), mid, stamps.end());
  const uint64_t cut = *mid;
  std::erase_if(m.last_used, [cut](const auto& kv) { return kv.second < cut; });
}

void PrefixMap::forget(int engine) { engines_.erase(engine); }

size_t PrefixMap::size(int engine) const {
  auto it = engines_.find(engine);
  return it == engines_.end() ? 0 : it->second.last_used.size();
}

}  // namespace zr
