// Wire codec: every body round-trips, every class of bad input gets the right code with the field
// named, and a fuzz pass over random and mutated bodies never crashes or throws.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>

#include "comm/call_limits.h"
#include "comm/json_codec.h"
#include "comm/wire_codec.h"
#include "comm/wire_weights.h"

namespace zr {
namespace {

using nlohmann::json;
using namespace zr::wire;

GenerateRequest full_request(const std::string& rid) {
  GenerateRequest r;
  r.rid = rid;
  r.input_ids = {1, 2, 300000, -5, 7};
  SamplingParams& p = r.sampling_params;
  p.max_new_tokens = 9;
  p.min_new_tokens = 2;
  p.temperature = 0.7f;
  p.top_p = 0.9f;
  p.top_k = 40;
  p.min_p = 0.05f;
  p.repetition_penalty = 1.1f;
  p.frequency_penalty = 0.3f;
  p.presence_penalty = -0.2f;
  p.stop = {"\n\n", "END"};
  p.stop_token_ids = {2, 3};
  p.ignore_eos = true;
  p.skip_special_tokens = false;
  p.no_stop_trim = true;
  p.n = 4;
  p.seed = 123456789012345ull;
  p.logit_bias = {{7, -1.5f}, {12, 2.25f}};
  p.processors.allowed_token_ids = std::vector<int>{1, 2, 3};
  p.processors.disallowed_token_ids = {4, 5};
  p.processors.temperature_schedule = TemperatureSchedule{1.0f, 0.5f, 3};
  r.return_logprob = true;
  r.logprob_start_len = 0;
  r.top_logprobs_num = 2;
  r.token_ids_logprob = {5, 6};
  r.logprob_mode = LogprobMode::processed;
  r.stream = true;
  r.session_id = "s1";
  r.detokenize = false;
  r.return_text_in_logprobs = true;
  return r;
}

SampleOutput full_output(const std::string& rid, int index) {
  SampleOutput o;
  o.rid = rid;
  o.index = index;
  o.text = "héllo";
  o.output_ids = {5, 6};
  o.return_logprob = o.has_input_logprobs = o.has_top = o.has_ids = true;
  MetaInfo& m = o.meta_info;
  m.id = rid + "-" + std::to_string(index);
  m.finish_reason.type = FinishReason::Type::stop;
  m.finish_reason.matched = std::string("END");
  m.prompt_tokens = 3;
  m.completion_tokens = 2;
  m.cached_tokens = 1;
  m.output_token_logprobs = {{-0.5f, 5, "a"}, {-0.25f, 6, std::nullopt}};
  m.input_token_logprobs = {{std::nullopt, 1, std::nullopt}, {-1.0f, 9, std::nullopt}};
  m.output_top_logprobs = {{{-0.5f, 5, std::nullopt}, {-1.5f, 8, std::nullopt}}, {}};
  m.input_top_logprobs = {{}, {{-0.125f, 9, std::nullopt}}};
  m.output_token_ids_logprobs = {{{-3.0f, 5, std::nullopt}}, {{-4.0f, 5, std::nullopt}}};
  m.input_token_ids_logprobs = {{}, {{-2.0f, 5, std::nullopt}}};
  m.weight_version = 7;
  m.weight_version_spans = {{0, 6}, {1, 7}};
  m.e2e_latency = 0.125;
  return o;
}

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) s.push_back(static_cast<char>(c));
  return s;
}

// Checks code and that the message names `field`.
void expect_error(const Status& st, ErrorCode code, const std::string& field, const std::string& what) {
  EXPECT_EQ(st.code, code) << what << " -> " << st.to_string();
  EXPECT_NE(st.message.find(field), std::string::npos) << what << " -> " << st.to_string();
}
template <class T>
Status status_of(const Result<T>& r) {
  return r.ok() ? Status{} : r.status();
}

