// msgpack <-> json (with limits) and the request bodies. Replies are in wire_replies.cpp; the
// encoders of generate / score calls and replies in wire_pack.cpp. This file and wire_pack.cpp
// (through wire_writer.h) are the only includers of msgpack-cxx.
#include "comm/wire_codec.h"

#include <msgpack.hpp>

#include <cstring>
#include <exception>

#include "comm/json_codec.h"
#include "comm/wire_fields.h"
#include "comm/wire_sampling.h"

namespace zr::wire {

using detail::field_error;
using detail::FieldReader;

namespace {

Status bad_message(const std::string& where, const std::string& what) {
  return make_error(ErrorCode::bad_message, where + ": " + what);
}

// First pass over the bytes: checks well-formedness, depth and the value budget without building
// anything, so the second pass (msgpack::unpack) never sees a hostile shape.
class BudgetVisitor : public msgpack::null_visitor {
 public:
  explicit BudgetVisitor(const BodyLimits& limits) : limits_(limits) {}
  bool visit_nil() { return count(1); }
  bool visit_boolean(bool) { return count(1); }
  bool visit_positive_integer(uint64_t) { return count(1); }
  bool visit_negative_integer(int64_t) { return count(1); }
  bool visit_float32(float) { return count(1); }
  bool visit_float64(double) { return count(1); }
  bool visit_str(const char*, uint32_t) { return count(1); }
  bool visit_bin(const char*, uint32_t size) { return count(1 + size / 4); }
  bool visit_ext(const char*, uint32_t) { return stop("msgpack ext values are not accepted"); }
  bool start_array(uint32_t) { return count(1) && enter(); }
  bool end_array() {
    --depth_;
    return true;
  }
  bool start_map(uint32_t) { return count(1) && enter(); }
  bool end_map() {
    --depth_;
    return true;
  }
  void parse_error(size_t, size_t at) { error_ = "malformed msgpack at byte " + std::to_string(at); }
  void insufficient_bytes(size_t, size_t) { error_ = "truncated msgpack"; }
  const std::string& error() const { return error_; }

