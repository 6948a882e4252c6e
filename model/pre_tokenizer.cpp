#include "model/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>

namespace zr::bpe {

using nlohmann::json;

namespace {

// GPT-2's split, which ByteLevel applies itself when use_regex is true (HF tokenizers byte_level.rs).
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

Status unsupported(const std::string& field, const std::string& what) {
  return make_error(ErrorCode::unsupported, field + ": " + what);
}

std::string type_of(const json& j) {
  auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// Per-thread PCRE2 match state: shared by every pattern (the match data is sized for one pair,
// all a split needs; PCRE2 still reports the whole match when groups do not fit).
struct MatchScratch {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  MatchScratch() { pcre2_jit_stack_assign(context, nullptr, stack); }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

std::string escape_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// Index of the next UTF-8 character after position `i` of `s`.
size_t next_char(std::string_view s, size_t i) {
  ++i;
  while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
  return i;
}

}  // namespace

// ---- normalizer

Result<NormalForm> normal_form_from_json(const json& n, const std::string& field) {
  if (n.is_null()) return NormalForm::none;
  const std::string type = type_of(n);
  if (type == "NFC") return NormalForm::nfc;
  if (type == "NFD") return NormalForm::nfd;
  if (type == "NFKC") return NormalForm::nfkc;
  if (type == "NFKD") return NormalForm::nfkd;
  if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
    const json& list = n["normalizers"];
    if (list.empty()) return NormalForm::none;
    if (list.size() == 1) return normal_form_from_json(list[0], field + ".normalizers[0]");
  }
  return unsupported(field + ".type", "normalizer '" + (type.empty() ? n.dump() : type) +
                                          "' is not supported (NFC, NFD, NFKC, NFKD or none)");
}

std::string_view normalize(std::string_view text, NormalForm nf, std::string& scratch) {
  if (nf == NormalForm::none) return text;
  size_t k = 0;
  while (k < text.size() && static_cast<unsigned char>(text[k]) < 0x80) ++k;
  if (k == text.size()) return text;  // ASCII is in every normal form
  // ASCII characters are starters that nothing before them composes with: normalizing from the
  // last one before the first non-ASCII byte gives the same result as from the start.
  const size_t from = k > 0 ? k - 1 : 0;
  int options = UTF8PROC_STABLE;
  if (nf == NormalForm::nfc || nf == NormalForm::nfkc) options |= UTF8PROC_COMPOSE;
  else options |= UTF8PROC_DECOMPOSE;
  if (nf == NormalForm::nfkc || nf == NormalForm::nfkd) options |= UTF8PROC_COMPAT;
  utf8proc_uint8_t* out = nullptr;
  const auto* src = reinterpret_cast<const utf8proc_uint8_t*>(text.data() + from);
  const utf8proc_ssize_t len = utf8proc_map(src, static_cast<utf8proc_ssize_t>(text.size() - from), &out,
                                            static_cast<utf8proc_option_t>(options));
  if (len < 0) return text;  // invalid UTF-8: callers pass valid text, keep it as it is
  scratch.assign(text.substr(0, from));
  scratch.append(reinterpret_cast<const char*>(out), static_cast<size_t>(len));
  std::free(out);
  return scratch;
}

// ---- pre-tokenizer

enum class Behavior { isolated, removed, merged_with_previous, merged_with_next, contiguous };

struct PreTokenizer::Stage {
  pcre2_code* code = nullptr;
  bool jit = false;
  Behavior behavior = Behavior::isolated;
  ~Stage() { pcre2_code_free(code); }

  // Next match at or after `from`: true with [*s, *e), false when there is none.
  bool find(std::string_view text, size_t from, size_t* s, size_t* e) const {
    MatchScratch& m = scratch();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    int rc = jit ? pcre2_jit_match(code, subject, text.size(), from, 0, m.data, m.context) : PCRE2_ERROR_JIT_BADOPTION;
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_JIT_BADOPTION)
      rc = pcre2_match(code, subject, text.size(), from, PCRE2_NO_UTF_CHECK, m.data, m.context);
    if (rc < 0) {
      if (rc != PCRE2_ERROR_NOMATCH)
        spdlog::warn("tokenizer: regex match failed ({}): rest of the piece kept whole", rc);
      return false;
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.data);
    *s = ov[0];
    *e = ov[1];
    return true;
  }

