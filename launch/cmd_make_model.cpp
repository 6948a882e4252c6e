// `zrollout make-model`: writes a deterministic random-weight checkpoint (see model/make_model.h).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>

#include "launch/commands.h"
#include "model/make_model.h"

namespace zr::cli {

void add_make_model(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "make-model",
      "Write a random-weight checkpoint: config.json, model.safetensors and a tokenizer (trained for a "
      "preset; copied with the config and generation_config.json for --like)");
  // Owned by the callback, which CLI11 keeps alive as long as the app.
  auto opt = std::make_shared<MakeModelOptions>();
  CLI::Option* preset = cmd->add_option("--preset", opt->preset, "architecture preset")
                            ->check(CLI::IsMember({"tiny", "stories15M", "stories110M", "qwen2.5-0.5b"}))
                            ->capture_default_str();
  CLI::Option* like = cmd->add_option("--like", opt->like_dir,
                                      "copy the shape, config.json, generation_config.json and tokenizer files "
                                      "of this model folder (Llama, Mistral, Qwen2, Qwen3)")
                          ->check(CLI::ExistingDirectory);
  preset->excludes(like);
  cmd->add_option("--tokenizer", opt->tokenizer,
                  "a preset's tokenizer: 'none' (token ids only), or a folder to copy tokenizer.json / "
                  "tokenizer.model and tokenizer_config.json from (e.g. ../shared/models/tokenizers/qwen3 "
                  "for qwen2.5-0.5b; default: one trained on the built-in corpus)")
      ->excludes(like);
  cmd->add_option("--seed", opt->seed, "seed of the random weights")->capture_default_str();
  auto dtype = std::make_shared<std::string>();
  cmd->add_option("--dtype", *dtype,
                  "weight dtype (default: f32 for a preset, bf16 for qwen2.5-0.5b, the source's dtype for --like)")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  cmd->add_option("--out", opt->out_dir, "output folder (created if missing)")->required();

  cmd->callback([cmd, opt, dtype] {
    if (!dtype->empty()) opt->dtype = dtype_from_name(*dtype == "f32" ? "F32" : *dtype == "bf16" ? "BF16" : "F16");
    std::string options = cmd->config_to_str(true, false);
    std::replace(options.begin(), options.end(), '\n', ' ');
    spdlog::info("make-model: {}", options);
    const Status st = make_model(*opt);
    if (!st.ok()) {
      spdlog::error("make-model failed: {}", st.to_string());
      // main() returns 0 once parsing succeeds; a failed command must still fail the process.
      std::exit(EXIT_FAILURE);
    }
    spdlog::info("make-model: wrote {}", opt->out_dir);
  });
}

}  // namespace zr::cli
