// The msgpack body codec of the service ops (docs/protocol.md). A body is one msgpack map; it is
// decoded into a nlohmann::json tree and then read by the same strict parsers as the CLI's JSONL
// (comm/json_codec), so both encodings share one schema and one set of field-named errors.
//
//   bytes --unpack_body--> json --*_from_json--> struct        (decode_* do both steps)
//   struct --to_json--> json --pack_body--> bytes              (encode* do both steps)
//   struct ---------------------------------> bytes            (encode of generate / score calls,
//                                                               replies and chunks: the hot path)
// The direct encoders write the fields their to_json twins write, so both forms decode alike.
//
// Error classes: a body that is not a msgpack map of plain values (malformed, truncated, trailing
// bytes, too deep, too many values, ext types, non-string keys, duplicate keys) is bad_message;
// a well-formed body whose fields do not match the schema (wrong type, unknown field, bin where
// ids are not expected, bin length not a multiple of 4, impossible value) is invalid_argument.
// Both messages name the field ("batch[2].sampling_params.top_k: expected an integer").
//
// Requests are strict (unknown fields are errors); replies are read leniently (unknown fields are
// ignored, so a newer server can add fields without breaking older clients), types still checked.
//
// Thread-safety: every function is pure (no shared state) and may be called from any thread; the
// one exception to determinism is a generate / score request without `rid`, which decodes with a
// fresh one (comm/json_codec.h, fresh_rid).
// No function throws: exceptions from msgpack-cxx or nlohmann::json are caught inside and returned
// as a Status.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "comm/messages.h"
#include "comm/status.h"

