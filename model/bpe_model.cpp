#include "model/bpe_model.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <mutex>

namespace zr::bpe {

using nlohmann::json;

namespace {

constexpr int kNumPrintable = 188;                  // bytes that stand for themselves in GPT-2's alphabet
constexpr size_t kMaxCachedWord = 256;              // longer pre-tokens are merged every time (as HF)
constexpr size_t kCacheCapacity = size_t{1} << 17;  // words; once full, nothing more is cached

bool printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

// Code point -> byte of GPT-2's bytes_to_unicode(): printable bytes map to themselves, the other
// 68 to U+0100.. in byte order. -1 for characters outside the alphabet.
struct ByteAlphabet {
  int byte_of[256 + 256 - kNumPrintable];
  ByteAlphabet() {
    std::fill(std::begin(byte_of), std::end(byte_of), -1);
    int n = 0;
    for (int b = 0; b < 256; ++b) byte_of[printable(b) ? b : 256 + n++] = b;
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// Next code point of valid UTF-8 `s` at `*i` (advanced); -1 on a malformed sequence.
int32_t next_code_point(std::string_view s, size_t* i) {
  const auto c = static_cast<unsigned char>(s[*i]);
  const int n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || *i + n > s.size()) return -1;
  int32_t cp = n == 1 ? c : c & (0x7F >> n);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[*i + k]) & 0x3F);
  *i += n;
  return cp;
}

Status invalid(const std::string& field, const std::string& what) {
  return make_error(ErrorCode::invalid_argument, field + ": " + what);
}

}  // namespace

bool byte_level_to_bytes(std::string_view s, std::string& out) {
  const size_t start = out.size();
  const ByteAlphabet& a = alphabet();
  for (size_t i = 0; i < s.size();) {
    const int32_t cp = next_code_point(s, &i);
    const int b = cp >= 0 && cp < static_cast<int32_t>(std::size(a.byte_of)) ? a.byte_of[cp] : -1;
    if (b < 0) {
      out.resize(start);
      return false;
    }
    out.push_back(static_cast<char>(b));
  }
  return true;
}

// (left id, right id) -> (rank, merged id), open addressing with linear probing: the merge loop's
// only lookup, so it is kept flat.
struct BpeModel::MergeTable {
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    int32_t id = 0;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  std::vector<Slot> slots;
  uint64_t mask = 0;

  explicit MergeTable(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots.resize(cap);
    mask = cap - 1;
  }
  static uint64_t key(int a, int b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }
  static uint64_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDull;
    k ^= k >> 33;
    return k;
  }
  void insert(int a, int b, int32_t rank, int32_t id) {
    const uint64_t k = key(a, b);
    for (uint64_t i = hash(k) & mask;; i = (i + 1) & mask) {
      if (slots[i].key == k) return;  // a repeated merge keeps its first (lowest) rank
      if (slots[i].key == kEmpty) {
        slots[i] = {k, rank, id};
        return;
      }
    }
  }
  const Slot* find(int a, int b) const {
    const uint64_t k = key(a, b);
    for (uint64_t i = hash(k) & mask;; i = (i + 1) & mask) {
      if (slots[i].key == k) return &slots[i];
      if (slots[i].key == kEmpty) return nullptr;
    }
  }
};

// Merge results of recent pre-tokens. A pre-token's ids depend only on its bytes.
struct BpeModel::Cache {
  std::mutex mu;
  std::unordered_map<std::string, std::vector<int>, StringHash, std::equal_to<>> ids;
};

BpeModel::BpeModel() : merges_(std::make_unique<MergeTable>(0)), cache_(std::make_unique<Cache>()) {
  std::fill(std::begin(byte_id_), std::end(byte_id_), -1);
}
BpeModel::~BpeModel() = default;
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;

namespace {

// "a b" or ["a", "b"] -> the two byte-level strings.
bool merge_pair(const json& m, std::string& a, std::string& b) {
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
    a = m[0].get<std::string>();
    b = m[1].get<std::string>();
    return true;
  }
  if (!m.is_string()) return false;
  const std::string& s = m.get_ref<const std::string&>();
  const size_t sp = s.find(' ');
  if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) return false;
  a = s.substr(0, sp);
  b = s.substr(sp + 1);
  return true;
}

Status check_options(const json& model) {
  if (model.value("type", std::string("BPE")) != "BPE")
    return make_error(ErrorCode::unsupported, "model.type: '" + model.value("type", std::string()) +
                                                  "' is not supported (byte-level BPE only)");
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0)
    return make_error(ErrorCode::unsupported, "model.dropout: BPE dropout is not supported");
  for (const char* f : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(f) && model[f].is_string() && !model[f].get<std::string>().empty())
      return make_error(ErrorCode::unsupported,
                        std::string("model.") + f + ": not supported (byte-level BPE has none)");
  if (model.value("byte_fallback", false))
    return make_error(ErrorCode::unsupported, "model.byte_fallback: not supported (a sentencepiece-style BPE)");
  return {};
}

}  // namespace

