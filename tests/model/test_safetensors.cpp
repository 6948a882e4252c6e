// safetensors files: deterministic writing, reading back (single file and sharded index), views
// that outlive the archive, and corrupt or unsupported files refused with the tensor named.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/model/checkpoint_files.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using json = nlohmann::json;
using testing::make_tensor;
using testing::read_bytes;
using testing::TempDir;
using testing::write_raw;
using testing::write_sharded;
using testing::write_text;
namespace fs = std::filesystem;

TEST(LoaderSafetensors, WriteReadRoundTrip) {
  TempDir tmp;
  std::vector<TensorToWrite> ts = {make_tensor("zeta", {3, 5}, DType::f32, 1),
                                   make_tensor("alpha", {7}, DType::bf16, 2),
                                   make_tensor("mid", {2, 2, 3}, DType::f16, 3)};
  ASSERT_TRUE(write_safetensors(tmp / "a.safetensors", ts, {{"format", "pt"}}).ok());
  ASSERT_TRUE(write_safetensors(tmp / "b.safetensors", ts, {{"format", "pt"}}).ok());
  std::string raw = read_bytes(tmp / "a.safetensors");
  EXPECT_EQ(raw, read_bytes(tmp / "b.safetensors"));  // deterministic
  uint64_t hlen = 0;
  std::memcpy(&hlen, raw.data(), 8);
  EXPECT_EQ(hlen % 8, 0u);
  std::string header = raw.substr(8, hlen);
  EXPECT_LT(header.find("\"__metadata__\""), header.find("\"alpha\""));  // keys sorted
  EXPECT_LT(header.find("\"alpha\""), header.find("\"mid\""));
  EXPECT_LT(header.find("\"mid\""), header.find("\"zeta\""));
  EXPECT_EQ(raw.substr(8 + hlen, ts[0].bytes.size()), std::string(ts[0].bytes.begin(), ts[0].bytes.end()));

  auto ar = SafetensorsArchive::open_file(tmp / "a.safetensors");
  ASSERT_TRUE(ar.ok()) << ar.status().to_string();
  ASSERT_EQ(ar->tensors().size(), 3u);
  for (const auto& t : ts) {
    const TensorView* v = ar->find(t.name);
    ASSERT_NE(v, nullptr) << t.name;
    EXPECT_EQ(v->dtype, t.dtype);
    EXPECT_EQ(v->shape, t.shape);
    ASSERT_EQ(v->nbytes, t.bytes.size());
    EXPECT_EQ(std::memcmp(v->data, t.bytes.data(), v->nbytes), 0);
  }
  EXPECT_EQ(ar->find("__metadata__"), nullptr);
}

TEST(LoaderSafetensors, ViewOutlivesArchive) {
  TempDir tmp;
  auto t = make_tensor("w", {64}, DType::f32, 5);
  ASSERT_TRUE(write_safetensors(tmp / "m.safetensors", {t}).ok());
  TensorView v;
  {
    auto ar = SafetensorsArchive::open_file(tmp / "m.safetensors");
    ASSERT_TRUE(ar.ok());
    v = *ar->find("w");
  }
  EXPECT_EQ(std::memcmp(v.data, t.bytes.data(), t.bytes.size()), 0);
}

TEST(LoaderSafetensors, UnsupportedDtype) {
  TempDir tmp;
  for (const char* dt : {"I32", "F64"}) {
    std::string data(16, '\0');
    json h = {{"ok", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
              {"odd.weight", {{"dtype", dt}, {"shape", {1}}, {"data_offsets", {8, 8 + (dt[1] == '6' ? 8 : 4)}}}}};
    write_raw(tmp / "x.safetensors", h.dump(), data);
    auto st = SafetensorsArchive::open_file(tmp / "x.safetensors").status();
    EXPECT_ERROR(st, ErrorCode::unsupported, "odd.weight");
    EXPECT_NE(st.message.find(dt), std::string::npos) << st.message;
  }
}

TEST(LoaderSafetensors, CorruptFiles) {
  TempDir tmp;
  const std::string p = tmp / "m.safetensors";
  ASSERT_TRUE(write_safetensors(p, {make_tensor("a", {4}, DType::f32, 0), make_tensor("b", {8}, DType::f32, 1)}).ok());
  fs::resize_file(p, fs::file_size(p) - 4);  // cut into the last tensor
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, "truncated");
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, "tensor b");

  write_raw(p, "{}", "");
  std::string raw = read_bytes(p);
  raw[0] = static_cast<char>(0xff);  // header length 255 > file
  write_text(p, raw);
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, "header length");
  write_text(p, "abc");
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, "truncated");
  write_raw(p, "{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", std::string(8, '\0'));
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, "tensor a");
  write_raw(p, "{\"a\": [1, 2", "");
  EXPECT_ERROR(SafetensorsArchive::open_file(p).status(), ErrorCode::io_error, p);
  EXPECT_ERROR(SafetensorsArchive::open_file(tmp / "none.safetensors").status(), ErrorCode::not_found,
               "none.safetensors");
}

TEST(LoaderSafetensors, WriteErrors) {
  TempDir tmp;
  auto t = make_tensor("w", {4}, DType::f32, 0);
  t.bytes.pop_back();
  EXPECT_ERROR(write_safetensors(tmp / "m.safetensors", {t}), ErrorCode::invalid_argument, "w");
  auto u = make_tensor("w", {4}, DType::f32, 0);
  EXPECT_ERROR(write_safetensors(tmp / "m.safetensors", {u, u}), ErrorCode::invalid_argument, "w");
  EXPECT_ERROR(write_safetensors(tmp / "no/such/dir/m.safetensors", {u}), ErrorCode::io_error, "m.safetensors");
}

TEST(LoaderSafetensors, OpenDirErrors) {
  TempDir tmp;
  EXPECT_ERROR(SafetensorsArchive::open_dir(tmp.path()).status(), ErrorCode::not_found, tmp.path());
  write_sharded(tmp.path(), {make_tensor("a", {2}, DType::f32, 0), make_tensor("b", {2}, DType::f32, 1)});
  ASSERT_TRUE(SafetensorsArchive::open_dir(tmp.path()).ok());
  fs::remove(tmp / "model-00002-of-00002.safetensors");
  EXPECT_ERROR(SafetensorsArchive::open_dir(tmp.path()).status(), ErrorCode::not_found,
               "model-00002-of-00002.safetensors");
  write_text(
      tmp / "model.safetensors.index.json",
      json({{"weight_map", {{"a", "model-00001-of-00002.safetensors"}, {"ghost", "model-00001-of-00002.safetensors"}}}})
          .dump());
  EXPECT_ERROR(SafetensorsArchive::open_dir(tmp.path()).status(), ErrorCode::io_error, "ghost");
  write_text(tmp / "model.safetensors.index.json", "{\"weight_map\": 3}");
  EXPECT_ERROR(SafetensorsArchive::open_dir(tmp.path()).status(), ErrorCode::io_error, "weight_map");
}

}  // namespace
}  // namespace zr