namespace zr::wire {

using nlohmann::json;

// Bounds that keep a hostile body from exhausting the stack or memory. Every value counts one
// (a bin id array counts one per id); the decoded tree costs at most a small multiple of
// max_values * sizeof(json).
struct BodyLimits {
  size_t max_bytes = size_t{64} << 20;
  int max_depth = 32;  // nesting of maps and arrays; the schema needs about 6
  size_t max_values = size_t{8} << 20;
};

// ---- msgpack <-> json ----------------------------------------------------------------------------

// One msgpack map -> json. Accepts nil, bool, int, float32/64, str, array, map with str keys; a
// `bin` value only under the keys "input_ids" / "completion_ids", read as little-endian int32s.
Result<json> unpack_body(std::string_view bytes, const BodyLimits& limits = {});
// json -> msgpack (objects become maps, json binary values become bin). Integers use the smallest
// msgpack encoding, floats are float64.
std::string pack_body(const json& body);

// `req_id` of a decoded body: missing -> 0; present but not a uint64 -> invalid_argument.
Result<uint64_t> req_id_from_json(const json& body);
// Best effort for error replies: the req_id of a body, 0 when it cannot be read. A body that is
// well-formed msgpack but does not convert (a bin where none is allowed, a bin of 5 bytes, a
// string that is not UTF-8) still has its top-level req_id read, so its error reaches the call.
uint64_t peek_req_id(std::string_view bytes);

// ---- requests (the server decodes, the client encodes) -----------------------------------------

struct EncodeOptions {
  bool ids_as_bin = false;  // send input_ids / completion_ids as bin (little-endian int32)
};

// "generate": the fields of one GenerateRequest plus req_id, or {req_id, batch: [request...]}.
// Taken by value: the single form is read after removing req_id (move a body in to avoid a copy).
Result<GenerateCall> generate_call_from_json(json body);
// "score": the fields of one ScoreRequest plus req_id, or {req_id, batch: [request...]}.
Result<ScoreCall> score_call_from_json(json body);
// "abort": {req_id, rid | rid_prefix | all: true} (exactly one).
Result<AbortCall> abort_call_from_json(const json& body);
// "open_session": {req_id} (the server picks the id); "close_session": {req_id, session_id}.
Result<SessionCall> session_call_from_json(const json& body, bool close);
// "get_load", "health", "get_model_info", "flush_cache": {req_id}.
Result<uint64_t> req_id_only_from_json(const json& body);
// "tokenize": {req_id, text, add_special_tokens?}; "detokenize": {req_id, input_ids, skip_special_tokens?}.
Result<TokenizeCall> tokenize_call_from_json(const json& body);
Result<DetokenizeCall> detokenize_call_from_json(const json& body);

Result<GenerateCall> decode_generate(std::string_view body);
Result<ScoreCall> decode_score(std::string_view body);
Result<AbortCall> decode_abort(std::string_view body);
Result<SessionCall> decode_open_session(std::string_view body);
Result<SessionCall> decode_close_session(std::string_view body);
Result<uint64_t> decode_req_id_only(std::string_view body);
Result<TokenizeCall> decode_tokenize(std::string_view body);
Result<DetokenizeCall> decode_detokenize(std::string_view body);

json to_json(const GenerateRequest& r, const EncodeOptions& opt = {});
json to_json(const ScoreRequest& r, const EncodeOptions& opt = {});
// A call with one request uses the single form, otherwise the batch form.
json to_json(const GenerateCall& c, const EncodeOptions& opt = {});
json to_json(const ScoreCall& c, const EncodeOptions& opt = {});
json to_json(const AbortCall& c);
json to_json(const SessionCall& c);  // session_id only when non-empty
json to_json(const TokenizeCall& c);
json to_json(const DetokenizeCall& c, const EncodeOptions& opt = {});

std::string encode(const GenerateCall& c, const EncodeOptions& opt = {});
std::string encode(const ScoreCall& c, const EncodeOptions& opt = {});
std::string encode(const AbortCall& c);
std::string encode(const SessionCall& c);
std::string encode_req_id_only(uint64_t req_id);
std::string encode(const TokenizeCall& c);
std::string encode(const DetokenizeCall& c, const EncodeOptions& opt = {});

// ---- replies (the server encodes, the client decodes) ------------------------------------------

// "generate.reply" {req_id, outputs: [SampleOutput as comm/json_codec's to_json]}.
json to_json(const GenerateReply& r);
// "generate.chunk" {req_id, rid, index, text, output_ids, output_token_logprobs}.
json chunk_to_json(uint64_t req_id, const StreamChunk& c);
json to_json(const ScoreReply& r);
json to_json(const AbortReply& r);
json to_json(const LoadReply& r);
json to_json(const HealthReply& r);
json to_json(const ModelInfoReply& r);
json to_json(const ErrorReply& r);
// SimpleReply's wire form depends on the op it answers: "flush_cache" -> {req_id, freed_blocks},
// "open_session" -> {req_id, session_id}, anything else -> {req_id}.
json simple_reply_to_json(std::string_view op, const SimpleReply& r);
json to_json(const EnginesReply& r);     // "get_engines.reply" (routers)
json to_json(const TokenizeReply& r);    // {req_id, input_ids}
json to_json(const DetokenizeReply& r);  // {req_id, text}

std::string encode(const GenerateReply& r);
std::string encode_chunk(uint64_t req_id, const StreamChunk& c);
std::string encode(const ScoreReply& r);
std::string encode(const AbortReply& r);
std::string encode(const LoadReply& r);
std::string encode(const HealthReply& r);
std::string encode(const ModelInfoReply& r);
std::string encode(const ErrorReply& r);
std::string encode_simple_reply(std::string_view op, const SimpleReply& r);
std::string encode(const EnginesReply& r);
std::string encode(const TokenizeReply& r);
std::string encode(const DetokenizeReply& r);
// The body of an op "error" frame: {req_id, code: error_code_name(st.code), message}.
std::string error_body(uint64_t req_id, const Status& st);

Result<SampleOutput> sample_output_from_json(const json& j);
Result<ScoreOutput> score_output_from_json(const json& j);
Result<GenerateReply> generate_reply_from_json(const json& j);
Result<StreamChunk> stream_chunk_from_json(const json& j);  // req_id is read by the caller
Result<ScoreReply> score_reply_from_json(const json& j);
Result<AbortReply> abort_reply_from_json(const json& j);
Result<LoadReply> load_reply_from_json(const json& j);
Result<HealthReply> health_reply_from_json(const json& j);
Result<ModelInfoReply> model_info_reply_from_json(const json& j);
Result<SimpleReply> simple_reply_from_json(std::string_view op, const json& j);
Result<ErrorReply> error_reply_from_json(const json& j);
Result<EnginesReply> engines_reply_from_json(const json& j);
Result<TokenizeReply> tokenize_reply_from_json(const json& j);
Result<DetokenizeReply> detokenize_reply_from_json(const json& j);
// The Status an "error" body stands for (an unknown code reads as internal, the name kept in the
// message). A body that cannot be read is bad_message.
Status status_from_error_json(const json& j);

}  // namespace zr::wire
