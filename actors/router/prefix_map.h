// PrefixMap: the router's approximate picture of which engine holds which prompt prefix in its
// prefix cache (as SGLang's cache-aware router keeps an approximate radix tree per worker from
// what it routed). A prompt is cut into chunks (16 token ids, or 64 bytes of text), each keyed by
// a chain hash of everything before it; per engine the map remembers the keys of prompts it sent
// there, least recently routed dropped first past a capacity. It is approximate on purpose: the
// engine may have evicted the KV or committed new weights since; a wrong guess only costs a
// prefill, never a wrong output.
// Thread-safety: none; the router's thread owns it.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace zr {

class PrefixMap {
 public:
  static constexpr int kIdsPerChunk = 16;
  static constexpr int kBytesPerChunk = 64;

  explicit PrefixMap(size_t capacity_per_engine = 1 << 16) : capacity_(capacity_per_engine) {}

  // Chain keys of a prompt's whole chunks (ids when given, else the text's bytes).
  static std::vector<uint64_t> keys(std::span<const int> ids, std::string_view text);

  // Leading chunks of `keys` engine k is believed to hold.
  int match(int engine, std::span<const uint64_t> keys) const;
  // Engine k was sent a prompt with these keys.
  void insert(int engine, std::span<const uint64_t> keys);
  // Engine k lost its cache (died, flushed, new weights).
  void forget(int engine);
  size_t size(int engine) const;

 private:
  struct EngineMap {
    std::unordered_map<uint64_t, uint64_t> last_used;  // key -> routing clock
  };
  void trim(EngineMap& m);
  size_t capacity_;
  uint64_t clock_ = 0;
  std::unordered_map<int, EngineMap> engines_;
};

}  // namespace zr