 private:
  bool count(size_t n) {
    values_ += n;
    if (values_ <= limits_.max_values) return true;
    return stop("more than " + std::to_string(limits_.max_values) + " values");
  }
  bool enter() {
    if (++depth_ <= limits_.max_depth) return true;
    return stop("nested deeper than " + std::to_string(limits_.max_depth) + " levels");
  }
  bool stop(std::string why) {
    error_ = std::move(why);
    return false;
  }
  const BodyLimits& limits_;
  size_t values_ = 0;
  int depth_ = 0;
  std::string error_;
};

// Where a value sits, rendered only when an error needs it ("batch[2].input_ids").
struct Path {
  const Path* parent = nullptr;  // nullptr: the body itself
  std::string_view key;          // map member when is_key, else array element `index`
  size_t index = 0;
  bool is_key = false;
  std::string str() const {
    if (!parent) return "body";
    std::string p = parent->parent ? parent->str() : std::string();
    if (!is_key) return p + "[" + std::to_string(index) + "]";
    return p.empty() ? std::string(key) : p + "." + std::string(key);
  }
  bool is_id_field() const { return is_key && (key == "input_ids" || key == "completion_ids"); }
};

bool valid_utf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > n) return false;
    uint32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (size_t k = 1; k < len; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

Status ids_from_bin(const msgpack::object_bin& b, const Path& path, json& out) {
  if (!path.is_id_field()) return field_error(path.str(), "bin is only accepted for input_ids and completion_ids");
  if (b.size % 4 != 0)
    return field_error(path.str(), "bin of " + std::to_string(b.size) + " bytes is not a whole number of int32");
  json::array_t ids;
  ids.reserve(b.size / 4);
  const auto* p = reinterpret_cast<const unsigned char*>(b.ptr);
  for (uint32_t i = 0; i < b.size; i += 4) {
    uint32_t u = uint32_t(p[i]) | uint32_t(p[i + 1]) << 8 | uint32_t(p[i + 2]) << 16 | uint32_t(p[i + 3]) << 24;
    ids.emplace_back(static_cast<int64_t>(static_cast<int32_t>(u)));
  }
  out = std::move(ids);
  return {};
}

Status convert(const msgpack::object& o, const Path& path, json& out);

Status convert_map(const msgpack::object_map& m, const Path& path, json& out) {
  out = json::object();
  for (uint32_t i = 0; i < m.size; ++i) {
    const msgpack::object_kv& kv = m.ptr[i];
    if (kv.key.type != msgpack::type::STR) return bad_message(path.str(), "map keys must be strings");
    std::string_view key(kv.key.via.str.ptr, kv.key.via.str.size);
    if (!valid_utf8(key)) return bad_message(path.str(), "map key is not valid UTF-8");
    Path child{&path, key.empty() ? std::string_view("\"\"") : key, 0, true};
    auto [it, inserted] = out.emplace(std::string(key), nullptr);
    if (!inserted) return bad_message(child.str(), "duplicate key");
    ZR_RETURN_IF_ERROR(convert(kv.val, child, it.value()));
  }
  return {};
}

Status convert(const msgpack::object& o, const Path& path, json& out) {
  switch (o.type) {
    case msgpack::type::NIL:
      out = nullptr;
      return {};
    case msgpack::type::BOOLEAN:
      out = o.via.boolean;
      return {};
    case msgpack::type::POSITIVE_INTEGER:
      out = static_cast<uint64_t>(o.via.u64);
      return {};
    case msgpack::type::NEGATIVE_INTEGER:
      out = static_cast<int64_t>(o.via.i64);
      return {};
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      out = o.via.f64;
      return {};
    case msgpack::type::STR: {
      std::string_view s(o.via.str.ptr, o.via.str.size);
      if (!valid_utf8(s)) return bad_message(path.str(), "string is not valid UTF-8");
      out = std::string(s);
      return {};
    }
    case msgpack::type::BIN:
      return ids_from_bin(o.via.bin, path, out);
    case msgpack::type::ARRAY: {
      json::array_t a(o.via.array.size);
      for (uint32_t i = 0; i < o.via.array.size; ++i)
        ZR_RETURN_IF_ERROR(convert(o.via.array.ptr[i], Path{&path, {}, i, false}, a[i]));
      out = std::move(a);
      return {};
    }
    case msgpack::type::MAP:
      return convert_map(o.via.map, path, out);
    default:
      return bad_message(path.str(), "msgpack ext values are not accepted");
  }
}

// Always float64 (0xcb): msgpack-cxx's pack_double writes integral values as integers, and a
// float field must stay a float on the wire (Python sees 0.0, not 0).
void pack_float64(msgpack::sbuffer& buf, double d) {
  uint64_t u = 0;
  std::memcpy(&u, &d, sizeof u);
  char b[9] = {static_cast<char>(0xcb)};
  for (int i = 0; i < 8; ++i) b[1 + i] = static_cast<char>(u >> (56 - 8 * i));
  buf.write(b, sizeof b);
}

void pack_value(msgpack::sbuffer& buf, msgpack::packer<msgpack::sbuffer>& pk, const json& v) {
  switch (v.type()) {
    case json::value_t::boolean:
      v.get<bool>() ? pk.pack_true() : pk.pack_false();
      break;
    case json::value_t::number_integer:
      pk.pack_int64(v.get<int64_t>());
      break;
    case json::value_t::number_unsigned:
      pk.pack_uint64(v.get<uint64_t>());
      break;
    case json::value_t::number_float:
      pack_float64(buf, v.get<double>());
      break;
    case json::value_t::string: {
      const auto& s = v.get_ref<const std::string&>();
      pk.pack_str(static_cast<uint32_t>(s.size())).pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
      break;
    }
    case json::value_t::binary: {
      const auto& b = v.get_binary();
      pk.pack_bin(static_cast<uint32_t>(b.size()));
      pk.pack_bin_body(reinterpret_cast<const char*>(b.data()), static_cast<uint32_t>(b.size()));
      break;
    }
    case json::value_t::array:
      pk.pack_array(static_cast<uint32_t>(v.size()));
      for (const json& e : v) pack_value(buf, pk, e);
      break;
    case json::value_t::object:
      pk.pack_map(static_cast<uint32_t>(v.size()));
      for (auto it = v.begin(); it != v.end(); ++it) {
        pk.pack_str(static_cast<uint32_t>(it.key().size()))
            .pack_str_body(it.key().data(), static_cast<uint32_t>(it.key().size()));
        pack_value(buf, pk, it.value());
      }
      break;
    default:
      pk.pack_nil();
      break;
  }
}

bool reference_all(msgpack::type::object_type, size_t, void*) { return true; }

}  // namespace

namespace {

// The bytes as one msgpack map, checked against the limits (the budget pass first), not yet
// converted: `out` references `bytes`.
Status parse_map(std::string_view bytes, const BodyLimits& limits, msgpack::object_handle& out) {
  if (bytes.size() > limits.max_bytes)
    return bad_message("body",
                       std::to_string(bytes.size()) + " bytes, over the limit of " + std::to_string(limits.max_bytes));
  if (bytes.empty()) return bad_message("body", "empty, expected a msgpack map");
  BudgetVisitor budget(limits);
  size_t off = 0;
  if (!msgpack::parse(bytes.data(), bytes.size(), off, budget))
    return bad_message("body", budget.error().empty() ? "malformed msgpack" : budget.error());
  if (off != bytes.size())
    return bad_message("body", std::to_string(bytes.size() - off) + " trailing bytes after the map");
  // The budget pass bounds every container by the byte count, so unpack allocates nothing big.
  size_t n = bytes.size();
  msgpack::unpack_limit limit(n, n, n, n, 0, size_t(limits.max_depth) + 1);
  out = msgpack::unpack(bytes.data(), bytes.size(), reference_all, nullptr, limit);
  if (out.get().type != msgpack::type::MAP) return bad_message("body", "expected a msgpack map");
  return {};
}

}  // namespace

Result<json> unpack_body(std::string_view bytes, const BodyLimits& limits) {
  try {
    msgpack::object_handle h;
    ZR_RETURN_IF_ERROR(parse_map(bytes, limits, h));
    json out;
    Path root;
    ZR_RETURN_IF_ERROR(convert(h.get(), root, out));
    return out;
  } catch (const std::exception& e) {
    return bad_message("body", std::string("undecodable msgpack (") + e.what() + ")");
  }
}

std::string pack_body(const json& body) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pack_value(buf, pk, body);
  return std::string(buf.data(), buf.size());
}

