// Tokenizer: sentencepiece behind a pimpl (the only file that includes its headers).
// Thread-safety: const methods are safe to call from several threads.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "comm/status.h"

namespace zr {

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Errors: not_found (missing file), io_error (not a sentencepiece model).
  static Result<Tokenizer> load(const std::string& path);

  // Text -> ids; prepends BOS when add_bos and the model has one.
  std::vector<int> encode(std::string_view text, bool add_bos) const;
  // Ids -> text; control tokens (BOS/EOS/PAD/<unused..>) dropped when skip_special_tokens.
  // Ids outside the tokenizer's pieces decode to nothing. Output is always valid UTF-8.
  std::string decode(std::span<const int> ids, bool skip_special_tokens = true) const;
  // Text of one token as it reads inside a sequence (leading "▁" becomes a space; a lone byte
  // piece that is not valid UTF-8 becomes U+FFFD). Used for per-token logprob text.
  std::string token_text(int id) const;

  int num_pieces() const;
  int bos_id() const;  // -1 if none
  int eos_id() const;  // -1 if none
  int pad_id() const;  // -1 if none
  bool is_special(int id) const;  // control or unknown piece

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Trains a sentencepiece BPE model with byte fallback on `corpus` (one sentence per line) and
// returns its serialized bytes (a tokenizer.model). Llama ids: <unk> 0, <s> 1, </s> 2, no pad.
// It has exactly vocab_size pieces: when the corpus supports fewer learned pieces, control symbols
// <unused0>, <unused1>, ... fill the rest. Deterministic: same arguments, same bytes.
// Errors: invalid_argument (vocab_size too small for the corpus' characters), internal.
Result<std::string> train_tokenizer(std::string_view corpus, int vocab_size);

// Streams text as ids arrive, never emitting a partial UTF-8 sequence (the vLLM/HF prefix-offset
// method: decode a short window and emit what grew, holding back while it ends in U+FFFD).
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens);
  std::string push(int id);   // text newly completed by this id (may be empty)
  std::string flush();        // whatever is still held back, made valid UTF-8
  const std::string& text() const { return text_; }  // everything emitted so far

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int> ids_;
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
  std::string text_;
};

}  // namespace zr
