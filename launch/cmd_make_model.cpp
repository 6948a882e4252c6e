// `zrollout make-model`: writes a deterministic random-weight checkpoint (see model/make_model.h).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdlib>
#include <string>
#include <memory>

#include "launch/commands.h"
#include "model/make_model.h"

namespace zr::cli {

void add_make_model(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "make-model", "Write a random-weight Llama checkpoint: config.json, model.safetensors, tokenizer.model");
  // Owned by the callback, which CLI11 keeps alive as long as the app.
  auto opt = std::make_shared<MakeModelOptions>();
  CLI::Option* preset = cmd->add_option("--preset", opt->preset, "architecture preset")
                            ->check(CLI::IsMember({"tiny", "stories15M", "stories110M"}))
                            ->capture_default_str();
  CLI::Option* like = cmd->add_option("--like", opt->like_dir,
                                      "copy config.json and tokenizer.model from this model folder")
                          ->check(CLI::ExistingDirectory);
  preset->excludes(like);
  cmd->add_option("--seed", opt->seed, "seed of the random weights")->capture_default_str();
  auto dtype = std::make_shared<std::string>("f32");
  cmd->add_option("--dtype", *dtype, "weight dtype")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--out", opt->out_dir, "output folder (created if missing)")->required();

  cmd->callback([cmd, opt, dtype] {
    opt->dtype = *dtype == "bf16" ? DType::bf16 : DType::f32;
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
