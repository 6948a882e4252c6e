// Tokenizer against stories260K's sentencepiece model and its reference.json (ids and text from
// llama2.c), plus UTF-8 safety and the incremental detokenizer on random id sequences.
#include "model/tokenizer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "tests/test_util.h"
#include "tests/utf8_check.h"

namespace zr {
namespace {

constexpr int kByteBase = 3;  // stories260K: <0x00> is id 3 (after <unk>, <s>, </s>)
const std::string& kFffd = zr::testing::kReplacementChar;

using zr::testing::valid_utf8;

Tokenizer load_stories(const std::string& dir) {
  auto tok = Tokenizer::load(dir + "/tokenizer.model");
  EXPECT_TRUE(tok.ok()) << tok.status().to_string();
  return std::move(tok).value();
}

std::vector<int> byte_ids(const std::string& bytes) {
  std::vector<int> ids;
  for (unsigned char c : bytes) ids.push_back(kByteBase + c);
  return ids;
}

std::string stream(const Tokenizer& tok, const std::vector<int>& ids, bool skip) {
  IncrementalDetokenizer det(tok, skip);
  std::string out;
  for (int id : ids) {
    const std::string piece = det.push(id);
    EXPECT_TRUE(valid_utf8(piece));
    out += piece;
  }
  out += det.flush();
  EXPECT_EQ(out, det.text());
  return out;
}

// Random ids weighted towards what breaks streaming: byte pieces forming valid, truncated and
// invalid UTF-8, specials, out-of-range ids, and ordinary pieces (some starting with "▁").
std::vector<int> random_ids(std::mt19937& rng, int num_pieces, int len) {
  std::vector<int> ids;
  std::uniform_int_distribution<int> kind(0, 9), any(0, num_pieces - 1), byte(0, 255);
  const std::vector<std::string> chars = {"\xC3\xA9", "\xE7\x8C\xAB", "\xF0\x9F\x9A\x80", "\xE2\x82\xAC",
                                          "\xED\x9F\xBF"};
  while (static_cast<int>(ids.size()) < len) {
    const int k = kind(rng);
    if (k <= 2) {
      const std::string& c = chars[rng() % chars.size()];
      const size_t cut = (rng() % 4 == 0) ? 1 + rng() % c.size() : c.size();  // sometimes truncated
      for (int id : byte_ids(c.substr(0, cut))) ids.push_back(id);
    } else if (k == 3) {
      ids.push_back(kByteBase + byte(rng));
    } else if (k == 4) {
      ids.push_back(static_cast<int>(rng() % 3));  // <unk>, <s>, </s>
    } else if (k == 5) {
      ids.push_back(rng() % 2 ? -1 - static_cast<int>(rng() % 5) : num_pieces + static_cast<int>(rng() % 5));
    } else {
      ids.push_back(any(rng));
    }
  }
  return ids;
}

TEST(Tokenizer, LoadErrors) {
  testing::TempDir tmp;
  auto missing = Tokenizer::load(tmp / "nope.model");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code, ErrorCode::not_found);
  std::ofstream(tmp / "bad.model") << "this is not a sentencepiece model";
  auto bad = Tokenizer::load(tmp / "bad.model");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code, ErrorCode::io_error);
}

TEST(Tokenizer, Stories260KRoundTrip) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  Tokenizer tok = load_stories(dir);
  EXPECT_EQ(tok.num_pieces(), 512);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), -1);
  const std::vector<int> prompt = {1, 403, 407, 261, 378};
  EXPECT_EQ(tok.encode("Once upon a time", true), prompt);
  EXPECT_EQ(tok.encode("Once upon a time", false), std::vector<int>(prompt.begin() + 1, prompt.end()));
  EXPECT_EQ(tok.decode(prompt), "Once upon a time");
  for (const char* text :
       {"Lily saw a big dog.", "caf\xC3\xA9 \xE7\x8C\xAB \xF0\x9F\x9A\x80!", "One day, Tom (7) ran.\nThe end."}) {
    EXPECT_EQ(tok.decode(tok.encode(text, true)), text);
  }
}

TEST(Tokenizer, Stories260KReferenceText) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  Tokenizer tok = load_stories(dir);
  // reference.json, case 0: greedy ids after "Once upon a time" and their text.
  const std::vector<int> ids = {432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
                                410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394};
  const std::string text =
      ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw";
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(stream(tok, ids, true), text);
  std::vector<int> with_prompt = {1, 403, 407, 261, 378};
  with_prompt.insert(with_prompt.end(), ids.begin(), ids.end());
  EXPECT_EQ(stream(tok, with_prompt, true), "Once upon a time" + text);
}