  // Calls emit for each piece of `text` under this stage's behavior.
  template <class F>
  void for_each(std::string_view text, F&& emit) const {
    size_t last = 0, pos = 0, s = 0, e = 0;
    size_t run_s = 0, run_e = 0;  // contiguous: the pending run of adjacent matches
    bool run = false;
    auto piece = [&](size_t a, size_t b) {
      if (b > a) emit(text.substr(a, b - a));
    };
    while (pos <= text.size() && find(text, pos, &s, &e)) {
      if (e == s) {  // an empty match splits nothing
        pos = next_char(text, s);
        continue;
      }
      switch (behavior) {
        case Behavior::isolated:
          piece(last, s), piece(s, e), last = e;
          break;
        case Behavior::removed:
          piece(last, s), last = e;
          break;
        case Behavior::merged_with_previous:
          piece(last, e), last = e;
          break;
        case Behavior::merged_with_next:
          piece(last, s), last = s;
          break;
        case Behavior::contiguous:
          if (run && s == run_e) {
            run_e = e;
          } else {
            if (run) piece(run_s, run_e);
            piece(last, s);
            run = true, run_s = s, run_e = e;
          }
          last = e;
          break;
      }
      pos = e;
    }
    if (run) piece(run_s, run_e);
    piece(last, text.size());
  }
};

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

// Friend of PreTokenizer: builds its stages from the JSON.
struct PreTokenizerBuilder {
  using Stage = PreTokenizer::Stage;
  static Status add(PreTokenizer& p, const json& j, const std::string& field);
  static Result<std::unique_ptr<Stage>> compile(const std::string& pattern, Behavior b, const std::string& field);
};

Status PreTokenizerBuilder::add(PreTokenizer& p, const json& j, const std::string& field) {
  const std::string type = type_of(j);
  if (type == "Sequence") {
    const json& list = j.value("pretokenizers", json::array());
    for (size_t i = 0; i < list.size(); ++i)
      ZR_RETURN_IF_ERROR(add(p, list[i], field + ".pretokenizers[" + std::to_string(i) + "]"));
    return {};
  }
  if (type == "ByteLevel") {
    p.byte_level_ = true;
    if (j.value("add_prefix_space", false)) {
      if (!p.stages_.empty()) return unsupported(field + ".add_prefix_space", "true after another split step");
      p.add_prefix_space_ = true;
    }
    if (!j.value("use_regex", true)) return {};
    auto st = compile(kGpt2Pattern, Behavior::isolated, field);
    if (!st.ok()) return st.status();
    p.stages_.push_back(std::move(st).value());
    return {};
  }
  if (type == "Digits") {
    auto st = compile("[0-9]", j.value("individual_digits", false) ? Behavior::isolated : Behavior::contiguous, field);
    if (!st.ok()) return st.status();
    p.stages_.push_back(std::move(st).value());
    return {};
  }
  if (type != "Split") return unsupported(field + ".type", "pre-tokenizer '" + type + "' is not supported");
  if (j.value("invert", false)) return unsupported(field + ".invert", "true is not supported");
  static const std::pair<const char*, Behavior> kBehaviors[] = {{"Isolated", Behavior::isolated},
                                                                {"Removed", Behavior::removed},
                                                                {"MergedWithPrevious", Behavior::merged_with_previous},
                                                                {"MergedWithNext", Behavior::merged_with_next},
                                                                {"Contiguous", Behavior::contiguous}};
  const std::string name = j.value("behavior", std::string());
  const auto* b =
      std::find_if(std::begin(kBehaviors), std::end(kBehaviors), [&](const auto& kv) { return name == kv.first; });
  if (b == std::end(kBehaviors)) return unsupported(field + ".behavior", "'" + name + "' is not supported");
  const json& pat = j.value("pattern", json::object());
  std::string pattern;
  if (pat.contains("Regex") && pat["Regex"].is_string()) pattern = pat["Regex"].get<std::string>();
  else if (pat.contains("String") && pat["String"].is_string())
    pattern = escape_literal(pat["String"].get<std::string>());
  else return unsupported(field + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
  auto st = compile(pattern, b->second, field + ".pattern");
  if (!st.ok()) return st.status();
  p.stages_.push_back(std::move(st).value());
  return {};
}

Result<std::unique_ptr<PreTokenizer::Stage>> PreTokenizerBuilder::compile(const std::string& pattern, Behavior b,
                                                                          const std::string& field) {
  int err = 0;
  PCRE2_SIZE at = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                   &err, &at, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    return make_error(ErrorCode::invalid_argument, field + ": regex rejected at offset " + std::to_string(at) + ": " +
                                                       reinterpret_cast<const char*>(msg));
  }
  auto stage = std::make_unique<PreTokenizer::Stage>();
  stage->code = code;
  stage->behavior = b;
  stage->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  if (!stage->jit) spdlog::warn("tokenizer: PCRE2 JIT unavailable for {}: interpreted (slower)", field);
  return stage;
}

Result<PreTokenizer> PreTokenizer::from_json(const json& j) {
  PreTokenizer p;
  if (j.is_null()) return p;
  ZR_RETURN_IF_ERROR(PreTokenizerBuilder::add(p, j, "pre_tokenizer"));
  return p;
}

void PreTokenizer::split_from(size_t stage, std::string_view piece, const Emit& emit) const {
  if (stage == stages_.size()) {
    if (!piece.empty()) emit(piece);
    return;
  }
  stages_[stage]->for_each(piece, [&](std::string_view sub) { split_from(stage + 1, sub, emit); });
}

void PreTokenizer::split(std::string_view text, const Emit& emit) const {
  if (text.empty()) return;
  if (add_prefix_space_ && text[0] != ' ') {
    std::string prefixed = " " + std::string(text);
    split_from(0, prefixed, emit);
    return;
  }
  split_from(0, text, emit);
}

}  // namespace zr::bpe
