#include "model/bpe_tokenizer.h"

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "model/bpe_model.h"
#include "model/pre_tokenizer.h"

namespace zr {

using nlohmann::json;

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The character starting at b[i]: its length when it is whole and valid UTF-8, else 0 with
// *bad set to the length of the maximal invalid subsequence there (a byte that cannot start a
// character, or the valid start of one that is cut short).
size_t utf8_char_at(std::string_view b, size_t i, size_t* bad) {
  const auto c = static_cast<unsigned char>(b[i]);
  if (c < 0x80) return 1;
  unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  size_t len = 0;
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
  size_t k = 1;
  for (; k < len && i + k < b.size(); ++k) {
    const auto d = static_cast<unsigned char>(b[i + k]);
    if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) break;
  }
  if (len > 0 && k == len) return len;
  *bad = k;
  return 0;
}

bool valid_utf8(std::string_view b) {
  size_t bad = 0;
  for (size_t i = 0, n = 0; i < b.size(); i += n)
    if ((n = utf8_char_at(b, i, &bad)) == 0) return false;
  return true;
}

// Appends `b` read as UTF-8 with each maximal invalid subsequence replaced by one U+FFFD: the
// Unicode "maximal subpart" practice of Rust's from_utf8_lossy (HF's ByteLevel decoder), Python
// and TextDecoder.
void append_lossy(std::string_view b, std::string& out) {
  size_t i = 0, bad = 0;
  while (i < b.size()) {
    const size_t n = utf8_char_at(b, i, &bad);
    if (n > 0) out.append(b, i, n);
    else out.append(kReplacement);
    i += n > 0 ? n : bad;
  }
}

Result<json> read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::not_found, "tokenizer: no file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return make_error(ErrorCode::io_error, "tokenizer: " + path + " is not a JSON object");
  return j;
}

const json& field_or_null(const json& j, const char* name) {
  static const json kNull;
  auto it = j.find(name);
  return it == j.end() ? kNull : *it;
}

// A token named in tokenizer_config.json: "text" or {"content": "text", ...} (AddedToken).
std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_word_byte(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || std::isalnum(u) || c == '_';
}

struct AddedToken {
  int id = 0;
  std::string content;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
};

// Byte trie over the added tokens' contents, for leftmost-longest matching.
class AddedTokenMatcher {
 public:
  void add(const std::string& content, int index) {
    if (content.empty()) return;
    int node = 0;
    for (char c : content) {
      int next = child(node, c);
      if (next < 0) {
        next = static_cast<int>(nodes_.size());
        nodes_[node].next.emplace_back(c, next);
        nodes_.emplace_back();
      }
      node = next;
    }
    if (nodes_[node].token < 0) nodes_[node].token = index;
    if (first_.find(content[0]) == std::string::npos) first_.push_back(content[0]);
  }
  // The longest token starting at t[i]: its index, and its end in *end; -1 if none.
  int longest_at(std::string_view t, size_t i, size_t* end) const {
    int best = -1;
    for (int node = 0; i < t.size() && (node = child(node, t[i])) >= 0; ++i)
      if (nodes_[node].token >= 0) best = nodes_[node].token, *end = i + 1;
    return best;
  }
  // The next position >= i where some token could start; t.size() if none.
  size_t next_candidate(std::string_view t, size_t i) const {
    if (first_.size() == 1) {
      const void* p = i < t.size() ? std::memchr(t.data() + i, first_[0], t.size() - i) : nullptr;
      return p ? static_cast<const char*>(p) - t.data() : t.size();
    }
    const size_t at = t.find_first_of(first_, i);
    return at == std::string_view::npos ? t.size() : at;
  }
  bool empty() const { return first_.empty(); }

 private:
  struct Node {
    std::vector<std::pair<char, int>> next;
    int token = -1;
  };
  int child(int node, char c) const {
    for (const auto& [ch, n] : nodes_[node].next)
      if (ch == c) return n;
    return -1;
  }
  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::string first_;  // bytes that start some token
};

