// Engine options shared by every subcommand that runs an engine (generate, score, serve, ...):
// declared once here, they drive parsing, --help and the start-up log line.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "actors/engine/engine.h"

namespace zr::cli {

struct EngineCliOptions {
  std::string model;
  int threads = 0;
  int max_running = 256;
  int max_step_tokens = 2048;
  int max_prefill_chunk = 512;
  int kv_cache_mb = 1024;
  int kv_block_size = 16;
  bool mmap_weights = false;
  bool kv_lazy_pages = false;
  bool no_detokenize = false;
  std::string compute = "f32";
  std::string kv_dtype = "f32";
  bool no_prefix_cache = false;
  std::string log_level = "info";

  EngineOptions engine_options() const;
  std::string describe() const;  // for the start-up log
};

void add_engine_options(CLI::App* cmd, EngineCliOptions& o);
// Makes the default logger print "[actor@rankN]" on every line (rank from mpirun, else 0).
void set_process_logger(const std::string& actor, const std::string& level);
// Applies --log-level, logs the options and machine notes (e.g. OPENBLAS_CORETYPE).
void log_startup(const std::string& command, const EngineCliOptions& o);

}  // namespace zr::cli