Result<BpeModel> BpeModel::from_json(const json& model) {
  ZR_RETURN_IF_ERROR(check_options(model));
  const auto vit = model.find("vocab");
  if (vit == model.end() || !vit->is_object()) return invalid("model.vocab", "expected a map from token to id");
  BpeModel m;
  m.ignore_merges_ = model.value("ignore_merges", false);
  std::string bytes;
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() >= (int64_t{1} << 30))
      return invalid("model.vocab[\"" + it.key() + "\"]", "expected an id in [0, 2^30)");
    const int id = it->get<int>();
    bytes.clear();
    if (!byte_level_to_bytes(it.key(), bytes)) bytes = it.key();
    if (id >= m.size()) m.bytes_.resize(id + 1);
    m.bytes_[id] = bytes;
    m.id_of_.emplace(bytes, id);
    if (bytes.size() == 1) m.byte_id_[static_cast<unsigned char>(bytes[0])] = id;
  }
  static const json kNoMerges = json::array();
  const auto mit = model.find("merges");
  const json& merges = mit != model.end() && mit->is_array() ? *mit : kNoMerges;
  m.merges_ = std::make_unique<MergeTable>(merges.size());
  const auto to_bytes = [](const std::string& s) {
    std::string b;
    if (!byte_level_to_bytes(s, b)) b = s;
    return b;
  };
  std::string a, b;
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto field = [r] { return "model.merges[" + std::to_string(r) + "]"; };
    if (!merge_pair(merges[r], a, b)) return invalid(field(), "expected \"a b\" or [a, b]");
    const std::string ab = to_bytes(a), bb = to_bytes(b);
    const int ia = m.id_of(ab), ib = m.id_of(bb), iab = m.id_of(ab + bb);
    if (ia < 0 || ib < 0 || iab < 0) return invalid(field(), "merge of tokens not in the vocabulary");
    m.merges_->insert(ia, ib, static_cast<int32_t>(r), iab);
  }
  m.num_merges_ = merges.size();
  return m;
}

int BpeModel::id_of(std::string_view bytes) const {
  auto it = id_of_.find(bytes);
  return it == id_of_.end() ? -1 : it->second;
}

const std::string& BpeModel::bytes_of(int id) const {
  static const std::string kNone;
  return id >= 0 && id < size() ? bytes_[id] : kNone;
}

void BpeModel::encode_word(std::string_view word, std::vector<int>& out) const {
  if (word.size() == 1) {
    if (const int id = byte_id_[static_cast<unsigned char>(word[0])]; id >= 0) out.push_back(id);
    return;
  }
  if (ignore_merges_)
    if (auto it = id_of_.find(word); it != id_of_.end()) return out.push_back(it->second);
  const bool cacheable = word.size() < kMaxCachedWord;
  if (cacheable) {
    std::lock_guard lock(cache_->mu);
    if (auto it = cache_->ids.find(word); it != cache_->ids.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t at = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard lock(cache_->mu);
    if (cache_->ids.size() < kCacheCapacity) cache_->ids.emplace(word, std::vector<int>(out.begin() + at, out.end()));
  }
}

// HF's Word::merge_all: a heap of candidate merges ordered by (rank, position); a popped candidate
// is stale when its left symbol was merged away or its pair no longer yields the same token.
void BpeModel::merge_word(std::string_view word, std::vector<int>& out) const {
  struct Symbol {
    int id, prev, next, len;
  };
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Symbol> syms;
  thread_local std::vector<Candidate> heap;
  syms.clear();
  heap.clear();
  for (char c : word) {
    const int id = byte_id_[static_cast<unsigned char>(c)];
    if (id < 0) continue;
    const int k = static_cast<int>(syms.size());
    syms.push_back({id, k - 1, k + 1, 1});
  }
  if (syms.empty()) return;
  syms.back().next = -1;
  const auto push = [&](int pos, int left, int right) {
    if (const MergeTable::Slot* m = merges_->find(left, right)) {
      heap.push_back({m->rank, pos, m->id});
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  };
  for (int k = 0; k + 1 < static_cast<int>(syms.size()); ++k) push(k, syms[k].id, syms[k + 1].id);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const Candidate c = heap.back();
    heap.pop_back();
    Symbol& s = syms[c.pos];
    if (s.len == 0 || s.next < 0) continue;
    Symbol& r = syms[s.next];
    const MergeTable::Slot* m = merges_->find(s.id, r.id);
    if (!m || m->id != c.id) continue;
    s.id = c.id;
    s.len += r.len;
    s.next = r.next;
    r.len = 0;
    if (s.next >= 0) syms[s.next].prev = c.pos;
    if (s.prev >= 0) push(s.prev, syms[s.prev].id, s.id);
    if (s.next >= 0) push(c.pos, s.id, syms[s.next].id);
  }
  for (int k = 0; k >= 0; k = syms[k].next) out.push_back(syms[k].id);
}

}  // namespace zr::bpe
