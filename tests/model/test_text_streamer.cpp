// TextStreamer: stop strings across token boundaries, multi-byte characters split over byte
// tokens, a stop at the very start, several stops, no_stop_trim, and the streamed chunks (always a
// prefix of the final text, never half a character). Expected texts come from Tokenizer::decode of
// the same ids (the whole sequence at once), not from the streamer.
#include "model/text_streamer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/utf8_check.h"

namespace zr {
namespace {

constexpr int kByteBase = 3;  // stories260K: <0x00> is id 3 (after <unk>, <s>, </s>)

class TextStreamerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = Tokenizer::load(std::string(ZR_SOURCE_DIR) + "/models/stories260K/tokenizer.model");
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    tok_ = std::move(t).value();
  }
  static std::vector<int> bytes(const std::string& s) {
    std::vector<int> ids;
    for (unsigned char c : s) ids.push_back(kByteBase + c);
    return ids;
  }
  // Pushes ids one by one, taking a chunk after each; returns the index of the id that completed a
  // stop string (-1: none). Every chunk must be valid UTF-8 and the chunks so far a prefix of the
  // text so far (nothing streamed is ever taken back).
  int run(TextStreamer& s, const std::vector<int>& ids, std::string& streamed) {
    int hit = -1;
    for (size_t i = 0; i < ids.size() && hit < 0; ++i) {
      if (s.push(ids[i])) hit = static_cast<int>(i);
      const std::string c = s.take_chunk();
      EXPECT_TRUE(zr::testing::valid_utf8(c)) << "chunk after id " << i;
      streamed += c;
      EXPECT_EQ(s.text().compare(0, streamed.size(), streamed), 0)
          << "streamed '" << streamed << "' text '" << s.text() << "'";
    }
    s.finish();
    streamed += s.take_chunk();
    EXPECT_EQ(streamed, s.text());
    return hit;
  }
  Tokenizer tok_;
};

TEST_F(TextStreamerTest, StopStringAcrossTokenBoundaries) {
  const std::vector<int> ids = tok_.encode("Once upon a time there was a little girl named Lily", false);
  const std::string full = tok_.decode(ids);
  ASSERT_GT(ids.size(), 6u);
  // A stop string straddling the boundary after token b (2 bytes each side), whose first
  // occurrence is there.
  for (size_t b = 2; b + 2 < ids.size(); ++b) {
    const size_t cut = tok_.decode(std::vector<int>(ids.begin(), ids.begin() + static_cast<long>(b))).size();
    if (cut < 2 || cut + 2 > full.size()) continue;
    const std::string stop = full.substr(cut - 2, 4);
    if (full.find(stop) != cut - 2) continue;
    TextStreamer s(tok_, {{stop}, true, false});
    std::string streamed;
    const int hit = run(s, ids, streamed);
    EXPECT_EQ(s.text(), full.substr(0, cut - 2)) << "stop '" << stop << "'";
    ASSERT_TRUE(s.matched());
    EXPECT_EQ(*s.matched(), stop);
    ASSERT_GE(hit, static_cast<int>(b)) << "stop '" << stop << "' matched before its last byte arrived";
    const size_t upto = tok_.decode(std::vector<int>(ids.begin(), ids.begin() + hit + 1)).size();
    const size_t before = tok_.decode(std::vector<int>(ids.begin(), ids.begin() + hit)).size();
    EXPECT_GE(upto, cut + 2) << "matched at id " << hit << " before the stop was complete";
    EXPECT_LT(before, cut + 2) << "matched at id " << hit << ", one id late";
    EXPECT_EQ(s.consumed(), static_cast<size_t>(hit + 1));
  }
}

TEST_F(TextStreamerTest, MultiByteCharacterSplitAcrossByteTokens) {
  // "a€b": € is E2 82 AC, one byte token each. Nothing of it streams until it is whole.
  TextStreamer s(tok_, {{}, true, false});
  const std::vector<int> ids = bytes(
      "a\xE2\x82\xAC"
      "b");
  std::vector<std::string> chunks;
  for (int id : ids) {
    EXPECT_FALSE(s.push(id));
    chunks.push_back(s.take_chunk());
  }
  EXPECT_EQ(chunks, (std::vector<std::string>{"a", "", "", "\xE2\x82\xAC", "b"}));
  EXPECT_EQ(s.text(),
            "a\xE2\x82\xAC"
            "b");
}

