// Sentencepiece `tokenizer.model` behind TokenizerBackend; this file pair is the only includer of
// sentencepiece (training too: train_tokenizer in model/tokenizer.h is defined there).
#pragma once

#include <memory>
#include <string>

#include "model/tokenizer.h"

namespace zr {

// Errors: not_found (missing file), io_error (not a sentencepiece model).
Result<std::unique_ptr<TokenizerBackend>> load_sentencepiece(const std::string& path);

}  // namespace zr