enum class IdKind : uint8_t { none, normal, added, special };

class BpeTokenizer final : public TokenizerBackend {
 public:
  Status init(const json& tok, const json* config);

  std::vector<int> encode(std::string_view text, bool add_special) const override;
  std::string decode(std::span<const int> ids, bool skip_special) const override;
  std::string token_text(int id) const override;
  int num_pieces() const override { return static_cast<int>(kind_.size()); }
  int bos_id() const override { return bos_; }
  int eos_id() const override { return eos_; }
  int pad_id() const override { return pad_; }
  bool is_special(int id) const override { return id >= 0 && id < num_pieces() && kind_[id] == IdKind::special; }
  bool clean_up_spaces() const override { return clean_up_; }
  const char* kind() const override { return "bpe"; }

 private:
  Status init_added(const json& list);
  Status init_post_processor(const json& pp, const std::string& field);
  void init_config(const json& config);
  int id_of_content(const std::string& content) const;
  bool next_added(std::string_view t, size_t from, size_t* start, size_t* end, int* id) const;
  void encode_segment(std::string_view seg, std::vector<int>& out) const;

  bpe::BpeModel model_;
  bpe::PreTokenizer pre_;
  bpe::NormalForm nf_ = bpe::NormalForm::none;
  std::vector<AddedToken> added_;
  AddedTokenMatcher matcher_;
  std::vector<IdKind> kind_;             // by id
  std::vector<std::string_view> bytes_;  // by id: raw bytes (views into model_ / added_)
  std::vector<int> prefix_, suffix_;     // added around a text when add_special
  int bos_ = -1, eos_ = -1, pad_ = -1;
  bool clean_up_ = false;
};

Status BpeTokenizer::init_added(const json& list) {
  if (!list.is_array()) return {};
  for (size_t i = 0; i < list.size(); ++i) {
    const json& a = list[i];
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string() || a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() >= (int64_t{1} << 30))
      return make_error(ErrorCode::invalid_argument,
                        "added_tokens[" + std::to_string(i) + "]: expected {id, content, ...}");
    AddedToken t;
    t.id = a["id"].get<int>();
    t.content = a["content"].get<std::string>();
    t.special = a.value("special", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.single_word = a.value("single_word", false);
    added_.push_back(std::move(t));
  }
  for (size_t i = 0; i < added_.size(); ++i) matcher_.add(added_[i].content, static_cast<int>(i));
  return {};
}

int BpeTokenizer::id_of_content(const std::string& content) const {
  for (const AddedToken& t : added_)
    if (t.content == content) return t.id;
  return content.empty() ? -1 : model_.id_of(content);
}

Status BpeTokenizer::init_post_processor(const json& pp, const std::string& field) {
  const std::string type = pp.is_object() ? pp.value("type", std::string()) : std::string();
  if (pp.is_null() || type == "ByteLevel") return {};
  if (type == "Sequence") {
    const json& list = field_or_null(pp, "processors");
    for (size_t i = 0; list.is_array() && i < list.size(); ++i)
      ZR_RETURN_IF_ERROR(init_post_processor(list[i], field + ".processors[" + std::to_string(i) + "]"));
    return {};
  }
  if (type != "TemplateProcessing")
    return make_error(ErrorCode::unsupported, field + ".type: post-processor '" + type + "' is not supported");
  const json& single = field_or_null(pp, "single");
  bool after = false;  // past $A
  for (size_t i = 0; single.is_array() && i < single.size(); ++i) {
    const json& item = single[i];
    if (item.contains("Sequence")) {
      after = true;
      continue;
    }
    const std::string name = item.contains("SpecialToken") ? item["SpecialToken"].value("id", std::string()) : "";
    std::vector<int> ids;
    const json& def = field_or_null(field_or_null(field_or_null(pp, "special_tokens"), name.c_str()), "ids");
    if (def.is_array()) {
      for (const json& v : def)
        if (v.is_number_integer()) ids.push_back(v.get<int>());
    } else if (const int id = id_of_content(name); id >= 0) {
      ids.push_back(id);
    }
    if (ids.empty())
      return make_error(ErrorCode::invalid_argument,
                        field + ".single[" + std::to_string(i) + "]: unknown special token '" + name + "'");
    (after ? suffix_ : prefix_).insert((after ? suffix_ : prefix_).end(), ids.begin(), ids.end());
  }
  return {};
}