TEST(Tokenizer, SpecialTokens) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  Tokenizer tok = load_stories(dir);
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_TRUE(tok.is_special(1));
  EXPECT_TRUE(tok.is_special(2));
  EXPECT_FALSE(tok.is_special(403));
  EXPECT_FALSE(tok.is_special(kByteBase + 0x41));
  EXPECT_FALSE(tok.is_special(-1));
  EXPECT_FALSE(tok.is_special(512));
  const std::vector<int> ids = {1, 403, 407, 2, 0};
  EXPECT_EQ(tok.decode(ids, true), "Once upon");
  EXPECT_EQ(tok.decode(ids, false), "<s> Once upon</s><unk>");
  EXPECT_EQ(stream(tok, ids, false), tok.decode(ids, false));
  // A dropped special does not split a character spelled in byte pieces.
  const std::vector<int> split = {kByteBase + 0xE2, 2, kByteBase + 0x82, kByteBase + 0xAC};
  EXPECT_EQ(tok.decode(split, true), "\xE2\x82\xAC");
  EXPECT_EQ(tok.decode(split, false), kFffd + "</s>" + kFffd + kFffd);
}

TEST(Tokenizer, OutOfRangeIdsDecodeToNothing) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  Tokenizer tok = load_stories(dir);
  const std::vector<int> clean = {403, 407};
  const std::vector<int> noisy = {-7, 403, 512, 100000, 407, -1};
  EXPECT_EQ(tok.decode(noisy, true), tok.decode(clean, true));
  EXPECT_EQ(tok.decode(noisy, false), tok.decode(clean, false));
  EXPECT_EQ(tok.token_text(-1), "");
  EXPECT_EQ(tok.token_text(512), "");
  EXPECT_EQ(stream(tok, noisy, true), "Once upon");
}

TEST(Tokenizer, TokenText) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  Tokenizer tok = load_stories(dir);
  EXPECT_EQ(tok.token_text(403), " Once");
  EXPECT_EQ(tok.token_text(1), "<s>");
  EXPECT_EQ(tok.token_text(kByteBase + 0x41), "A");
  EXPECT_EQ(tok.token_text(kByteBase + 0xE2), kFffd);
  for (int id = 0; id < tok.num_pieces(); ++id) {
    EXPECT_TRUE(valid_utf8(tok.token_text(id))) << "id " << id;
  }
}

TEST(Tokenizer, ByteFallbackUtf8) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  Tokenizer tok = load_stories(dir);
  EXPECT_EQ(tok.decode(byte_ids("\xF0\x9F\x9A\x80")), "\xF0\x9F\x9A\x80");
  EXPECT_EQ(tok.decode(byte_ids("\xF0\x9F\x9A")), kFffd + kFffd + kFffd);  // truncated
  EXPECT_EQ(tok.decode(byte_ids("\xC0\xAF")), kFffd + kFffd);              // overlong
  EXPECT_EQ(tok.decode(byte_ids("\xED\xA0\x80")), kFffd + kFffd + kFffd);  // surrogate
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> any(-3, tok.num_pieces() + 3);
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<int> ids(1 + trial % 24);
    for (int& id : ids) id = any(rng);
    EXPECT_TRUE(valid_utf8(tok.decode(ids, true)));
    EXPECT_TRUE(valid_utf8(tok.decode(ids, false)));
  }
}

TEST(Tokenizer, IncrementalEqualsFullDecode) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  Tokenizer tok = load_stories(dir);
  std::mt19937 rng(12345);
  for (int trial = 0; trial < 3000; ++trial) {
    const std::vector<int> ids = random_ids(rng, tok.num_pieces(), 1 + trial % 40);
    for (bool skip : {true, false}) {
      const std::string full = tok.decode(ids, skip);
      ASSERT_TRUE(valid_utf8(full));
      ASSERT_EQ(stream(tok, ids, skip), full) << "trial " << trial << " skip " << skip;
    }
  }
}

TEST(Tokenizer, IncrementalHoldsPartialCharacters) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  Tokenizer tok = load_stories(dir);
  IncrementalDetokenizer det(tok, true);
  EXPECT_EQ(det.push(403), "Once");
  EXPECT_EQ(det.push(kByteBase + 0xF0), "");
  EXPECT_EQ(det.push(kByteBase + 0x9F), "");
  EXPECT_EQ(det.push(kByteBase + 0x9A), "");
  EXPECT_EQ(det.push(kByteBase + 0x80), "\xF0\x9F\x9A\x80");
  EXPECT_EQ(det.push(407), " upon");
  EXPECT_EQ(det.push(kByteBase + 0xE2), "");
  EXPECT_EQ(det.flush(), kFffd);
  EXPECT_EQ(det.text(), "Once\xF0\x9F\x9A\x80 upon" + kFffd);
}

TEST(Tokenizer, IncrementalLongStreamIsLinear) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  Tokenizer tok = load_stories(dir);
  std::mt19937 rng(99);
  const std::vector<int> ids = random_ids(rng, tok.num_pieces(), 200000);
  const auto start = std::chrono::steady_clock::now();
  const std::string out = stream(tok, ids, true);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(out, tok.decode(ids, true));
  EXPECT_LT(secs, 20.0) << "quadratic streaming? 200k tokens took " << secs << " s";
}

}  // namespace
}  // namespace zr