Result<uint64_t> req_id_from_json(const json& body) {
  if (!body.is_object()) return make_error(ErrorCode::bad_message, "body: expected a map");
  auto it = body.find("req_id");
  uint64_t id = 0;
  if (it != body.end() && !it->is_null()) ZR_RETURN_IF_ERROR(detail::read_value(*it, "req_id", id));
  return id;
}

uint64_t peek_req_id(std::string_view bytes) {
  auto j = unpack_body(bytes);
  if (j.ok()) {
    auto id = req_id_from_json(*j);
    return id.ok() ? *id : 0;
  }
  // Not convertible as a whole (e.g. a bad bin deeper down): the top-level req_id may still be
  // readable, and the caller waits for an error carrying it.
  try {
    msgpack::object_handle h;
    if (!parse_map(bytes, BodyLimits{}, h).ok()) return 0;
    const msgpack::object_map& m = h.get().via.map;
    for (uint32_t i = 0; i < m.size; ++i) {
      const msgpack::object_kv& kv = m.ptr[i];
      if (kv.key.type == msgpack::type::STR && std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == "req_id")
        return kv.val.type == msgpack::type::POSITIVE_INTEGER ? kv.val.via.u64 : 0;
    }
  } catch (const std::exception&) {}
  return 0;
}

// ---- requests ---------------------------------------------------------------------------------

