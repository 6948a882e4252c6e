// Tokenizer: picks the backend for a model folder, adds Hugging Face's clean-up of spaces, and
// streams text with the incremental detokenizer.
#include "model/tokenizer.h"

#include <filesystem>

#include "model/bpe_tokenizer.h"
#include "model/sentencepiece_tokenizer.h"

namespace zr {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

Result<Tokenizer> wrap(Result<std::unique_ptr<TokenizerBackend>> r) {
  if (!r.ok()) return r.status();
  return Tokenizer(std::move(r).value());
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::Tokenizer(std::unique_ptr<TokenizerBackend> backend) : impl_(std::move(backend)) {}

const Tokenizer& Tokenizer::none() {
  static const Tokenizer empty;
  return empty;
}

Result<Tokenizer> Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return wrap(ends_with(path, ".json") ? load_bpe(path) : load_sentencepiece(path));
  const fs::path json = fs::path(path) / "tokenizer.json", model = fs::path(path) / "tokenizer.model";
  const bool has_model = fs::is_regular_file(model, ec);
  if (fs::is_regular_file(json, ec)) {
    auto bpe = load_bpe(json.string());
    // A tokenizer.json this build cannot read (Llama 2's sentencepiece-style one, ...) defers to
    // the tokenizer.model beside it.
    if (bpe.ok() || !has_model || bpe.status().code != ErrorCode::unsupported) return wrap(std::move(bpe));
  }
  if (has_model) return wrap(load_sentencepiece(model.string()));
  return Tokenizer();
}

std::vector<int> Tokenizer::encode(std::string_view text, bool add_bos) const {
  return impl_ ? impl_->encode(text, add_bos) : std::vector<int>();
}

std::string Tokenizer::decode(std::span<const int> ids, bool skip_special_tokens) const {
  if (!impl_) return {};
  std::string raw = impl_->decode(ids, skip_special_tokens);
  return impl_->clean_up_spaces() ? clean_up_tokenization(raw) : raw;
}

std::string Tokenizer::decode_raw(std::span<const int> ids, bool skip_special_tokens) const {
  return impl_ ? impl_->decode(ids, skip_special_tokens) : std::string();
}

std::string Tokenizer::token_text(int id) const { return impl_ ? impl_->token_text(id) : std::string(); }
int Tokenizer::num_pieces() const { return impl_ ? impl_->num_pieces() : 0; }
int Tokenizer::bos_id() const { return impl_ ? impl_->bos_id() : -1; }
int Tokenizer::eos_id() const { return impl_ ? impl_->eos_id() : -1; }
int Tokenizer::pad_id() const { return impl_ ? impl_->pad_id() : -1; }
bool Tokenizer::is_special(int id) const { return impl_ && impl_->is_special(id); }

std::string clean_up_tokenization(std::string_view text) {
  static constexpr std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  std::string s(text);
  if (s.find(' ') == std::string::npos) return s;
  std::string next;
  for (const auto& [from, to] : kRules) {
    size_t at = s.find(from);
    if (at == std::string::npos) continue;
    next.clear();
    size_t last = 0;
    for (; at != std::string::npos; at = s.find(from, last)) {  // left to right, no overlaps
      next.append(s, last, at - last).append(to);
      last = at + from.size();
    }
    next.append(s, last, std::string::npos);
    s.swap(next);
  }
  return s;
}

// Exactness (concatenated output == decode(all ids)) rests on two facts about decode_raw():
//  - dropped ids (out of range, or special when skipped) decode as if absent, so push() never
//    stores them and a run of them costs nothing;
//  - read_offset_ only moves to a point where the window's text did not end in U+FFFD, so no
//    UTF-8 sequence is open there and decoding may restart at it (both backends decode bytes
//    left to right and are back in their start state after a whole character). prefix_offset_
//    only moves to a previous read_offset_, and the tokens between the two always contain the
//    window's first text-bearing piece: whatever the window does to it (sentencepiece dropping
//    its leading space) shows in both decodes and cancels.
// The clean-up of spaces (decode() = clean_up_tokenization(decode_raw())) is applied to the raw
// stream in pieces cut after a character that no rule contains (safe_cut): every rule only
// removes spaces, so that character survives each rule and no match of any rule can span the
// cut; the rules scan left to right without overlaps, so cleaning the two sides apart gives the
// same text as cleaning the whole.
// After flush() the held-back tail is final: the stream is over.

namespace {

// The text of ids[prefix_offset:] and of its first part ids[prefix_offset:read_offset].
struct Window {
  std::string prefix;
  std::string text;
  bool grew() const { return text.size() > prefix.size(); }
  std::string growth() const {
    ZR_CHECK_MSG(text.compare(0, prefix.size(), prefix) == 0,
                 "incremental detokenizer: window does not extend its prefix");
    return text.substr(prefix.size());
  }
};

Window decode_window(const Tokenizer& tok, bool skip, std::span<const int> ids, size_t prefix_offset,
                     size_t read_offset) {
  const auto window = ids.subspan(prefix_offset);
  return {tok.decode_raw(window.first(read_offset - prefix_offset), skip), tok.decode_raw(window, skip)};
}

// The end of the longest prefix of `s` (valid UTF-8) that the clean-up rules cannot change by
// what follows: just after the last character that appears in no rule.
size_t safe_cut(std::string_view s) {
  constexpr std::string_view kRuleChars = " .?!,'ntmsvre";
  for (size_t i = s.size(); i > 0; --i) {
    const auto c = static_cast<unsigned char>(s[i - 1]);
    if (c < 0x80 && kRuleChars.find(static_cast<char>(c)) != std::string_view::npos) continue;
    if (i == s.size() || (static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) return i;
  }
  return 0;
}

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(&tok), skip_special_(skip_special_tokens) {}

std::string IncrementalDetokenizer::push(int id) {
  const bool out_of_range = id < 0 || id >= tok_->num_pieces();
  if (out_of_range || (skip_special_ && tok_->is_special(id))) return {};
  ids_.push_back(id);
  const Window w = decode_window(*tok_, skip_special_, ids_, prefix_offset_, read_offset_);
  // Hold back while the text may end inside a character that later byte pieces complete.
  if (!w.grew() || ends_with(w.text, kReplacement)) return {};
  std::string out = w.growth();
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return emit(std::move(out), false);
}

std::string IncrementalDetokenizer::flush() {
  const Window w = decode_window(*tok_, skip_special_, ids_, prefix_offset_, read_offset_);
  std::string out;
  if (w.grew()) {
    out = w.growth();
    prefix_offset_ = read_offset_;
    read_offset_ = ids_.size();
  }
  return emit(std::move(out), true);
}

std::string IncrementalDetokenizer::emit(std::string raw, bool final) {
  if (!tok_->clean_up_spaces()) {
    text_ += raw;
    return raw;
  }
  pending_ += raw;
  const size_t cut = final ? pending_.size() : safe_cut(pending_);
  std::string out = clean_up_tokenization(std::string_view(pending_).substr(0, cut));
  pending_.erase(0, cut);
  text_ += out;
  return out;
}

}  // namespace zr
