// Benchmarks' default models: made once by make-model into ./bench_models/<preset> (not shipped).
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>

#include "model/make_model.h"

namespace zr::bench {

// The folder of a preset-shaped random model, made on first use; empty on failure (printed).
inline std::string default_model(const std::string& preset) {
  std::string dir = "bench_models/" + preset;
  if (std::filesystem::exists(dir + "/config.json")) return dir;
  MakeModelOptions mo;
  mo.preset = preset;
  mo.out_dir = dir;
  if (Status st = make_model(mo); !st.ok()) {
    std::fprintf(stderr, "make-model %s: %s\n", preset.c_str(), st.to_string().c_str());
    return {};
  }
  return dir;
}

}  // namespace zr::bench
