// Each `zrollout` subcommand registers itself on the CLI11 app; its options are declared once there
// and drive parsing, --help and the start-up log.
#pragma once

#include <CLI/CLI.hpp>

namespace zr::cli {

void add_make_model(CLI::App& app);
void add_generate(CLI::App& app);
void add_score(CLI::App& app);
void add_serve(CLI::App& app);
void add_client(CLI::App& app);
void add_local(CLI::App& app);
void add_trainer(CLI::App& app);
void add_router(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_detokenize(CLI::App& app);
void add_keygen(CLI::App& app);

}  // namespace zr::cli
