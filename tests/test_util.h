// Test helpers: where the shared reference models live, temp dirs.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

namespace zr::testing {

// Built with ASan or TSan (CMake's ZR_SANITIZE): their allocators add redzones, quarantine and
// shadow memory to every malloc, also inside libraries that are not instrumented, so RSS and
// timing bounds do not hold there.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// ZROLLOUT_TEST_MODELS, else ../shared/models beside the checkout.
inline std::optional<std::string> shared_model_dir(const std::string& name) {
  namespace fs = std::filesystem;
  std::string root;
  if (const char* env = std::getenv("ZROLLOUT_TEST_MODELS"); env && *env) root = env;
  else root = std::string(ZR_SOURCE_DIR) + "/../shared/models";
  fs::path p = fs::path(root) / name;
  if (fs::exists(p / "config.json")) return p.string();
  return std::nullopt;
}

// A fresh empty directory under the system temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir() {
    namespace fs = std::filesystem;
    std::string tmpl = (fs::temp_directory_path() / "zrtest-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data()) ? tmpl : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

}  // namespace zr::testing

// Skips the test with a clear message when the shared model is absent.
#define ZR_REQUIRE_SHARED_MODEL(var, name)                                                                         \
  auto var##_opt = ::zr::testing::shared_model_dir(name);                                                          \
  if (!var##_opt)                                                                                                  \
    GTEST_SKIP() << "shared model '" << name << "' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models"; \
  const std::string var = *var##_opt
