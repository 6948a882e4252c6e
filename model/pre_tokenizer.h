// The text side of a tokenizer.json, before BPE: the normalizer (Unicode normal forms, through
// utf8proc) and the pre-tokenizer (regex splits, through PCRE2 with UTF + UCP and JIT), as Hugging
// Face tokenizers run them. This file pair is the only includer of PCRE2 and utf8proc.
//
// Supported: normalizer null | NFC | NFD | NFKC | NFKD | Sequence of those; pre_tokenizer null |
// Split (Regex or String pattern; behavior Isolated, Removed, MergedWithPrevious, MergedWithNext;
// invert false) | Digits | ByteLevel (use_regex: GPT-2's split; add_prefix_space only as the first
// step) | Sequence of those. Anything else is `unsupported`, naming the field.
//
// Text is raw UTF-8 bytes throughout: ByteLevel's byte-to-char mapping is the identity here, since
// BpeModel keys its vocabulary by raw bytes (model/bpe_model.h).
// Thread-safety: const methods may be called from several threads (match scratch is thread-local).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "comm/status.h"

namespace zr::bpe {

enum class NormalForm { none, nfc, nfd, nfkc, nfkd };

// Errors: unsupported (naming `field`) for any other normalizer.
Result<NormalForm> normal_form_from_json(const nlohmann::json& normalizer, const std::string& field);

// `text` in normal form `nf` (a copy when something changed, else `text` itself in `scratch`'s
// place: the returned view points into `text` or `scratch`). Requires valid UTF-8.
std::string_view normalize(std::string_view text, NormalForm nf, std::string& scratch);

class PreTokenizer {
 public:
  using Emit = std::function<void(std::string_view)>;

  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // `pre_tokenizer` is the field of that name in tokenizer.json (may be null). Errors:
  // unsupported (an unknown type or option), invalid_argument (a regex PCRE2 rejects), both
  // naming the field ("pre_tokenizer.pretokenizers[0].pattern.Regex: ...").
  static Result<PreTokenizer> from_json(const nlohmann::json& pre_tokenizer);

  // Calls emit(piece) for every non-empty pre-token of `text` (valid UTF-8), in order. Pieces
  // are views into `text` (or into a prefixed copy, for add_prefix_space), valid during the call.
  void split(std::string_view text, const Emit& emit) const;
  // A ByteLevel step was present (the vocabulary is byte-level).
  bool byte_level() const { return byte_level_; }

 private:
  struct Stage;
  friend struct PreTokenizerBuilder;
  void split_from(size_t stage, std::string_view piece, const Emit& emit) const;

  std::vector<std::unique_ptr<Stage>> stages_;
  bool add_prefix_space_ = false;
  bool byte_level_ = false;
};

}  // namespace zr::bpe