// tokenizer_config.json: bos/eos/pad tokens, add_bos_token/add_eos_token (they override the
// post-processor's choice, as transformers' Llama fast tokenizer rebuilds its template from them),
// clean_up_tokenization_spaces (transformers applies it on decode).
void BpeTokenizer::init_config(const json& config) {
  bos_ = prefix_.empty() ? -1 : prefix_.front();
  const auto id_of_token = [&](const char* name, int fallback) {
    const std::string content = token_content(field_or_null(config, name));
    const int id = id_of_content(content);
    return id >= 0 ? id : fallback;
  };
  bos_ = id_of_token("bos_token", bos_);
  eos_ = id_of_token("eos_token", -1);
  pad_ = id_of_token("pad_token", -1);
  if (const json& v = field_or_null(config, "add_bos_token"); v.is_boolean()) {
    if (!prefix_.empty() && prefix_.front() == bos_) prefix_.erase(prefix_.begin());
    if (v.get<bool>() && bos_ >= 0) prefix_.insert(prefix_.begin(), bos_);
  }
  if (const json& v = field_or_null(config, "add_eos_token"); v.is_boolean()) {
    if (!suffix_.empty() && suffix_.back() == eos_) suffix_.pop_back();
    if (v.get<bool>() && eos_ >= 0) suffix_.push_back(eos_);
  }
  if (const json& v = field_or_null(config, "clean_up_tokenization_spaces"); v.is_boolean()) clean_up_ = v.get<bool>();
}

Status BpeTokenizer::init(const json& tok, const json* config) {
  auto model = bpe::BpeModel::from_json(field_or_null(tok, "model"));
  if (!model.ok()) return model.status();
  model_ = std::move(model).value();
  auto nf = bpe::normal_form_from_json(field_or_null(tok, "normalizer"), "normalizer");
  if (!nf.ok()) return nf.status();
  nf_ = *nf;
  auto pre = bpe::PreTokenizer::from_json(field_or_null(tok, "pre_tokenizer"));
  if (!pre.ok()) return pre.status();
  pre_ = std::move(pre).value();
  if (!pre_.byte_level())
    return make_error(ErrorCode::unsupported, "pre_tokenizer: no ByteLevel step (only byte-level BPE is supported)");
  const json& dec = field_or_null(tok, "decoder");
  if (!dec.is_null() && dec.value("type", std::string()) != "ByteLevel")
    return make_error(ErrorCode::unsupported,
                      "decoder.type: '" + dec.value("type", std::string()) + "' is not supported (ByteLevel)");
  ZR_RETURN_IF_ERROR(init_added(field_or_null(tok, "added_tokens")));
  ZR_RETURN_IF_ERROR(init_post_processor(field_or_null(tok, "post_processor"), "post_processor"));
  if (config) init_config(*config);
  else bos_ = prefix_.empty() ? -1 : prefix_.front();

  int n = model_.size();
  for (const AddedToken& t : added_) n = std::max(n, t.id + 1);
  kind_.assign(n, IdKind::none);
  bytes_.assign(n, {});
  for (int id = 0; id < model_.size(); ++id)
    if (!model_.bytes_of(id).empty()) kind_[id] = IdKind::normal, bytes_[id] = model_.bytes_of(id);
  for (const AddedToken& t : added_)
    kind_[t.id] = t.special ? IdKind::special : IdKind::added, bytes_[t.id] = t.content;
  return {};
}

