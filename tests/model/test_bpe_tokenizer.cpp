// tokenizer.json (byte-level BPE) against Hugging Face's own outputs: every case of
// ../shared/models/tokenizers/{qwen3,llama3}/cases.json (ids and decoded text from tokenizers.js,
// cross-checked with the Rust tokenizers), the prompts and greedy texts of qwen3-tiny and
// llama31-tiny's reference.json; the incremental detokenizer against full decodes; special and
// added tokens; folder rules (tokenizer.json, tokenizer.model, none); merge ranks on a tokenizer
// built here.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "tests/test_util.h"
#include "tests/utf8_check.h"

namespace zr {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::string& kFffd = zr::testing::kReplacementChar;

// ../shared/models/tokenizers/<name>, or nullopt.
std::optional<std::string> tokenizer_dir(const std::string& name) {
  std::string root;
  if (const char* env = std::getenv("ZROLLOUT_TEST_MODELS"); env && *env) root = env;
  else root = std::string(ZR_SOURCE_DIR) + "/../shared/models";
  const fs::path p = fs::path(root) / "tokenizers" / name;
  if (fs::exists(p / "tokenizer.json") && fs::exists(p / "cases.json")) return p.string();
  return std::nullopt;
}

#define REQUIRE_TOKENIZER_DIR(var, name)                                                                               \
  auto var##_opt = tokenizer_dir(name);                                                                                \
  if (!var##_opt)                                                                                                      \
    GTEST_SKIP() << "shared tokenizer '" << name << "' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models"; \
  const std::string var = *var##_opt

using zr::testing::valid_utf8;

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

// Loading a 10 MB tokenizer.json takes a while: one per folder per test binary.
const Tokenizer& cached(const std::string& dir) {
  static std::map<std::string, Tokenizer> loaded;
  auto it = loaded.find(dir);
  if (it == loaded.end()) {
    auto tok = Tokenizer::load(dir);
    EXPECT_TRUE(tok.ok()) << tok.status().to_string();
    it = loaded.emplace(dir, tok.ok() ? std::move(tok).value() : Tokenizer()).first;
  }
  return it->second;
}

std::string stream(const Tokenizer& tok, const std::vector<int>& ids, bool skip) {
  IncrementalDetokenizer det(tok, skip);
  std::string out;
  for (int id : ids) out += det.push(id);
  out += det.flush();
  return out;
}

void check_cases(const std::string& name) {
  REQUIRE_TOKENIZER_DIR(dir, name);
  const Tokenizer& tok = cached(dir);
  ASSERT_TRUE(tok.has_text());
  EXPECT_STREQ(tok.kind(), "bpe");
  const json cases = read_json(dir + "/cases.json")["cases"];
  ASSERT_GE(cases.size(), 100u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string text = cases[i]["text"];
    const std::vector<int> ids = cases[i]["ids"];
    const std::string decoded = cases[i]["decoded"];
    EXPECT_EQ(tok.encode(text, false), ids) << name << " case " << i << ": encode";
    EXPECT_EQ(tok.decode(ids, false), decoded) << name << " case " << i << ": decode";
    EXPECT_EQ(stream(tok, ids, false), decoded) << name << " case " << i << ": incremental";
    EXPECT_EQ(stream(tok, ids, true), tok.decode(ids, true)) << name << " case " << i << ": incremental, skip";
  }
}

TEST(BpeTokenizer, Qwen3Cases) { check_cases("qwen3"); }
TEST(BpeTokenizer, Llama3Cases) { check_cases("llama3"); }

// The tiny checkpoints' folders: prompts encode to reference.json's prompt_ids (Llama 3's with the
// BOS the reference prepends) and greedy ids decode to its text (special tokens kept).
void check_model_folder(const std::string& model, bool bos_prepended) {
  ZR_REQUIRE_SHARED_MODEL(dir, model);
  const Tokenizer& tok = cached(dir);
  ASSERT_TRUE(tok.has_text());
  const json ref = read_json(dir + "/reference.json");
  int checked = 0;
  for (const json& c : ref["cases"]) {
    std::vector<int> want = c["prompt_ids"];
    std::vector<int> got = tok.encode(c["prompt"].get<std::string>(), false);
    if (bos_prepended) got.insert(got.begin(), tok.bos_id());
    EXPECT_EQ(got, want) << model << " " << c["name"];
    if (c["kind"] == "greedy") {
      const std::vector<int> greedy = c["greedy_ids"];
      EXPECT_EQ(tok.decode(greedy, false), c["text"].get<std::string>()) << model << " " << c["name"];
      EXPECT_EQ(stream(tok, greedy, false), tok.decode(greedy, false));
    }
    ++checked;
  }
  EXPECT_GE(checked, 6);
}

TEST(BpeTokenizer, Qwen3TinyFolder) { check_model_folder("qwen3-tiny", false); }
TEST(BpeTokenizer, Llama31TinyFolder) { check_model_folder("llama31-tiny", true); }

TEST(BpeTokenizer, SpecialTokensFromConfig) {
  REQUIRE_TOKENIZER_DIR(qwen_dir, "qwen3");
  REQUIRE_TOKENIZER_DIR(llama_dir, "llama3");
  const Tokenizer& qwen = cached(qwen_dir);
  const Tokenizer& llama = cached(llama_dir);
  // tokenizer_config.json: Qwen3 has no BOS, eos <|im_end|>, pad <|endoftext|>.
  const auto id_of = [](const Tokenizer& t, const std::string& s) {
    auto ids = t.encode(s, false);
    return ids.size() == 1 ? ids[0] : -1;
  };
  EXPECT_EQ(qwen.bos_id(), -1);
  EXPECT_EQ(qwen.eos_id(), id_of(qwen, "<|im_end|>"));
  EXPECT_EQ(qwen.pad_id(), id_of(qwen, "<|endoftext|>"));
  EXPECT_EQ(llama.bos_id(), id_of(llama, "<|begin_of_text|>"));
  EXPECT_EQ(llama.eos_id(), id_of(llama, "<|end_of_text|>"));
  // Neither file set adds tokens around a text (no template, no add_bos_token): as HF.
  EXPECT_EQ(qwen.encode("Hello", true), qwen.encode("Hello", false));
  EXPECT_EQ(llama.encode("Hello", true), llama.encode("Hello", false));
  EXPECT_FALSE(qwen.clean_up_spaces());
  EXPECT_TRUE(llama.clean_up_spaces());
}

TEST(BpeTokenizer, SkipSpecialTokens) {
  REQUIRE_TOKENIZER_DIR(dir, "qwen3");
  const Tokenizer& tok = cached(dir);
  const std::string text = "<|im_start|>user\nHi<|im_end|>\n<think>\nok\n</think>\nYes<|endoftext|>";
  const std::vector<int> ids = tok.encode(text, false);
  const int im_start = tok.encode("<|im_start|>", false).at(0), think = tok.encode("<think>", false).at(0);
  EXPECT_EQ(ids.front(), im_start);
  EXPECT_TRUE(tok.is_special(im_start));
  EXPECT_FALSE(tok.is_special(think));  // an added token that is not special: kept when skipping
  EXPECT_EQ(tok.decode(ids, false), text);
  EXPECT_EQ(tok.decode(ids, true), "user\nHi\n<think>\nok\n</think>\nYes");
  EXPECT_EQ(stream(tok, ids, true), tok.decode(ids, true));
  EXPECT_EQ(tok.token_text(im_start), "<|im_start|>");
  // Ids past the tokenizer (Qwen3 pads its embedding to 151936) decode to nothing.
  std::vector<int> padded = ids;
  padded.insert(padded.begin() + 3, {tok.num_pieces(), tok.num_pieces() + 100, -1});
  EXPECT_EQ(tok.decode(padded, false), text);
  EXPECT_EQ(stream(tok, padded, false), text);
}

// Random id sequences: whole and partial UTF-8 tokens, specials and clean-up patterns. Every
// streamed piece is valid UTF-8 and the pieces add up to decode().
TEST(BpeTokenizer, IncrementalMatchesDecodeOnRandomIds) {
  for (const char* name : {"qwen3", "llama3"}) {
    REQUIRE_TOKENIZER_DIR(dir, name);
    const Tokenizer& tok = cached(dir);
    std::vector<int> pool;
    for (const char* s : {"中文😀🇫🇷é", " .", " ,", " n't", " 's", " 're", " ' ", "'m", "x y", "<|im_end|>", "<|eot_id|>",
                          "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", "日本語"})
      for (int id : tok.encode(s, false)) pool.push_back(id);
    std::mt19937 rng(11);
    std::uniform_int_distribution<int> any(0, tok.num_pieces() + 2);
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<int> ids(1 + trial % 40);
      for (int& id : ids) id = rng() % 3 ? pool[rng() % pool.size()] : any(rng);
      for (bool skip : {false, true}) {
        IncrementalDetokenizer det(tok, skip);
        std::string out;
        for (int id : ids) {
          const std::string piece = det.push(id);
          EXPECT_TRUE(valid_utf8(piece)) << name << " trial " << trial;
          out += piece;
        }
        out += det.flush();
        ASSERT_EQ(out, tok.decode(ids, skip)) << name << " trial " << trial;
      }
    }
  }
}

TEST(BpeTokenizer, CleanUpTokenization) {
  // transformers' clean_up_tokenization: fixed replacements, in order.
  EXPECT_EQ(clean_up_tokenization("a . b , c ? d ! e"), "a. b, c? d! e");
  EXPECT_EQ(clean_up_tokenization("I do n't , we 're , it 's , I 'm , they 've"), "I don't, we're, it's, I'm, they've");
  EXPECT_EQ(clean_up_tokenization("rock ' n roll"), "rock'n roll");
  EXPECT_EQ(clean_up_tokenization("no change here"), "no change here");
}

// ---- a byte-level tokenizer.json built here: ids 0..255 are the bytes (GPT-2 alphabet).

std::string byte_char(int b) {
  const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int cp = b;
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) s.push_back(static_cast<char>(cp));
  else s += static_cast<char>(0xC0 | (cp >> 6)), s += static_cast<char>(0x80 | (cp & 0x3F));
  return s;
}