TEST(WireCodec, PlainValuesRoundTripAndIntegersStaySmall) {
  json j = {{"a", 1},
            {"b", -2},
            {"c", 1.5},
            {"d", "x"},
            {"e", nullptr},
            {"f", true},
            {"g", json::array({1, json::array({2}), json::object({{"h", false}})})},
            {"big", std::numeric_limits<uint64_t>::max()},
            {"neg", std::numeric_limits<int64_t>::min()}};
  auto back = unpack_body(pack_body(j));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(*back, j);
  // Floats stay float64 even when integral (msgpack-cxx's pack_double would write an integer).
  EXPECT_EQ(pack_body(json{{"t", 0.0}}), bytes({0x81, 0xa1, 't', 0xcb, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(pack_body(json{{"t", -1.5}}), bytes({0x81, 0xa1, 't', 0xcb, 0xbf, 0xf8, 0, 0, 0, 0, 0, 0}));
  EXPECT_TRUE(unpack_body(pack_body(json{{"t", 2.0}}))->at("t").is_number_float());
  EXPECT_EQ(pack_body(json{{"a", 1}}).size(), 4u);  // fixmap, fixstr "a", positive fixint
  EXPECT_EQ(pack_body(json{{"req_id", 5}}), bytes({0x81, 0xa6, 'r', 'e', 'q', '_', 'i', 'd', 0x05}));
}

TEST(WireCodec, GenerateCallRoundTripsInEveryForm) {
  GenerateRequest a = full_request("a");
  GenerateRequest b;
  b.rid = "b";
  b.text = "hello";
  for (bool bin : {false, true}) {
    for (const auto& batch : {std::vector<GenerateRequest>{a}, std::vector<GenerateRequest>{a, b}}) {
      GenerateCall call{42, batch};
      auto back = decode_generate(encode(call, EncodeOptions{bin}));
      ASSERT_TRUE(back.ok()) << back.status().to_string();
      EXPECT_EQ(back->req_id, 42u);
      ASSERT_EQ(back->batch.size(), batch.size());
      EXPECT_EQ(to_json(*back), to_json(call));
      EXPECT_EQ(back->batch[0].input_ids, a.input_ids);
      EXPECT_EQ(back->batch[0].sampling_params.temperature, 0.7f);
      EXPECT_EQ(*back->batch[0].sampling_params.seed, 123456789012345ull);
      EXPECT_EQ(back->batch[0].sampling_params.logit_bias.size(), 2u);
      EXPECT_EQ(back->batch[0].logprob_mode, LogprobMode::processed);
      EXPECT_EQ(*back->batch[0].sampling_params.processors.allowed_token_ids, (std::vector<int>{1, 2, 3}));
      EXPECT_EQ(back->batch[0].sampling_params.processors.temperature_schedule->warmup_tokens, 3);
      EXPECT_FALSE(back->batch[0].detokenize);
      EXPECT_TRUE(back->batch[0].sampling_params.no_stop_trim);
      EXPECT_TRUE(back->batch[0].return_text_in_logprobs);
      if (batch.size() > 1) {
        EXPECT_TRUE(back->batch[1].detokenize);
        EXPECT_FALSE(back->batch[1].return_text_in_logprobs);
      }
    }
  }
  EXPECT_TRUE(to_json(GenerateCall{1, {a}}).contains("rid"));  // one request: the single form
  EXPECT_TRUE(to_json(GenerateCall{1, {a, b}}).contains("batch"));
  // A body from another language: req_id missing reads as 0, defaults fill in.
  auto minimal = decode_generate(pack_body(json{{"text", "hi"}}));
  ASSERT_TRUE(minimal.ok()) << minimal.status().to_string();
  EXPECT_EQ(minimal->req_id, 0u);
  EXPECT_EQ(minimal->batch[0].sampling_params.max_new_tokens, 128);
  // max_new_tokens nil is SGLang's None (as many as the context allows), not the default 128; other
  // nil fields keep their defaults.
  auto none = decode_generate(
      pack_body(json{{"text", "hi"}, {"sampling_params", {{"max_new_tokens", nullptr}, {"top_p", nullptr}}}}));
  ASSERT_TRUE(none.ok()) << none.status().to_string();
  EXPECT_EQ(none->batch[0].sampling_params.max_new_tokens, kMaxNewTokensUnset);
  EXPECT_EQ(none->batch[0].sampling_params.top_p, 1.0f);
  EXPECT_EQ(generation_budget(10, 512), 500);  // SGLang: min(512 - 1, pool - 1) - 10 - 1
  EXPECT_EQ(generation_budget(10, 512, /*kv_positions=*/100), 88);
}

// The hot-path encoders (wire_pack.cpp) write msgpack straight from the structs; their bytes
// decode to exactly the json that the to_json form packs to, field for field, in every shape:
// full and default requests, ids as bin, one request or a batch, replies with every logprob list,
// each finish reason, non-finite logprobs, chunks, score calls and replies.
TEST(WireCodec, DirectEncodersMatchTheJsonForm) {
  auto same = [](const std::string& direct, const json& expected, const std::string& what) {
    auto back = unpack_body(direct);
    ASSERT_TRUE(back.ok()) << what << ": " << back.status().to_string();
    EXPECT_EQ(*back, unpack_body(pack_body(expected)).value()) << what;
  };
  GenerateRequest text_only;
  text_only.rid = "t";
  text_only.text = "hi";
  GenerateRequest empty_ids;  // neither text nor ids: input_ids [] is still written
  GenerateRequest bias = full_request("dup");
  bias.sampling_params.logit_bias = {{7, -1.5f}, {7, 3.0f}, {-1, 0.5f}};  // one key per id, the last wins
  bias.sampling_params.processors = {};
  bias.sampling_params.processors.allowed_token_ids = std::vector<int>{};  // an empty mask is still sent
  for (bool bin : {false, true}) {
    EncodeOptions opt{bin};
    for (const auto& batch : {std::vector<GenerateRequest>{full_request("a")},
                              {text_only},
                              {empty_ids},
                              {bias},
                              {full_request("a"), text_only, empty_ids}}) {
      GenerateCall call{(uint64_t{1} << 40) + batch.size(), batch};
      same(encode(call, opt), to_json(call, opt), "generate call of " + std::to_string(batch.size()));
    }
    ScoreCall sc{3, {ScoreRequest{"s", {1, 2}, {3}, 0.5f, 2}}};
    same(encode(sc, opt), to_json(sc, opt), "score call");
    sc.batch.push_back(ScoreRequest{"u", {}, {}, 1.0f, 0});
    same(encode(sc, opt), to_json(sc, opt), "score call of 2");
  }
  SampleOutput length = full_output("b", 0), abort = full_output("c", 0), token_stop = full_output("d", 0);
  length.meta_info.finish_reason = FinishReason{FinishReason::Type::length, {}, 17, {}};
  length.has_input_logprobs = length.has_ids = false;
  abort.meta_info.finish_reason = FinishReason{FinishReason::Type::abort, {}, 0, "stopped"};
  abort.has_top = false;
  token_stop.meta_info.finish_reason.matched = 2;
  token_stop.meta_info.output_token_logprobs[0].logprob = -std::numeric_limits<float>::infinity();
  GenerateReply reply{9, {full_output("a", 0), full_output("a", 1), length, abort, token_stop, SampleOutput{}}};
  same(encode(reply), to_json(reply), "generate reply");
  same(encode(GenerateReply{1, {}}), to_json(GenerateReply{1, {}}), "empty generate reply");
  StreamChunk c{"a", 1, "lo", {6, 7}, {{-0.5f, 6, "l"}, {std::nullopt, 7, std::nullopt}}};
  same(encode_chunk(11, c), chunk_to_json(11, c), "chunk");
  ScoreOutput so{"s", {-0.5f, -std::numeric_limits<float>::infinity()}, {{{4, -0.5f}, {9, -2.0f}}, {}}, 3};
  same(encode(ScoreReply{5, {so, ScoreOutput{}}}), to_json(ScoreReply{5, {so, ScoreOutput{}}}), "score reply");
}

// Maps of 16 members or more get a map16 header (begin_map reserved map32 room); the members
// survive the move over the unused header bytes.
TEST(WireCodec, DirectEncoderWritesTheSmallestMapHeader) {
  const std::string body = encode(GenerateCall{1, {full_request("a")}});
  EXPECT_EQ(static_cast<unsigned char>(body[0]), 0x8e);  // fixmap: 13 request fields and req_id
  // sampling_params (fixstr of 15) holds 17 members: map16, then its first key
  EXPECT_NE(body.find(std::string("\xaf"
                                  "sampling_params"
                                  "\xde\x00\x11",
                                  19)),
            std::string::npos);
  EXPECT_EQ(unpack_body(body)->at("sampling_params").size(), 17u);
  const std::string small = encode(GenerateCall{1, {GenerateRequest{}}});
  EXPECT_EQ(static_cast<unsigned char>(small[0]), 0x83);  // fixmap: req_id, rid, input_ids
}

TEST(WireCodec, ScoreAbortSessionAndReqIdBodiesRoundTrip) {
  ScoreRequest s{"s", {1, 2, 3}, {4, 5}, 0.5f, 3};
  for (bool bin : {false, true}) {
    ScoreCall call{9, {s, ScoreRequest{"t", {1}, {2}}}};
    auto back = decode_score(encode(call, EncodeOptions{bin}));
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    EXPECT_EQ(to_json(*back), to_json(call));
    EXPECT_EQ(back->batch[0].completion_ids, (std::vector<int>{4, 5}));
    auto single = decode_score(encode(ScoreCall{10, {s}}, EncodeOptions{bin}));
    ASSERT_TRUE(single.ok()) << single.status().to_string();
    EXPECT_EQ(single->batch[0].temperature, 0.5f);
  }
  for (const AbortCall& c :
       {AbortCall{1, "r", "", false}, AbortCall{2, "", "grp-", false}, AbortCall{3, "", "", true}}) {
    auto back = decode_abort(encode(c));
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    EXPECT_EQ(back->req_id, c.req_id);
    EXPECT_EQ(back->rid, c.rid);
    EXPECT_EQ(back->rid_prefix, c.rid_prefix);
    EXPECT_EQ(back->all, c.all);
  }
  auto open = decode_open_session(encode(SessionCall{4, ""}));
  ASSERT_TRUE(open.ok());
  EXPECT_EQ(open->req_id, 4u);
  auto close = decode_close_session(encode(SessionCall{5, "sess"}));
  ASSERT_TRUE(close.ok());
  EXPECT_EQ(close->session_id, "sess");
  auto id = decode_req_id_only(encode_req_id_only(std::numeric_limits<uint64_t>::max()));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(*id, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(peek_req_id(encode_req_id_only(77)), 77u);
  EXPECT_EQ(peek_req_id("garbage"), 0u);
}

// A body that is well-formed msgpack but does not convert still names its call: the error reply
// must reach the caller, which otherwise waits for its deadline.
TEST(WireCodec, ReqIdIsPeekedFromBodiesThatDoNotConvert) {
  json bad_bin = {{"req_id", 31}, {"input_ids", json::binary({1, 0, 0, 0, 2})}};
  EXPECT_FALSE(decode_generate(pack_body(bad_bin)).ok());
  EXPECT_EQ(peek_req_id(pack_body(bad_bin)), 31u);
  json bin_elsewhere = {{"req_id", 32}, {"batch", {{{"input_ids", {1}}, {"rid", json::binary({1, 2, 3, 4})}}}}};
  auto st = decode_generate(pack_body(bin_elsewhere));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().message.rfind("batch[0].rid:", 0), 0u) << st.status().message;
  EXPECT_EQ(peek_req_id(pack_body(bin_elsewhere)), 32u);
  std::string not_utf8 = pack_body(json{{"req_id", 33}, {"text", "ab"}});
  not_utf8[not_utf8.size() - 1] = static_cast<char>(0xff);
  EXPECT_FALSE(decode_generate(not_utf8).ok());
  EXPECT_EQ(peek_req_id(not_utf8), 33u);
  EXPECT_EQ(peek_req_id(pack_body(json{{"req_id", "x"}, {"input_ids", json::binary({1})}})), 0u);
}

// SGLang's semantics: a request without rid gets one from the server, and input_ids win over text.
TEST(WireCodec, RidIsAssignedAndInputIdsTakePrecedence) {
  auto call = decode_generate(pack_body(json{{"batch", {{{"input_ids", {1}}}, {{"input_ids", {2}}, {"rid", ""}}}}}));
  ASSERT_TRUE(call.ok()) << call.status().to_string();
  EXPECT_EQ(call->batch[0].rid.size(), 32u);
  EXPECT_EQ(call->batch[1].rid.size(), 32u);
  EXPECT_NE(call->batch[0].rid, call->batch[1].rid);
  auto score = decode_score(pack_body(json{{"input_ids", {1}}, {"completion_ids", {2}}}));
  ASSERT_TRUE(score.ok()) << score.status().to_string();
  EXPECT_FALSE(score->batch[0].rid.empty());
  auto both = decode_generate(pack_body(json{{"rid", "r"}, {"text", "hello"}, {"input_ids", {1, 5}}}));
  ASSERT_TRUE(both.ok()) << both.status().to_string();
  EXPECT_FALSE(both->batch[0].text.has_value());
  EXPECT_EQ(both->batch[0].input_ids, (std::vector<int>{1, 5}));
  auto text = decode_generate(pack_body(json{{"rid", "t"}, {"text", "hello"}, {"input_ids", json::array()}}));
  ASSERT_TRUE(text.ok()) << text.status().to_string();
  EXPECT_EQ(*text->batch[0].text, "hello");  // empty input_ids: the text is the prompt
}

json body_of(const std::string& b) {
  auto j = unpack_body(b);
  EXPECT_TRUE(j.ok()) << j.status().to_string();
  return j.ok() ? *j : json();
}

TEST(WireCodec, GenerateReplyAndChunkRoundTrip) {
  GenerateReply r{11, {full_output("a", 0), full_output("a", 1), SampleOutput{}}};
  r.outputs[1].meta_info.finish_reason = FinishReason{FinishReason::Type::length, {}, 2, ""};
  r.outputs[2].rid = "b";
  r.outputs[2].meta_info.finish_reason = FinishReason{FinishReason::Type::abort, {}, 0, "aborted by rid"};
  auto back = generate_reply_from_json(body_of(encode(r)));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->req_id, 11u);
  ASSERT_EQ(back->outputs.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(to_json(back->outputs[i]), to_json(r.outputs[i])) << i;
  EXPECT_TRUE(back->outputs[0].has_top && back->outputs[0].has_ids && back->outputs[0].has_input_logprobs);
  EXPECT_FALSE(back->outputs[2].return_logprob);
  EXPECT_EQ(std::get<std::string>(back->outputs[0].meta_info.finish_reason.matched), "END");
  EXPECT_EQ(back->outputs[2].meta_info.finish_reason.message, "aborted by rid");

  StreamChunk c{"a", 1, "lo", {6, 7}, {{-0.5f, 6, "l"}, {std::nullopt, 7, std::nullopt}}};
  json cj = body_of(encode_chunk(11, c));
  EXPECT_EQ(cj["req_id"], 11);
  auto cb = stream_chunk_from_json(cj);
  ASSERT_TRUE(cb.ok()) << cb.status().to_string();
  EXPECT_EQ(chunk_to_json(11, *cb), chunk_to_json(11, c));
}

TEST(WireCodec, OtherRepliesRoundTrip) {
  ScoreOutput so{"s", {-0.5f, -std::numeric_limits<float>::infinity()}, {{{4, -0.5f}, {9, -2.0f}}, {}}, 3};
  auto score = score_reply_from_json(body_of(encode(ScoreReply{1, {so}})));
  ASSERT_TRUE(score.ok()) << score.status().to_string();
  EXPECT_EQ(to_json(score->outputs[0]), to_json(so));
  EXPECT_TRUE(std::isinf(score->outputs[0].logprobs[1]));

  auto ab = abort_reply_from_json(body_of(encode(AbortReply{2, {"x", "y"}})));
  ASSERT_TRUE(ab.ok());
  EXPECT_EQ(ab->aborted, (std::vector<std::string>{"x", "y"}));
  LoadReply load{3, 4, 5, 6, 7, 8.5};
  auto lb = load_reply_from_json(body_of(encode(load)));
  ASSERT_TRUE(lb.ok());
  EXPECT_EQ(to_json(*lb), to_json(load));
  HealthReply h{4, "serving", 12};
  auto hb = health_reply_from_json(body_of(encode(h)));
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(to_json(*hb), to_json(h));
  ModelInfoReply mi{5, "LlamaForCausalLM", 32000, 2048, 1, {2, 32000}, 0, 3, "/m"};
  auto mb = model_info_reply_from_json(body_of(encode(mi)));
  ASSERT_TRUE(mb.ok());
  EXPECT_EQ(to_json(*mb), to_json(mi));

  SimpleReply flushed{6, "", 99};
  EXPECT_EQ(body_of(encode_simple_reply("flush_cache", flushed)), (json{{"req_id", 6}, {"freed_blocks", 99}}));
  EXPECT_EQ(simple_reply_from_json("flush_cache", body_of(encode_simple_reply("flush_cache", flushed)))->value, 99);
  SimpleReply opened{7, "sess-1", 0};
  EXPECT_EQ(simple_reply_from_json("open_session", body_of(encode_simple_reply("open_session", opened)))->session_id,
            "sess-1");
  EXPECT_EQ(body_of(encode_simple_reply("close_session", SimpleReply{8, "", 0})), (json{{"req_id", 8}}));

  json err = body_of(error_body(9, make_error(ErrorCode::too_long, "input_ids: 5000 tokens over the context of 2048")));
  EXPECT_EQ(
      err, (json{{"req_id", 9}, {"code", "too_long"}, {"message", "input_ids: 5000 tokens over the context of 2048"}}));
  Status st = status_from_error_json(err);
  EXPECT_EQ(st.code, ErrorCode::too_long);
  EXPECT_EQ(status_from_error_json(json{{"req_id", 1}, {"code", "brand_new"}, {"message", "m"}}).code,
            ErrorCode::internal);
  EXPECT_EQ(status_from_error_json(json{{"code", 5}}).code, ErrorCode::bad_message);
  // Replies are lenient: a newer server's extra field does not break an older client.
  EXPECT_TRUE(health_reply_from_json(json{{"req_id", 1}, {"status", "serving"}, {"new_field", 1}}).ok());
  expect_error(status_of(health_reply_from_json(json{{"req_id", 1}, {"status", 3}})), ErrorCode::invalid_argument,
               "status", "health status of wrong type");
}

// A msgpack map with one key whose value is `value_bytes` (already packed).
std::string map_with(const std::string& key, const std::string& value_bytes) {
  std::string b = bytes({0x81, 0xa0 | int(key.size())}) + key;
  return b + value_bytes;
}

TEST(WireCodec, TokenizeOpsRoundTripAndNameTheirFields) {
  auto t = decode_tokenize(encode(TokenizeCall{3, "héllo <|im_start|>", false}));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->req_id, 3u);
  EXPECT_EQ(t->text, "héllo <|im_start|>");
  EXPECT_FALSE(t->add_special_tokens);
  auto defaults = decode_tokenize(pack_body(json{{"req_id", 4}, {"text", ""}}));
  ASSERT_TRUE(defaults.ok());
  EXPECT_TRUE(defaults->add_special_tokens);
  for (bool bin : {false, true}) {
    auto d = decode_detokenize(encode(DetokenizeCall{5, {1, 2, 151643}, false}, EncodeOptions{bin}));
    ASSERT_TRUE(d.ok()) << d.status().to_string();
    EXPECT_EQ(d->input_ids, (std::vector<int>{1, 2, 151643}));
    EXPECT_FALSE(d->skip_special_tokens);
  }
  auto tr = tokenize_reply_from_json(body_of(encode(TokenizeReply{6, {9, 8}})));
  ASSERT_TRUE(tr.ok());
  EXPECT_EQ(tr->input_ids, (std::vector<int>{9, 8}));
  auto dr = detokenize_reply_from_json(body_of(encode(DetokenizeReply{7, "text"})));
  ASSERT_TRUE(dr.ok());
  EXPECT_EQ(dr->text, "text");
  const auto message = [](const auto& r) { return r.ok() ? std::string("ok") : r.status().message; };
  EXPECT_EQ(message(decode_tokenize(pack_body(json{{"req_id", 1}}))).rfind("text:", 0), 0u);
  EXPECT_EQ(message(decode_tokenize(pack_body(json{{"req_id", 1}, {"text", 5}}))).rfind("text:", 0), 0u);
  EXPECT_EQ(message(decode_tokenize(pack_body(json{{"text", "a"}, {"ids", 1}}))).rfind("ids:", 0), 0u);
  EXPECT_EQ(message(decode_detokenize(pack_body(json{{"input_ids", {1, "x"}}}))).rfind("input_ids[1]:", 0), 0u);
  EXPECT_EQ(message(decode_detokenize(pack_body(json{{"input_ids", {1}}, {"skip_special_tokens", 1}})))
                .rfind("skip_special_tokens:", 0),
            0u);
}

TEST(WireCodec, BadBodiesAreBadMessage) {
  std::string valid = encode(GenerateCall{3, {full_request("a")}});
  struct Case {
    std::string body;
    std::string field;
    std::string what;
  };
  std::string deep = "\x91";  // nested one-element arrays
  for (int i = 0; i < 100; ++i) deep += "\x91";
  deep += "\x01";
  std::vector<Case> cases = {
      {"", "body", "empty"},
      {bytes({0xc1}), "body", "never-used byte"},
      {valid.substr(0, valid.size() / 2), "body", "truncated"},
      {valid + "\x01", "body", "trailing bytes"},
      {pack_body(json::array({1, 2})), "body", "array, not a map"},
      {bytes({0x05}), "body", "integer, not a map"},
      {map_with("input_ids", deep), "body", "too deep"},
      {bytes({0x81, 0x01, 0x02}), "body", "integer key"},
      {bytes({0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02}), "a", "duplicate key"},
      {map_with("text", bytes({0xd4, 0x01, 0x02})), "body", "ext value"},
      {map_with("text", bytes({0xa2, 0xc3, 0x28})), "text", "invalid UTF-8"},
      {bytes({0xdd, 0xff, 0xff, 0xff, 0xff}), "body", "array32 claiming 4G elements"},
      {bytes({0x81, 0xa1, 'a', 0xdb, 0x7f, 0xff, 0xff, 0xff}), "body", "str32 claiming 2 GB"},
      {bytes({0xdf, 0xff, 0xff, 0xff, 0xff}), "body", "map32 claiming 4G pairs"},
  };
  for (const auto& c : cases) {
    expect_error(status_of(decode_generate(c.body)), ErrorCode::bad_message, c.field, c.what);
    expect_error(status_of(decode_req_id_only(c.body)), ErrorCode::bad_message, c.field, c.what);
  }
  BodyLimits small;
  small.max_bytes = 16;
  expect_error(status_of(unpack_body(valid, small)), ErrorCode::bad_message, "limit", "over max_bytes");
  small = BodyLimits{};
  small.max_values = 5;
  expect_error(status_of(unpack_body(pack_body(json{{"input_ids", {1, 2, 3, 4, 5, 6}}}), small)),
               ErrorCode::bad_message, "values", "over max_values");
}

TEST(WireCodec, SchemaErrorsNameTheField) {
  std::string bin7 = bytes({0xc4, 7, 1, 0, 0, 0, 2, 0, 0});
  struct Case {
    std::string body;
    std::function<Status(const std::string&)> decode;
    std::string field;
  };
  auto gen = [](const std::string& b) { return status_of(decode_generate(b)); };
  auto score = [](const std::string& b) { return status_of(decode_score(b)); };
  auto abort = [](const std::string& b) { return status_of(decode_abort(b)); };
  auto open = [](const std::string& b) { return status_of(decode_open_session(b)); };
  auto close = [](const std::string& b) { return status_of(decode_close_session(b)); };
  auto only = [](const std::string& b) { return status_of(decode_req_id_only(b)); };
  json r = {{"rid", "a"}, {"input_ids", {1}}};
  auto with = [&](json extra) {
    json j = r;
    j.update(extra);
    return pack_body(j);
  };
  std::vector<Case> cases = {
      {with({{"sampling_params", {{"top_k", "x"}}}}), gen, "sampling_params.top_k"},
      {with({{"sampling_params", {{"temprature", 1}}}}), gen, "sampling_params.temprature"},
      {with({{"bogus", 1}}), gen, "bogus"},
      {with({{"req_id", "7"}}), gen, "req_id"},
      {with({{"req_id", -1}}), gen, "req_id"},
      {with({{"req_id", 1.5}}), gen, "req_id"},
      {with({{"return_logprob", 1}}), gen, "return_logprob"},
      {pack_body(json{{"batch", json::array({r, {{"rid", "b"}, {"input_ids", {1}}, {"bogus", 2}}})}}), gen,
       "batch[1].bogus"},
      {pack_body(json{{"batch", json::array({r, 5})}}), gen, "batch[1]"},
      {pack_body(json{{"batch", json::array({{{"rid", "b"}, {"input_ids", {1, "x"}}}})}}), gen,
       "batch[0].input_ids[1]"},
      {pack_body(json{{"batch", json::array()}}), gen, "batch"},
      {pack_body(json{{"batch", r}}), gen, "batch"},
      {pack_body(json{{"batch", json::array({r})}, {"rid", "x"}}), gen, "rid"},
      {map_with("input_ids", bin7), gen, "input_ids"},
      {pack_body(json{{"batch", json::array({json{{"rid", "a"}, {"input_ids", json::binary({1, 2, 3})}}})}}), gen,
       "batch[0].input_ids"},
      {map_with("rid", bytes({0xc4, 4, 1, 0, 0, 0})), gen, "rid"},
      {pack_body(json{{"input_ids", {1}}, {"completion_ids", json::binary({1, 0, 0})}}), score, "completion_ids"},
      {pack_body(json{{"input_ids", {1}}, {"completion_ids", {2}}, {"temperature", "hot"}}), score, "temperature"},
      {pack_body(json{{"req_id", 1}}), abort, "rid"},
      {pack_body(json{{"rid", "a"}, {"all", true}}), abort, "rid"},
      {pack_body(json{{"all", 1}}), abort, "all"},
      {pack_body(json{{"req_id", 1}}), close, "session_id"},
      {pack_body(json{{"req_id", 1}, {"session_id", 5}}), close, "session_id"},
      {pack_body(json{{"req_id", 1}, {"verbose", true}}), only, "verbose"},
      {pack_body(json{{"req_id", 1}, {"session_id", "mine"}}), open, "session_id"},
  };
  for (const auto& c : cases) expect_error(c.decode(c.body), ErrorCode::invalid_argument, c.field, "case " + c.field);
}

// ---- fuzz ---------------------------------------------------------------------------------------

std::vector<std::string> seed_bodies() {
  GenerateRequest b;
  b.rid = "b";
  b.text = "hi";
  std::vector<std::string> s = {
      encode(GenerateCall{1, {full_request("a")}}),
      encode(GenerateCall{2, {full_request("a"), b}}, EncodeOptions{true}),
      encode(ScoreCall{3, {ScoreRequest{"s", {1, 2}, {3}, 0.5f, 2}}}),
      encode(ScoreCall{4, {ScoreRequest{"s", {1, 2}, {3}}, ScoreRequest{"t", {1}, {2}}}}, EncodeOptions{true}),
      encode(AbortCall{5, "r", "", false}),
      encode(SessionCall{6, "sess"}),
      encode_req_id_only(7),
      encode(GenerateReply{8, {full_output("a", 0), full_output("a", 1)}}),
      encode_chunk(9, StreamChunk{"a", 0, "x", {1}, {{-0.5f, 1, "x"}}}),
      encode(ScoreReply{10, {ScoreOutput{"s", {-0.5f}, {{{1, -0.5f}}}, 1}}}),
      encode(ModelInfoReply{11, "Llama", 10, 20, 1, {2}, 0, 1, "/m"}),
      error_body(12, make_error(ErrorCode::not_found, "rid: x")),
  };
  return s;
}

std::string mutate(const std::vector<std::string>& seeds, std::mt19937& rng) {
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  std::string s = seeds[pick(seeds.size())];
  switch (pick(7)) {
    case 0:  // bit flips
      for (size_t k = 1 + pick(8); k-- && !s.empty();) s[pick(s.size())] ^= char(1 << pick(8));
      break;
    case 1:
      s.resize(pick(s.size() + 1));
      break;   // truncation
    case 2: {  // splice: a prefix of one body and a suffix of another
      const std::string& t = seeds[pick(seeds.size())];
      s = s.substr(0, pick(s.size() + 1)) + t.substr(pick(t.size() + 1));
      break;
    }
    case 3: {  // random bytes
      s.resize(pick(64));
      for (char& c : s) c = char(pick(256));
      break;
    }
    case 4:  // insert or delete a few bytes
      for (size_t k = 1 + pick(4); k--;) {
        size_t at = pick(s.size() + 1);
        if (pick(2) && at < s.size()) s.erase(at, 1);
        else s.insert(at, 1, char(pick(256)));
      }
      break;
    case 5: {  // overwrite a byte with a length-carrying or odd marker
      static const unsigned char kMarks[] = {0xdc, 0xdd, 0xde, 0xdf, 0xda, 0xdb, 0xc4,
                                             0xc5, 0xc6, 0xd4, 0xc7, 0xc1, 0xff, 0x00};
      if (!s.empty()) s[pick(s.size())] = char(kMarks[pick(sizeof kMarks)]);
      break;
    }
    default: {  // deep nesting in a field
      std::string v(1 + pick(80), char(0x91));
      s = map_with("input_ids", v + "\x01");
      break;
    }
  }
  return s;
}

// Runs every decoder on `b`; returns how many accepted it. Any decoder that throws fails the test.
int decode_all(const std::string& b) {
  int ok = 0;
  auto check = [&](const Status& st) {
    if (st.ok()) ++ok;
    else EXPECT_FALSE(st.message.empty());
  };
  check(status_of(decode_generate(b)));
  check(status_of(decode_score(b)));
  check(status_of(decode_abort(b)));
  check(status_of(decode_open_session(b)));
  check(status_of(decode_close_session(b)));
  check(status_of(decode_req_id_only(b)));
  (void)peek_req_id(b);
  if (auto j = unpack_body(b); j.ok()) {
    check(status_of(generate_reply_from_json(*j)));
    check(status_of(stream_chunk_from_json(*j)));
    check(status_of(score_reply_from_json(*j)));
    check(status_of(abort_reply_from_json(*j)));
    check(status_of(load_reply_from_json(*j)));
    check(status_of(health_reply_from_json(*j)));
    check(status_of(model_info_reply_from_json(*j)));
    check(status_of(simple_reply_from_json("flush_cache", *j)));
    check(status_of(error_reply_from_json(*j)));
    (void)status_from_error_json(*j);
  }
  // Whatever decodes re-encodes to a body that decodes to the same thing.
  if (auto g = decode_generate(b); g.ok()) {
    auto again = decode_generate(encode(*g));
    EXPECT_TRUE(again.ok() && to_json(*again).dump() == to_json(*g).dump());
  }
  return ok;
}

TEST(WireCodec, FuzzDecodersNeverCrashOrThrow) {
  std::vector<std::string> seeds = seed_bodies();
  for (const auto& s : seeds) EXPECT_GT(decode_all(s), 0);
  std::mt19937 rng(20240611);
  int accepted = 0, rejected = 0;
  for (int i = 0; i < 10000; ++i) {
    std::string b = mutate(seeds, rng);
    int ok = 0;
    EXPECT_NO_THROW(ok = decode_all(b)) << i;
    (ok ? accepted : rejected)++;
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_GT(accepted, 100);  // the mutations reach past the first checks
  EXPECT_GT(rejected, 1000);
}

}  // namespace
}  // namespace zr
