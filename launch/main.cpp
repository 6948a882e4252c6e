// zrollout: one binary, one subcommand per mode (make-model, generate, score, ...).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include "launch/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"zrollout: RL rollout engine (CPU, exact per-token logprobs)"};
  app.require_subcommand(1);
  zr::cli::add_make_model(app);
  zr::cli::add_generate(app);
  zr::cli::add_score(app);
  zr::cli::add_serve(app);
  zr::cli::add_client(app);
  zr::cli::add_local(app);
  zr::cli::add_trainer(app);
  zr::cli::add_router(app);
  zr::cli::add_tokenize(app);
  zr::cli::add_detokenize(app);
  zr::cli::add_keygen(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