namespace {

Status prefixed(const std::string& prefix, Status st) {
  st.message = prefix + st.message;
  return st;
}

// The single form (request fields beside req_id) or the batch form {req_id, batch}, both read by
// `parse` (comm/json_codec's strict readers).
template <class Req, class Parse>
Status read_requests(json body, Parse parse, std::vector<Req>& out) {
  auto batch = body.find("batch");
  if (batch == body.end()) {
    body.erase("req_id");
    auto r = parse(body);
    if (!r.ok()) return r.status();
    out.push_back(std::move(r).value());
    return {};
  }
  for (auto it = body.begin(); it != body.end(); ++it)
    if (it.key() != "req_id" && it.key() != "batch")
      return field_error(it.key(), "not allowed beside batch (give it in each request)");
  if (!batch->is_array()) return field_error("batch", "expected an array of requests");
  if (batch->empty()) return field_error("batch", "expected at least one request");
  out.reserve(batch->size());
  for (size_t i = 0; i < batch->size(); ++i) {
    std::string where = "batch[" + std::to_string(i) + "]";
    if (!(*batch)[i].is_object()) return field_error(where, "expected a map");
    auto r = parse((*batch)[i]);
    if (!r.ok()) return prefixed(where + ".", r.status());
    out.push_back(std::move(r).value());
  }
  return {};
}

json ids_json(const std::vector<int>& ids, const EncodeOptions& opt) {
  if (!opt.ids_as_bin) return ids;
  json::binary_t::container_type bytes(ids.size() * 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    auto u = static_cast<uint32_t>(ids[i]);
    for (int k = 0; k < 4; ++k) bytes[4 * i + k] = static_cast<uint8_t>(u >> (8 * k));
  }
  return json::binary(std::move(bytes));
}

json sampling_json(const SamplingParams& p) {
  json j = json::object();
  for_each_sampling_field(p, [&](const char* k, const auto& v) {
    if constexpr (std::is_same_v<std::decay_t<decltype(v)>, std::vector<std::pair<int, float>>>) {
      json b = json::object();
      for (auto [id, bias] : v) b[std::to_string(id)] = json_float(bias);
      j[k] = b;
    } else {
      j[k] = v;
    }
  });
  return j;
}

json processors_json(const LogitProcessors& lp) {
  json j = json::object();
  if (lp.allowed_token_ids) j["allowed_token_ids"] = *lp.allowed_token_ids;
  if (!lp.disallowed_token_ids.empty()) j["disallowed_token_ids"] = lp.disallowed_token_ids;
  if (const auto& t = lp.temperature_schedule)
    j["temperature_schedule"] = {
        {"initial", json_float(t->initial)}, {"final", json_float(t->final)}, {"warmup_tokens", t->warmup_tokens}};
  return j;
}

const char* logprob_mode_name(LogprobMode m) {
  return m == LogprobMode::raw ? "raw" : m == LogprobMode::processed ? "processed" : "default";
}

template <class Call>
json call_json(const Call& c, const EncodeOptions& opt) {
  if (c.batch.size() == 1) {
    json j = to_json(c.batch[0], opt);
    j["req_id"] = c.req_id;
    return j;
  }
  json batch = json::array();
  for (const auto& r : c.batch) batch.push_back(to_json(r, opt));
  return {{"req_id", c.req_id}, {"batch", std::move(batch)}};
}

template <class T>
Result<T> decode_with(std::string_view body, Result<T> (*from_json)(json)) {
  auto j = unpack_body(body);
  if (!j.ok()) return j.status();
  return from_json(std::move(j).value());
}

}  // namespace

Result<GenerateCall> generate_call_from_json(json body) {
  auto id = req_id_from_json(body);
  if (!id.ok()) return id.status();
  GenerateCall call;
  call.req_id = *id;
  ZR_RETURN_IF_ERROR(read_requests(std::move(body), generate_request_from_json, call.batch));
  return call;
}

Result<ScoreCall> score_call_from_json(json body) {
  auto id = req_id_from_json(body);
  if (!id.ok()) return id.status();
  ScoreCall call;
  call.req_id = *id;
  ZR_RETURN_IF_ERROR(read_requests(std::move(body), score_request_from_json, call.batch));
  return call;
}

Result<AbortCall> abort_call_from_json(const json& body) {
  AbortCall c;
  FieldReader f(body, "", true);
  f.get("req_id", c.req_id);
  f.get("rid", c.rid);
  f.get("rid_prefix", c.rid_prefix);
  f.get("all", c.all);
  ZR_RETURN_IF_ERROR(f.finish());
  if (int(!c.rid.empty()) + int(!c.rid_prefix.empty()) + int(c.all) != 1)
    return field_error("rid", "give exactly one of rid, rid_prefix or all: true");
  return c;
}

Result<SessionCall> session_call_from_json(const json& body, bool close) {
  SessionCall c;
  FieldReader f(body, "", true);
  f.get("req_id", c.req_id);
  if (close) f.get("session_id", c.session_id);  // open_session: the server picks it (unknown field)
  ZR_RETURN_IF_ERROR(f.finish());
  if (close && c.session_id.empty()) return field_error("session_id", "required");
  return c;
}

Result<uint64_t> req_id_only_from_json(const json& body) {
  uint64_t id = 0;
  FieldReader f(body, "", true);
  f.get("req_id", id);
  ZR_RETURN_IF_ERROR(f.finish());
  return id;
}

Result<TokenizeCall> tokenize_call_from_json(const json& body) {
  TokenizeCall c;
  FieldReader f(body, "", true);
  f.get("req_id", c.req_id);
  const bool has_text = f.take("text") != nullptr;
  f.get("text", c.text);
  f.get("add_special_tokens", c.add_special_tokens);
  ZR_RETURN_IF_ERROR(f.finish());
  if (!has_text) return field_error("text", "required");
  return c;
}

Result<DetokenizeCall> detokenize_call_from_json(const json& body) {
  DetokenizeCall c;
  FieldReader f(body, "", true);
  f.get("req_id", c.req_id);
  f.get("input_ids", c.input_ids);
  f.get("skip_special_tokens", c.skip_special_tokens);
  ZR_RETURN_IF_ERROR(f.finish());
  return c;
}

