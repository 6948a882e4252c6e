// make-model: deterministic random-weight checkpoints in the Hugging Face layout, with a
// sentencepiece tokenizer trained on the corpus that ships in the repo. Same options, same bytes.
#pragma once

#include <cstdint>
#include <string>

#include "comm/status.h"
#include "model/config.h"
#include "model/dtype.h"

namespace zr {

struct MakeModelOptions {
  std::string preset = "tiny";  // tiny | stories15M | stories110M (ignored when like_dir is set)
  std::string like_dir;         // copy config.json and tokenizer.model from this folder
  uint64_t seed = 0;
  DType dtype = DType::f32;     // f32 | bf16
  std::string out_dir;
};

Result<ModelConfig> preset_config(const std::string& preset);
Status make_model(const MakeModelOptions& opt);
// The built-in corpus (embedded at build time) used to train tokenizers.
std::string_view builtin_corpus();

}  // namespace zr
