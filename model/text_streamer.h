// TextStreamer: the output text of one sample, built as its ids arrive. It detokenizes
// incrementally (IncrementalDetokenizer: never half a UTF-8 character), matches stop strings across
// token boundaries, trims the text at the stop string that completed first, and says how much of
// the text may be streamed now: never text that could still turn out to be the start of a stop
// string, never a partial character.
//
// The engine's output path and the router (the text of a re-routed sample, rebuilt from all its
// ids) both use it, so a sample's text and its stream chunks do not depend on who built them.
// Ownership: keeps a pointer to the tokenizer, which must outlive it. Thread-safety: one thread.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace zr {

struct TextStreamerOptions {
  std::vector<std::string> stops;  // stop strings, each non-empty (request validation refuses "")
  bool skip_special_tokens = true;
  bool no_stop_trim = false;  // keep the matched stop string at the end of the text (SGLang's option)
};

class TextStreamer {
 public:
  TextStreamer(const Tokenizer& tok, TextStreamerOptions opt);

  // Appends output id `id`. stop_token: the id itself ends the sample (stop_token_ids, EOS): its
  // text is kept and stop strings are not looked for (as the engine has always done). Returns true
  // when a stop string completed with this id: the text now ends before it (after it, with
  // no_stop_trim) and later calls change nothing.
  bool push(int id, bool stop_token = false);
  // The sample ended for another reason (stop token, length, abort): what the detokenizer still
  // holds back is appended and all of text() becomes streamable. No-op after a stop string.
  void finish();

  const std::string& text() const { return text_; }
  std::string release_text() { return std::move(text_); }                 // the streamer is done with it
  const std::optional<std::string>& matched() const { return matched_; }  // the stop string that ended it
  size_t consumed() const { return consumed_; }  // ids pushed (those after a match not counted)
  bool ended() const { return matched_ || finished_; }
  // Length of the prefix of text() that may be streamed now.
  size_t streamable() const;
  // The streamable text not returned by an earlier call (empty when there is none).
  std::string take_chunk();

 private:
  // The stop string that completed first in text_ once bytes from `from_len` on were added, and
  // where it starts; nullopt when none did.
  std::optional<std::pair<size_t, const std::string*>> find_stop(size_t from_len) const;

  IncrementalDetokenizer detok_;
  TextStreamerOptions opt_;
  std::string text_;
  std::optional<std::string> matched_;
  size_t consumed_ = 0;
  size_t taken_ = 0;  // bytes of text_ returned by take_chunk()
  bool finished_ = false;
};

}  // namespace zr