Result<GenerateCall> decode_generate(std::string_view body) { return decode_with(body, generate_call_from_json); }
Result<ScoreCall> decode_score(std::string_view body) { return decode_with(body, score_call_from_json); }
Result<AbortCall> decode_abort(std::string_view body) {
  return decode_with<AbortCall>(body, [](json j) { return abort_call_from_json(j); });
}
Result<SessionCall> decode_open_session(std::string_view body) {
  return decode_with<SessionCall>(body, [](json j) { return session_call_from_json(j, false); });
}
Result<SessionCall> decode_close_session(std::string_view body) {
  return decode_with<SessionCall>(body, [](json j) { return session_call_from_json(j, true); });
}
Result<uint64_t> decode_req_id_only(std::string_view body) {
  return decode_with<uint64_t>(body, [](json j) { return req_id_only_from_json(j); });
}
Result<TokenizeCall> decode_tokenize(std::string_view body) {
  return decode_with<TokenizeCall>(body, [](json j) { return tokenize_call_from_json(j); });
}
Result<DetokenizeCall> decode_detokenize(std::string_view body) {
  return decode_with<DetokenizeCall>(body, [](json j) { return detokenize_call_from_json(j); });
}

json to_json(const GenerateRequest& r, const EncodeOptions& opt) {
  json j = {{"rid", r.rid}};
  if (r.text) j["text"] = *r.text;
  if (!r.input_ids.empty() || !r.text) j["input_ids"] = ids_json(r.input_ids, opt);
  json sp = sampling_json(r.sampling_params);
  if (!sp.empty()) j["sampling_params"] = std::move(sp);
  json lp = processors_json(r.sampling_params.processors);
  if (!lp.empty()) j["logit_processors"] = std::move(lp);
  if (r.return_logprob) j["return_logprob"] = true;
  if (r.logprob_start_len != -1) j["logprob_start_len"] = r.logprob_start_len;
  if (r.top_logprobs_num != 0) j["top_logprobs_num"] = r.top_logprobs_num;
  if (!r.token_ids_logprob.empty()) j["token_ids_logprob"] = r.token_ids_logprob;
  if (r.logprob_mode != LogprobMode::default_mode) j["logprob_mode"] = logprob_mode_name(r.logprob_mode);
  if (r.stream) j["stream"] = true;
  if (!r.session_id.empty()) j["session_id"] = r.session_id;
  if (!r.detokenize) j["detokenize"] = false;
  if (r.return_text_in_logprobs) j["return_text_in_logprobs"] = true;
  return j;
}

json to_json(const ScoreRequest& r, const EncodeOptions& opt) {
  json j = {
      {"rid", r.rid}, {"input_ids", ids_json(r.input_ids, opt)}, {"completion_ids", ids_json(r.completion_ids, opt)}};
  if (r.temperature != 1.0f) j["temperature"] = json_float(r.temperature);
  if (r.top_logprobs_num != 0) j["top_logprobs_num"] = r.top_logprobs_num;
  return j;
}

json to_json(const GenerateCall& c, const EncodeOptions& opt) { return call_json(c, opt); }
json to_json(const ScoreCall& c, const EncodeOptions& opt) { return call_json(c, opt); }

json to_json(const AbortCall& c) {
  json j = {{"req_id", c.req_id}};
  if (!c.rid.empty()) j["rid"] = c.rid;
  if (!c.rid_prefix.empty()) j["rid_prefix"] = c.rid_prefix;
  if (c.all) j["all"] = true;
  return j;
}

json to_json(const SessionCall& c) {
  json j = {{"req_id", c.req_id}};
  if (!c.session_id.empty()) j["session_id"] = c.session_id;
  return j;
}

json to_json(const TokenizeCall& c) {
  return {{"req_id", c.req_id}, {"text", c.text}, {"add_special_tokens", c.add_special_tokens}};
}

json to_json(const DetokenizeCall& c, const EncodeOptions& opt) {
  return {
      {"req_id", c.req_id}, {"input_ids", ids_json(c.input_ids, opt)}, {"skip_special_tokens", c.skip_special_tokens}};
}

std::string encode(const AbortCall& c) { return pack_body(to_json(c)); }
std::string encode(const SessionCall& c) { return pack_body(to_json(c)); }
std::string encode_req_id_only(uint64_t req_id) { return pack_body(json{{"req_id", req_id}}); }
std::string encode(const TokenizeCall& c) { return pack_body(to_json(c)); }
std::string encode(const DetokenizeCall& c, const EncodeOptions& opt) { return pack_body(to_json(c, opt)); }

}  // namespace zr::wire
