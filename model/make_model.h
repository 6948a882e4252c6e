// make-model: deterministic random-weight checkpoints in the Hugging Face layout: a preset with a
// sentencepiece tokenizer trained on the corpus that ships in the repo, or the shape, config,
// generation config and tokenizer files of another model folder (--like). Same options, same bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "comm/status.h"
#include "model/config.h"
#include "model/dtype.h"

namespace zr {

struct MakeModelOptions {
  std::string preset = "tiny";  // tiny | stories15M | stories110M | qwen2.5-0.5b (ignored when like_dir is set)
  // Copy this folder's config.json (only its dtype changed), generation_config.json and tokenizer
  // files (tokenizer.model, tokenizer.json, tokenizer_config.json, ...: whichever it has).
  std::string like_dir;
  // A preset's tokenizer: "" trains one on the built-in corpus; "none" writes none (token-only
  // mode: input_ids in, no text out); else a folder whose tokenizer files are copied (Qwen2.5's
  // shape with the real Qwen tokenizer.json from ../shared/models/tokenizers/qwen3: its ids fit the
  // 151,936-entry vocabulary). Tokenizer files are never part of the repository.
  std::string tokenizer;
  uint64_t seed = 0;
  std::optional<DType> dtype;  // default: the preset's (f32; bf16 for qwen2.5-0.5b), the source's for like_dir
  std::string out_dir;
};

Result<ModelConfig> preset_config(const std::string& preset);
Status make_model(const MakeModelOptions& opt);
// The built-in corpus (embedded at build time) used to train tokenizers.
std::string_view builtin_corpus();

}  // namespace zr
