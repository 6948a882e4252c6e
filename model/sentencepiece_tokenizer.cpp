// The sentencepiece backend (tokenizer.model) and tokenizer training. Encoding is sentencepiece's; decoding is ours (a per-id table
// built at load) so that its rules are explicit and the incremental detokenizer can rely on them:
//  - ids outside [0, num_pieces) and, with skip_special_tokens, control/unknown ids are removed
//    before anything else (as if absent: they do not split a run of byte pieces);
//  - consecutive byte pieces (<0xNN>) are joined and read as UTF-8; each byte that does not start
//    a complete, valid sequence becomes U+FFFD (sentencepiece's and HF ByteFallback's rule);
//  - "▁" reads as a space, and the first piece of the text loses its leading "▁" when the model
//    adds a dummy prefix (sentencepiece's rule; like HF and sentencepiece >= 0.1.99 only that one
//    piece, where 0.1.97 also strips the next one after a bare "▁");
//  - special pieces kept by skip_special_tokens = false read as their piece text ("</s>").
#include "model/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <unordered_map>

namespace zr {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581, sentencepiece's space
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

enum class Utf8Step : uint8_t { valid, invalid, truncated };

// Classifies the UTF-8 sequence starting at s[pos] (strict: no overlongs, surrogates or code
// points past U+10FFFF). `len` is its length when valid. `truncated` means s ends inside a
// sequence that could still become valid.
Utf8Step utf8_step(std::string_view s, size_t pos, size_t* len) {
  const auto b0 = static_cast<uint8_t>(s[pos]);
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  size_t n = 0;
  if (b0 < 0x80) n = 1;
  else if (b0 >= 0xC2 && b0 <= 0xDF) n = 2;
  else if (b0 >= 0xE0 && b0 <= 0xEF) n = 3, lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
  else if (b0 >= 0xF0 && b0 <= 0xF4) n = 4, lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
  else return Utf8Step::invalid;
  for (size_t i = 1; i < n; ++i) {
    if (pos + i >= s.size()) return Utf8Step::truncated;
    const auto b = static_cast<uint8_t>(s[pos + i]);
    if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return Utf8Step::invalid;
  }
  *len = n;
  return Utf8Step::valid;
}

// Appends `bytes` to `out` with every byte that does not start a valid sequence replaced by
// U+FFFD. Returns true when `bytes` ends inside an unfinished sequence.
bool append_utf8(std::string_view bytes, std::string& out) {
  bool truncated = false;
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t len = 1;
    const Utf8Step step = utf8_step(bytes, pos, &len);
    if (step == Utf8Step::valid) {
      out.append(bytes.substr(pos, len));
    } else {
      truncated = truncated || step == Utf8Step::truncated;
      out.append(kReplacement);
    }
    pos += len;
  }
  return truncated;
}

std::string sanitized(std::string_view s) {
  std::string out;
  append_utf8(s, out);
  return out;
}