json tiny_tokenizer_json(const std::vector<std::pair<std::string, std::string>>& merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  json m = json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    m.push_back(json::array({a, b}));
  }
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", m}}},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"post_processor", nullptr},
          {"added_tokens", json::array({{{"id", 1000}, {"content", "<s>"}, {"special", true}},
                                        {{"id", 1001}, {"content", "<tool>"}, {"special", false}}})}};
}

Tokenizer write_and_load(const testing::TempDir& tmp, const json& tok, const json& config = nullptr) {
  std::ofstream(tmp / "tokenizer.json") << tok.dump();
  if (!config.is_null()) std::ofstream(tmp / "tokenizer_config.json") << config.dump();
  auto t = Tokenizer::load(tmp.path());
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  return t.ok() ? std::move(t).value() : Tokenizer();
}

TEST(BpeTokenizer, MergesApplyByRankLeftmostFirst) {
  testing::TempDir tmp;
  // ranks: (b,c) 0, (a,b) 1, (a,bc) 2. "abc": bc first (rank 0), then a+bc. "abab": ab twice.
  Tokenizer tok = write_and_load(tmp, tiny_tokenizer_json({{"b", "c"}, {"a", "b"}, {"a", "bc"}}));
  const int bc = 256, ab = 257, abc = 258;
  EXPECT_EQ(tok.encode("abc", false), std::vector<int>({abc}));
  EXPECT_EQ(tok.encode("abab", false), std::vector<int>({ab, ab}));
  EXPECT_EQ(tok.encode("abbc", false), std::vector<int>({ab, bc}));
  EXPECT_EQ(tok.encode("x<s>abc<tool>", false), std::vector<int>({'x', 1000, abc, 1001}));
  EXPECT_EQ(tok.decode(tok.encode("x<s>abc<tool>", false), true), "xabc<tool>");
  // Bytes that are not UTF-8 decode lossily: one U+FFFD per maximal invalid subsequence.
  EXPECT_EQ(tok.decode(std::vector<int>{0xE4, 0xB8, 'a'}, false), kFffd + "a");
  EXPECT_EQ(tok.decode(std::vector<int>{0xE4, 0xB8, 0xAD}, false), "\xE4\xB8\xAD");
  EXPECT_EQ(tok.decode(std::vector<int>{0x80, 0xFF}, false), kFffd + kFffd);
  EXPECT_EQ(tok.token_text(0xE4), kFffd);
  EXPECT_EQ(stream(tok, {0xE4, 0xB8, 0xAD, 'a', 0xE4}, false),
            "\xE4\xB8\xAD"
            "a" +
                kFffd);
  // A long word (no cache, many merges) merges the same as short ones.
  std::string longword;
  for (int i = 0; i < 300; ++i) longword += "abc";
  EXPECT_EQ(tok.encode(longword, false), std::vector<int>(300, abc));
}

