// The BPE model of a byte-level tokenizer.json: vocabulary and merges, and the merge loop that turns
// one pre-token into ids. Keys are raw bytes: the vocabulary's byte-level strings ("Ġthe") are
// mapped back through GPT-2's byte-to-char table at load, so encoding never builds those strings.
//
// Merging follows Hugging Face tokenizers (models/bpe/word.rs): repeatedly apply the applicable
// merge of lowest rank, the leftmost first among equal ranks. With ignore_merges (Llama 3) a
// pre-token that is itself in the vocabulary is taken whole.
// Thread-safety: const methods may be called from several threads (the word cache is locked).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "comm/status.h"

namespace zr::bpe {

// GPT-2's byte-level alphabet: each byte's stand-in character, and back.
// Appends the raw bytes of a byte-level string; false (nothing appended) when some character is
// not in the alphabet (such tokens are kept as their own UTF-8, as HF's ByteLevel decoder does).
bool byte_level_to_bytes(std::string_view s, std::string& out);

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using IdOfBytes = std::unordered_map<std::string, int, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  BpeModel();
  ~BpeModel();
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;

  // `model` is the "model" object of tokenizer.json (type BPE; merges as "a b" strings or [a, b]
  // pairs). Errors: unsupported (another model type, dropout, subword affixes, byte_fallback),
  // invalid_argument (a malformed vocab or merge), naming the field.
  static Result<BpeModel> from_json(const nlohmann::json& model);

  // Appends the ids of one pre-token (raw bytes). Bytes without a token are dropped (a byte-level
  // vocabulary has all 256).
  void encode_word(std::string_view word, std::vector<int>& out) const;

  int id_of(std::string_view bytes) const;  // -1 if absent
  // Raw bytes of a vocabulary id; empty for ids the model does not define.
  const std::string& bytes_of(int id) const;
  int size() const { return static_cast<int>(bytes_.size()); }  // 1 + the largest id
  size_t num_merges() const { return num_merges_; }

 private:
  struct MergeTable;
  struct Cache;
  void merge_word(std::string_view word, std::vector<int>& out) const;

  std::vector<std::string> bytes_;  // by id
  IdOfBytes id_of_;
  int byte_id_[256];  // id of each single byte, -1 if absent
  std::unique_ptr<MergeTable> merges_;
  std::unique_ptr<Cache> cache_;
  size_t num_merges_ = 0;
  bool ignore_merges_ = false;
};

}  // namespace zr::bpe