// "<0x41>" -> 0x41; -1 when the piece is not in that form.
int byte_piece_value(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int v = 0;
  for (char c : piece.substr(3, 2)) {
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

enum class PieceKind : uint8_t { normal, byte, special };

struct PieceInfo {
  PieceKind kind = PieceKind::normal;
  uint8_t byte = 0;            // byte pieces: the raw byte
  bool leading_space = false;  // normal pieces: surface starts with a space from "▁"
  std::string surface;         // normal: "▁" -> " "; special: piece text; always valid UTF-8
};

}  // namespace

class SentencePieceTokenizer final : public TokenizerBackend {
 public:
  Status load(const std::string& path);
  std::vector<int> encode(std::string_view text, bool add_special) const override;
  std::string decode(std::span<const int> ids, bool skip_special) const override;
  std::string token_text(int id) const override;
  int num_pieces() const override { return static_cast<int>(pieces_.size()); }
  int bos_id() const override { return bos_; }
  int eos_id() const override { return eos_; }
  int pad_id() const override { return pad_; }
  bool is_special(int id) const override {
    return id >= 0 && id < num_pieces() && pieces_[id].kind == PieceKind::special;
  }
  const char* kind() const override { return "sentencepiece"; }

 private:
  Status init();
  bool dropped(int id, bool skip_special) const {
    return id < 0 || id >= static_cast<int>(pieces_.size()) || (skip_special && pieces_[id].kind == PieceKind::special);
  }

  sentencepiece::SentencePieceProcessor sp_;
  std::vector<PieceInfo> pieces_;  // indexed by id
  bool strip_first_space_ = true;  // the model adds a dummy "▁" prefix when encoding
  int bos_ = -1, eos_ = -1, pad_ = -1;
};

Status SentencePieceTokenizer::init() {
  const int n = sp_.GetPieceSize();
  if (n <= 0) return make_error(ErrorCode::io_error, "tokenizer has no pieces");
  pieces_.resize(n);
  int probe = -1;  // a normal piece starting with "▁", to learn how sentencepiece decodes it
  for (int id = 0; id < n; ++id) {
    PieceInfo& p = pieces_[id];
    const std::string& piece = sp_.IdToPiece(id);
    const int byte = sp_.IsByte(id) ? byte_piece_value(piece) : -1;
    if (sp_.IsControl(id) || sp_.IsUnknown(id)) {
      p.kind = PieceKind::special;
      p.surface = sanitized(piece);
    } else if (byte >= 0) {
      p.kind = PieceKind::byte;
      p.byte = static_cast<uint8_t>(byte);
    } else {
      std::string text;
      for (size_t pos = 0; pos < piece.size();) {
        const bool space = piece.compare(pos, kSpaceSymbol.size(), kSpaceSymbol) == 0;
        text += space ? std::string_view(" ") : std::string_view(piece).substr(pos, 1);
        pos += space ? kSpaceSymbol.size() : 1;
      }
      p.surface = sanitized(text);
      p.leading_space = !p.surface.empty() && p.surface[0] == ' ';
      if (probe < 0 && p.leading_space && p.surface.size() > 1) probe = id;
    }
  }
  if (probe >= 0) strip_first_space_ = sp_.DecodeIds({probe}).rfind(' ', 0) != 0;
  bos_ = sp_.bos_id();
  eos_ = sp_.eos_id();
  pad_ = sp_.pad_id();
  return Status::ok_status();
}

std::string SentencePieceTokenizer::decode(std::span<const int> ids, bool skip_special) const {
  std::string out;
  std::string run;       // pending byte-piece bytes, read as UTF-8 once the run ends
  bool at_start = true;  // no piece has contributed to the text yet
  for (int id : ids) {
    if (dropped(id, skip_special)) continue;
    const PieceInfo& p = pieces_[id];
    if (p.kind == PieceKind::byte) {
      run.push_back(static_cast<char>(p.byte));
      at_start = false;
      continue;
    }
    append_utf8(run, out);
    run.clear();
    std::string_view s = p.surface;
    if (at_start && strip_first_space_ && p.kind == PieceKind::normal && p.leading_space) {
      s.remove_prefix(1);
    }
    at_start = false;
    out.append(s);
  }
  append_utf8(run, out);
  return out;
}

Result<std::unique_ptr<TokenizerBackend>> load_sentencepiece(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return make_error(ErrorCode::not_found, "tokenizer: no file " + path);
  }
  auto tok = std::make_unique<SentencePieceTokenizer>();
  ZR_RETURN_IF_ERROR(tok->load(path));
  return std::unique_ptr<TokenizerBackend>(std::move(tok));
}

Status SentencePieceTokenizer::load(const std::string& path) {
  try {
    const auto st = sp_.Load(path);
    if (!st.ok()) {
      return make_error(ErrorCode::io_error, "tokenizer: " + path + " is not a sentencepiece model: " + st.ToString());
    }
    Status inited = init();
    if (!inited.ok()) return make_error(inited.code, "tokenizer: " + path + ": " + inited.message);
  } catch (const std::exception& e) {
    return make_error(ErrorCode::io_error, "tokenizer: " + path + ": " + e.what());
  }
  return {};
}

std::vector<int> SentencePieceTokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int> ids;
  if (add_special && bos_ >= 0) ids.push_back(bos_);
  std::vector<int> body;
  if (sp_.Encode(text, &body).ok()) ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::string SentencePieceTokenizer::token_text(int id) const {
  if (dropped(id, false)) return {};
  const PieceInfo& p = pieces_[id];
  if (p.kind != PieceKind::byte) return p.surface;
  return p.byte < 0x80 ? std::string(1, static_cast<char>(p.byte)) : std::string(kReplacement);
}