TEST_F(TextStreamerTest, StopEndingInAMultiByteCharacterIsHeldWhole) {
  // Stop "x€": after "x" and the first two bytes of €, "x" is held (it may start the stop); the
  // stop completes on the last byte and the text ends before it.
  TextStreamer s(tok_, {{"x\xE2\x82\xAC"}, true, false});
  std::string streamed;
  const int hit = run(s,
                      bytes("ab"
                            "x\xE2\x82\xAC"
                            "cd"),
                      streamed);
  EXPECT_EQ(hit, 5);  // the last byte of €
  EXPECT_EQ(s.text(), "ab");
  // Same bytes, a different character after "x": the held "x" goes out once the text goes on.
  TextStreamer t(tok_, {{"x\xE2\x82\xAC"}, true, false});
  EXPECT_FALSE(t.push(kByteBase + 'x'));
  EXPECT_EQ(t.take_chunk(), "");
  for (int id : bytes("\xE2\x82\xAD")) EXPECT_FALSE(t.push(id));
  EXPECT_EQ(t.take_chunk(), "x\xE2\x82\xAD");
}

TEST_F(TextStreamerTest, StopAtTheVeryStart) {
  const std::vector<int> ids = bytes("Stop here");
  TextStreamer s(tok_, {{"St"}, true, false});
  std::string streamed;
  EXPECT_EQ(run(s, ids, streamed), 1);
  EXPECT_EQ(s.text(), "");
  EXPECT_EQ(streamed, "");
  // A first token whose text is the stop string and more.
  const std::vector<int> words = tok_.encode("Once upon a time", false);
  const std::string first = tok_.decode(std::vector<int>{words[0]});
  ASSERT_FALSE(first.empty());
  TextStreamer w(tok_, {{first.substr(0, 1)}, true, false});
  EXPECT_TRUE(w.push(words[0]));
  EXPECT_EQ(w.text(), "");
  EXPECT_EQ(w.take_chunk(), "");
}

TEST_F(TextStreamerTest, SeveralStopsTheFirstCompletedWins) {
  // "qabcd" arrives as "q" then one id for "abcd" when such a piece exists; as bytes otherwise.
  // Stops in list order: "bcd" (ends at 4), "ab" (ends at 3): "ab" completed first.
  for (bool one_piece : {false, true}) {
    std::vector<int> ids = bytes("q");
    if (one_piece) {
      const std::vector<int> w = tok_.encode("abcd", false);
      ids.insert(ids.end(), w.begin(), w.end());
    } else {
      for (int id : bytes("abcd")) ids.push_back(id);
    }
    TextStreamer s(tok_, {{"bcd", "ab", "zz"}, true, false});
    std::string streamed;
    run(s, ids, streamed);
    ASSERT_TRUE(s.matched());
    EXPECT_EQ(*s.matched(), "ab");
    const std::string full = tok_.decode(ids);
    EXPECT_EQ(s.text(), full.substr(0, full.find("ab")));
  }
  // Same end: the longer one (it starts earlier) is the match.
  TextStreamer s(tok_, {{"cd", "bcd"}, true, false});
  std::string streamed;
  run(s, bytes("abcde"), streamed);
  ASSERT_TRUE(s.matched());
  EXPECT_EQ(*s.matched(), "bcd");
  EXPECT_EQ(s.text(), "a");
}

TEST_F(TextStreamerTest, HeldTextIsOnlyAStopPrefix) {
  // Stop "!!": "x!" streams "x" and holds "!"; "x!y" streams all of it; finish releases a hold.
  TextStreamer s(tok_, {{"!!", "long stop string"}, true, false});
  s.push(kByteBase + 'x');
  EXPECT_EQ(s.take_chunk(), "x");  // "x" starts no stop: nothing held for the longer one
  s.push(kByteBase + '!');
  EXPECT_EQ(s.take_chunk(), "");
  s.push(kByteBase + 'y');
  EXPECT_EQ(s.take_chunk(), "!y");
  s.push(kByteBase + '!');
  EXPECT_EQ(s.take_chunk(), "");
  s.finish();
  EXPECT_EQ(s.take_chunk(), "!");
  EXPECT_FALSE(s.matched());
}

TEST_F(TextStreamerTest, NoStopTrimKeepsTheStopAndDropsWhatFollows) {
  const std::vector<int> ids = tok_.encode("Once upon a time there was", false);
  const std::string full = tok_.decode(ids);
  const std::string stop = "a ti";
  const size_t at = full.find(stop);
  ASSERT_NE(at, std::string::npos);
  TextStreamer s(tok_, {{stop}, true, true});
  std::string streamed;
  ASSERT_GE(run(s, ids, streamed), 0);
  EXPECT_EQ(s.text(), full.substr(0, at + stop.size()));
}

TEST_F(TextStreamerTest, AStopTokenEndsWithoutLookingForStopStrings) {
  TextStreamer s(tok_, {{"ab"}, true, false});
  EXPECT_FALSE(s.push(kByteBase + 'a'));
  EXPECT_FALSE(s.push(kByteBase + 'b', /*stop_token=*/true));
  s.finish();
  EXPECT_EQ(s.text(), "ab");
  EXPECT_FALSE(s.matched());
  EXPECT_EQ(s.take_chunk(), "ab");
  EXPECT_FALSE(s.push(kByteBase + 'c'));  // ended: later ids change nothing
  EXPECT_EQ(s.text(), "ab");
}

}  // namespace
}  // namespace zr
