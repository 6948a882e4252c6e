// dtype names and conversions: bf16 and f16 rounding (to nearest even, subnormals, inf, NaN), every
// 16-bit value round-tripped, f16 against the compiler's _Float16.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <utility>

#include "tests/model/checkpoint_files.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using testing::bits;
using testing::from_bits;

TEST(LoaderDtype, Names) {
  for (DType t : {DType::f32, DType::bf16, DType::f16}) EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  EXPECT_STREQ(dtype_name(DType::bf16), "BF16");
  EXPECT_FALSE(dtype_from_name("F64").has_value());
  EXPECT_FALSE(dtype_from_name("I32").has_value());
  EXPECT_FALSE(dtype_from_name("f32").has_value());
}

TEST(LoaderDtype, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000)), 0x3f80);  // tie, even below
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000)), 0x3f82);  // tie, even above
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001)), 0x3f81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f807fff)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-0.29474878f), 0xbe97);           // stories260K embed[0][0]
  EXPECT_EQ(f32_to_bf16(from_bits(0x7f7fffff)), 0x7f80);  // FLT_MAX rounds to inf
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7f800001)))));  // low-payload NaN
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), h);
  }
}

TEST(LoaderDtype, F16KnownValues) {
  const std::pair<uint16_t, float> exact[] = {
      {0x3c00, 1.0f},      {0xc000, -2.0f},    {0x7bff, 65504.0f},    // max finite
      {0x0400, 0x1p-14f},  {0x0001, 0x1p-24f}, {0x03ff, 0x3ffp-24f},  // min normal, subnormals
      {0x8001, -0x1p-24f}, {0x7c00, INFINITY}, {0xfc00, -INFINITY}};
  for (auto [h, f] : exact) {
    EXPECT_EQ(f16_to_f32(h), f) << std::hex << h;
    EXPECT_EQ(f32_to_f16(f), h) << f;
  }
  EXPECT_EQ(bits(f16_to_f32(0x8000)), 0x80000000u);  // -0
  const std::pair<float, uint16_t> rounded[] = {
      {65519.0f, 0x7bff},        {65520.0f, 0x7c00},         // the tie rounds to even: inf
      {-1e6f, 0xfc00},           {1.0f + 0x1p-11f, 0x3c00},  // tie, even below
      {1.0f + 0x3p-11f, 0x3c02}, {0x1p-25f, 0x0000},         // ties, even above; 0 vs min subnormal
      {0x3p-26f, 0x0001},        {0x3p-25f, 0x0002},         // subnormal ties: 1.5 ulp up, 2.5 ulp down
      {0x5p-25f, 0x0002},        {0x7ffp-25f, 0x0400},       // carries into the min normal
      {-0x1p-30f, 0x8000}};
  for (auto [f, h] : rounded) EXPECT_EQ(f32_to_f16(f), h) << f;
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(from_bits(0x7f800001)))));
}

TEST(LoaderDtype, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      ASSERT_EQ(h & 0x7c00u, 0x7c00u);
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

#ifdef __FLT16_MAX__
// The compiler's _Float16 conversion is an independent reference for rounding.
TEST(LoaderDtype, F16MatchesCompilerConversion) {
  uint32_t u = 12345;
  for (int i = 0; i < 2000000; ++i) {
    u = u * 1664525u + 1013904223u;
    float f = from_bits(u);
    if (std::isnan(f)) continue;
    _Float16 h = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &h, 2);
    ASSERT_EQ(f32_to_f16(f), want) << f;
    ASSERT_EQ(bits(f16_to_f32(want)), bits(static_cast<float>(h)));
  }
}
#endif

}  // namespace
}  // namespace zr