TEST(BpeTokenizer, TemplateAndConfigAddSpecialTokens) {
  testing::TempDir tmp;
  json tok = tiny_tokenizer_json({});
  tok["post_processor"] = {{"type", "TemplateProcessing"},
                           {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                                   {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                           {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1000}}, {"tokens", {"<s>"}}}}}}};
  {
    Tokenizer t = write_and_load(tmp, tok);
    EXPECT_EQ(t.encode("a", true), std::vector<int>({1000, 'a'}));
    EXPECT_EQ(t.encode("a", false), std::vector<int>({'a'}));
    EXPECT_EQ(t.bos_id(), 1000);
  }
  Tokenizer off = write_and_load(
      tmp, tok, {{"add_bos_token", false}, {"bos_token", "<s>"}, {"eos_token", {{"content", "<tool>"}}}});
  EXPECT_EQ(off.encode("a", true), std::vector<int>({'a'}));
  EXPECT_EQ(off.eos_id(), 1001);
}

TEST(BpeTokenizer, FolderRules) {
  testing::TempDir empty;
  auto none = Tokenizer::load(empty.path());
  ASSERT_TRUE(none.ok()) << none.status().to_string();
  EXPECT_FALSE(none->has_text());
  EXPECT_EQ(none->num_pieces(), 0);
  EXPECT_TRUE(none->encode("text", true).empty());
  EXPECT_EQ(none->decode(std::vector<int>{1, 2, 3}), "");
  EXPECT_EQ(stream(*none, {1, 2, 3}, true), "");

  testing::TempDir unsupported;
  json tok = tiny_tokenizer_json({});
  tok["model"]["type"] = "Unigram";
  std::ofstream(unsupported / "tokenizer.json") << tok.dump();
  auto bad = Tokenizer::load(unsupported.path());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code, ErrorCode::unsupported);
  EXPECT_NE(bad.status().message.find("model.type"), std::string::npos) << bad.status().message;
  // ... unless a tokenizer.model sits beside it.
  ZR_REQUIRE_SHARED_MODEL(stories, "stories260K");
  fs::copy_file(stories + "/tokenizer.model", unsupported / "tokenizer.model");
  auto sp = Tokenizer::load(unsupported.path());
  ASSERT_TRUE(sp.ok()) << sp.status().to_string();
  EXPECT_STREQ(sp->kind(), "sentencepiece");
}

}  // namespace
}  // namespace zr