// Leftmost-longest added token in t[from:], honouring single_word, lstrip and rstrip.
bool BpeTokenizer::next_added(std::string_view t, size_t from, size_t* start, size_t* end, int* id) const {
  for (size_t i = matcher_.next_candidate(t, from); i < t.size(); i = matcher_.next_candidate(t, i + 1)) {
    size_t e = i;
    const int k = matcher_.longest_at(t, i, &e);
    if (k < 0) continue;
    const AddedToken& a = added_[k];
    if (a.single_word && ((i > 0 && is_word_byte(t[i - 1])) || (e < t.size() && is_word_byte(t[e])))) continue;
    size_t s = i;
    if (a.lstrip)
      while (s > from && is_space(t[s - 1])) --s;
    if (a.rstrip)
      while (e < t.size() && is_space(t[e])) ++e;
    *start = s, *end = e, *id = a.id;
    return true;
  }
  return false;
}

void BpeTokenizer::encode_segment(std::string_view seg, std::vector<int>& out) const {
  if (seg.empty()) return;
  std::string scratch;
  const std::string_view text = bpe::normalize(seg, nf_, scratch);
  pre_.split(text, [&](std::string_view word) { model_.encode_word(word, out); });
}

std::vector<int> BpeTokenizer::encode(std::string_view text, bool add_special) const {
  std::string repaired;  // text that is not valid UTF-8 is read as from_utf8_lossy reads it
  if (!valid_utf8(text)) {
    append_lossy(text, repaired);
    text = repaired;
  }
  std::vector<int> out;
  out.reserve(text.size() / 3 + prefix_.size() + suffix_.size() + 1);
  if (add_special) out = prefix_;
  size_t last = 0, s = 0, e = 0;
  int id = -1;
  while (!matcher_.empty() && next_added(text, last, &s, &e, &id)) {
    encode_segment(text.substr(last, s - last), out);
    out.push_back(id);
    last = e;
  }
  encode_segment(text.substr(last), out);
  if (add_special) out.insert(out.end(), suffix_.begin(), suffix_.end());
  return out;
}

std::string BpeTokenizer::decode(std::span<const int> ids, bool skip_special) const {
  std::string bytes;
  for (int id : ids) {
    if (id < 0 || id >= num_pieces()) continue;
    if (skip_special && kind_[id] == IdKind::special) continue;
    bytes.append(bytes_[id]);
  }
  if (valid_utf8(bytes)) return bytes;
  std::string out;
  append_lossy(bytes, out);
  return out;
}

std::string BpeTokenizer::token_text(int id) const {
  if (id < 0 || id >= num_pieces()) return {};
  std::string out;
  append_lossy(bytes_[id], out);
  return out;
}

}  // namespace

Result<std::unique_ptr<TokenizerBackend>> load_bpe(const std::string& path) {
  const auto t0 = std::chrono::steady_clock::now();
  auto tok = read_json(path);
  if (!tok.ok()) return tok.status();
  const std::string config_path = (std::filesystem::path(path).parent_path() / "tokenizer_config.json").string();
  std::optional<json> config;
  std::error_code ec;
  if (std::filesystem::is_regular_file(config_path, ec)) {
    auto c = read_json(config_path);
    if (!c.ok()) return c.status();
    config = std::move(c).value();
  }
  auto bpe = std::make_unique<BpeTokenizer>();
  try {
    if (Status st = bpe->init(*tok, config ? &*config : nullptr); !st.ok())
      return make_error(st.code, "tokenizer: " + path + ": " + st.message);
  } catch (const json::exception& e) {  // a field of an unexpected JSON type
    return make_error(ErrorCode::invalid_argument, "tokenizer: " + path + ": " + e.what());
  }
  spdlog::info("tokenizer: {}: byte-level BPE, {} ids, bos {} eos {} pad {}{} ({:.0f} ms)", path, bpe->num_pieces(),
               bpe->bos_id(), bpe->eos_id(), bpe->pad_id(), bpe->clean_up_spaces() ? ", cleans up spaces" : "",
               std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  return std::unique_ptr<TokenizerBackend>(std::move(bpe));
}

}  // namespace zr
