#include "model/text_streamer.h"

#include <algorithm>

namespace zr {

namespace {

bool is_continuation_byte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Length of the longest proper prefix of `stop` that `text` ends with (0: none).
size_t held_by(const std::string& text, const std::string& stop) {
  for (size_t k = std::min(stop.size() - 1, text.size()); k > 0; --k)
    if (text.compare(text.size() - k, k, stop, 0, k) == 0) return k;
  return 0;
}

}  // namespace

TextStreamer::TextStreamer(const Tokenizer& tok, TextStreamerOptions opt)
    : detok_(tok, opt.skip_special_tokens), opt_(std::move(opt)) {}

bool TextStreamer::push(int id, bool stop_token) {
  if (matched_) return true;
  if (finished_) return false;
  ++consumed_;
  const size_t old = text_.size();
  text_ += detok_.push(id);
  if (stop_token) return false;
  auto hit = find_stop(old);
  if (!hit) return false;
  const auto [at, stop] = *hit;
  text_.resize(opt_.no_stop_trim ? at + stop->size() : at);
  matched_ = *stop;
  return true;
}

// Among the stop strings that occur in text_ ending past from_len (so they use a new byte: the
// older text held none, or it would have matched before), the one whose last byte comes first:
// the one a reader of the text one character at a time would have seen complete first. Ties
// (same end) go to the longer one, which starts earlier.
std::optional<std::pair<size_t, const std::string*>> TextStreamer::find_stop(size_t from_len) const {
  std::optional<std::pair<size_t, const std::string*>> best;
  size_t best_end = 0;
  for (const std::string& stop : opt_.stops) {
    if (stop.empty()) continue;
    const size_t from = from_len >= stop.size() ? from_len - stop.size() + 1 : 0;
    const size_t at = text_.find(stop, from);
    if (at == std::string::npos) continue;
    const size_t end = at + stop.size();
    if (!best || end < best_end || (end == best_end && at < best->first)) {
      best = std::make_pair(at, &stop);
      best_end = end;
    }
  }
  return best;
}

void TextStreamer::finish() {
  if (ended()) return;
  text_ += detok_.flush();
  finished_ = true;
}

size_t TextStreamer::streamable() const {
  if (ended()) return text_.size();
  size_t hold = 0;
  for (const std::string& stop : opt_.stops)
    if (!stop.empty()) hold = std::max(hold, held_by(text_, stop));
  size_t n = text_.size() - hold;
  // The detokenizer never emits half a character; a held-back stop prefix may end inside one.
  while (n > 0 && n < text_.size() && is_continuation_byte(text_[n])) --n;
  return n;
}

std::string TextStreamer::take_chunk() {
  const size_t end = streamable();
  if (end <= taken_) return {};
  std::string out = text_.substr(taken_, end - taken_);
  taken_ = end;
  return out;
}

}  // namespace zr