namespace {

// Pieces the first training pass asks for. The built-in corpus supports about 6.8k BPE pieces;
// larger vocabularies are filled with <unusedN> control symbols instead of rare merges.
constexpr int kMaxTrainedPieces = 4096;

// Feeds the corpus to the trainer line by line. An iterator rather than a temp file, because the
// trainer records its input path in the model, which would make the bytes depend on the path.
class CorpusLines : public sentencepiece::SentenceIterator {
 public:
  explicit CorpusLines(std::string_view corpus) : rest_(corpus) { Next(); }
  bool done() const override { return done_; }
  void Next() override {
    while (!rest_.empty()) {
      const size_t eol = std::min(rest_.find('\n'), rest_.size());
      line_.assign(rest_.substr(0, eol));
      rest_.remove_prefix(std::min(eol + 1, rest_.size()));
      if (!line_.empty()) return;
    }
    done_ = true;
  }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::string_view rest_;
  std::string line_;
  bool done_ = false;
};

// One deterministic training run (single thread, no sampling or shuffling): Llama's settings.
Result<std::string> train_once(std::string_view corpus, int vocab_size, int num_unused) {
  std::unordered_map<std::string, std::string> args = {{"model_type", "bpe"},
                                                       {"vocab_size", std::to_string(vocab_size)},
                                                       {"byte_fallback", "true"},
                                                       {"hard_vocab_limit", "false"},
                                                       {"character_coverage", "0.9995"},
                                                       {"split_digits", "true"},
                                                       {"allow_whitespace_only_pieces", "true"},
                                                       {"normalization_rule_name", "identity"},
                                                       {"remove_extra_whitespaces", "false"},
                                                       {"add_dummy_prefix", "true"},
                                                       {"unk_id", "0"},
                                                       {"bos_id", "1"},
                                                       {"eos_id", "2"},
                                                       {"pad_id", "-1"},
                                                       {"num_threads", "1"},
                                                       {"shuffle_input_sentence", "false"},
                                                       {"input_sentence_size", "0"},
                                                       {"minloglevel", "1"}};
  if (num_unused > 0) {
    std::string names;
    for (int i = 0; i < num_unused; ++i) names += (i ? ",<unused" : "<unused") + std::to_string(i) + ">";
    args["control_symbols"] = std::move(names);
  }
  CorpusLines lines(corpus);
  std::string model;
  try {
    const auto st = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
    if (!st.ok()) {
      const bool user = st.code() == sentencepiece::util::StatusCode::kInvalidArgument;
      return make_error(user ? ErrorCode::invalid_argument : ErrorCode::internal,
                        "tokenizer training (vocab " + std::to_string(vocab_size) + "): " + st.ToString());
    }
  } catch (const std::exception& e) {
    return make_error(ErrorCode::internal, std::string("tokenizer training: ") + e.what());
  }
  return model;
}

int count_pieces(const std::string& model) {
  sentencepiece::SentencePieceProcessor sp;
  return sp.LoadFromSerializedProto(model).ok() ? sp.GetPieceSize() : -1;
}

}  // namespace

Result<std::string> train_tokenizer(std::string_view corpus, int vocab_size) {
  if (vocab_size <= 0) return make_error(ErrorCode::invalid_argument, "tokenizer: vocab_size must be > 0");
  auto first = train_once(corpus, std::min(vocab_size, kMaxTrainedPieces), 0);
  if (!first.ok()) return first;
  const int learned = count_pieces(*first);
  if (learned == vocab_size) return first;
  if (learned <= 0 || learned > vocab_size) {
    return make_error(ErrorCode::internal, "tokenizer training gave " + std::to_string(learned) + " pieces");
  }
  // Same corpus and learned-piece budget, so the second run learns the same pieces; the control
  // symbols take the ids after <unk>, <s>, </s>.
  auto padded = train_once(corpus, vocab_size, vocab_size - learned);
  if (!padded.ok()) return padded;
  const int got = count_pieces(*padded);
  if (got != vocab_size) {
    return make_error(ErrorCode::internal,
                      "tokenizer training gave " + std::to_string(got) + " pieces, want " + std::to_string(vocab_size));
  }
  return padded;
}

}  // namespace zr
