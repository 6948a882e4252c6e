// Tokenizer: the one text interface the engine uses, over two families behind TokenizerBackend:
// sentencepiece `tokenizer.model` (model/sentencepiece_tokenizer) and byte-level BPE
// `tokenizer.json` as Qwen2/2.5/3 and Llama 3 ship them (model/bpe_tokenizer). A default-built
// Tokenizer has no text at all (token-only mode: a model folder without a tokenizer).
// Thread-safety: const methods are safe to call from several threads.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "comm/status.h"

namespace zr {

// One tokenizer family. decode() here is the family's own (no clean-up of spaces: Tokenizer adds
// that); ids outside [0, num_pieces) decode to nothing; output is always valid UTF-8.
class TokenizerBackend {
 public:
  virtual ~TokenizerBackend() = default;
  // With add_special: the tokens the tokenizer's configuration adds around a text (BOS, ...).
  virtual std::vector<int> encode(std::string_view text, bool add_special) const = 0;
  virtual std::string decode(std::span<const int> ids, bool skip_special_tokens) const = 0;
  virtual std::string token_text(int id) const = 0;
  virtual int num_pieces() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  virtual int pad_id() const = 0;
  virtual bool is_special(int id) const = 0;
  // Hugging Face's clean_up_tokenization_spaces (tokenizer_config.json): " ." -> "." etc.
  virtual bool clean_up_spaces() const { return false; }
  virtual const char* kind() const = 0;  // "sentencepiece" | "bpe", for logs
};

class Tokenizer {
 public:
  Tokenizer();  // no text: token-only mode
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  explicit Tokenizer(std::unique_ptr<TokenizerBackend> backend);

  // `path` is a model folder or a file. A folder: tokenizer.json (byte-level BPE, with
  // tokenizer_config.json beside it when present), else tokenizer.model (sentencepiece), else an
  // empty Tokenizer (has_text() false). A tokenizer.json this build cannot read falls back to a
  // tokenizer.model beside it. A file: read by its name (*.json BPE, otherwise sentencepiece).
  // Errors: not_found (no such file), io_error (unreadable), unsupported (naming the field).
  static Result<Tokenizer> load(const std::string& path);
  // A shared empty tokenizer, for callers that want no text (detokenize: false).
  static const Tokenizer& none();

  bool has_text() const { return impl_ != nullptr; }
  const char* kind() const { return impl_ ? impl_->kind() : "none"; }

  // Text -> ids; add_bos adds what the tokenizer's configuration adds around a text (Hugging
  // Face's add_special_tokens): BOS for sentencepiece and for BPE configs that say so (Llama 3's
  // template), nothing for Qwen.
  std::vector<int> encode(std::string_view text, bool add_bos) const;
  // Ids -> text; special tokens dropped when skip_special_tokens. Ids outside the tokenizer's
  // pieces decode to nothing. Output is always valid UTF-8. Cleans up spaces when configured.
  std::string decode(std::span<const int> ids, bool skip_special_tokens = true) const;
  // decode() without the clean-up of spaces: what the incremental detokenizer streams.
  std::string decode_raw(std::span<const int> ids, bool skip_special_tokens) const;
  bool clean_up_spaces() const { return impl_ && impl_->clean_up_spaces(); }
  // Text of one token as it reads inside a sequence (sentencepiece: leading "▁" becomes a space;
  // bytes that are not a whole UTF-8 character become U+FFFD). Used for per-token logprob text.
  std::string token_text(int id) const;

  int num_pieces() const;
  int bos_id() const;             // -1 if none
  int eos_id() const;             // -1 if none
  int pad_id() const;             // -1 if none
  bool is_special(int id) const;  // control/unknown (sentencepiece) or special added token (BPE)

 private:
  std::unique_ptr<TokenizerBackend> impl_;
};

// Hugging Face's clean_up_tokenization: " ." " ?" " !" " ," lose the space, " ' " becomes "'",
// and " n't" " 'm" " 's" " 've" " 're" lose the space (replaced in that order, left to right).
std::string clean_up_tokenization(std::string_view text);

// Trains a sentencepiece BPE model with byte fallback on `corpus` (one sentence per line) and
// returns its serialized bytes (a tokenizer.model). Llama ids: <unk> 0, <s> 1, </s> 2, no pad.
// It has exactly vocab_size pieces: when the corpus supports fewer learned pieces, control symbols
// <unused0>, <unused1>, ... fill the rest. Deterministic: same arguments, same bytes.
// Errors: invalid_argument (vocab_size too small for the corpus' characters), internal.
Result<std::string> train_tokenizer(std::string_view corpus, int vocab_size);

// Streams text as ids arrive, never emitting a partial UTF-8 sequence (the vLLM/HF prefix-offset
// method: decode a short window and emit what grew, holding back while it ends in U+FFFD). With a
// tokenizer that cleans up spaces, the clean-up runs on the stream too: the concatenated output
// always equals tok.decode(all ids).
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens);
  std::string push(int id);                          // text newly completed by this id (may be empty)
  std::string flush();                               // whatever is still held back, made valid UTF-8
  const std::string& text() const { return text_; }  // everything emitted so far

 private:
  std::string emit(std::string raw, bool final);

  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int> ids_;
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
  std::string pending_;  // clean-up: raw text held back until no later text can change it
  std::string text_;
};

}  // namespace zr
