// Byte-level BPE from a Hugging Face tokenizer.json (Qwen2/2.5/3, Llama 3, GPT-2 style), behind
// TokenizerBackend. Encoding, as HF tokenizers does it:
//   added tokens split out first (leftmost-longest over their contents, matched on the raw text)
//   -> normalizer on each piece between them (NFC for Qwen) -> pre-tokenizer regex splits
//   -> BPE merges per pre-token (model/bpe_model.h) -> the post-processor's special tokens when
//   add_special (a TemplateProcessing, or tokenizer_config.json's add_bos_token/add_eos_token).
// Decoding concatenates the tokens' raw bytes (added tokens: their content) and reads them as
// UTF-8, each maximal invalid subsequence becoming one U+FFFD (Rust's from_utf8_lossy, which HF's
// ByteLevel decoder uses). bos/eos/pad and clean_up_tokenization_spaces come from
// tokenizer_config.json beside tokenizer.json when present.
// Thread-safety: const methods may be called from several threads.
#pragma once

#include <memory>
#include <string>

#include "model/tokenizer.h"

namespace zr {

// Errors: not_found (no file), io_error (not JSON), unsupported (a normalizer, pre-tokenizer,
// model or decoder this build lacks), invalid_argument (inconsistent contents); each names the
// file and the field.
Result<std::unique_ptr<TokenizerBackend>> load_bpe(const std::string& tokenizer_json_path);

}  // namespace zr
