// JSON codec: strict parsing with field-named errors, and float output that reads back exactly.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "comm/json_codec.h"

namespace zr {
namespace {

using nlohmann::json;

Status parse_error(const std::string& text) {
  auto r = generate_request_from_json(json::parse(text));
  return r.ok() ? Status{} : r.status();
}

TEST(JsonCodec, ParsesAFullRequest) {
  auto r = generate_request_from_json(json::parse(R"({"rid":"a","input_ids":[1,2,3],
    "sampling_params":{"max_new_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":5,"min_p":0.1,"stop":"x",
      "stop_token_ids":[4],"n":3,"seed":9,"logit_bias":{"7":-1.5},"ignore_eos":true},
    "return_logprob":true,"logprob_start_len":0,"top_logprobs_num":2,"token_ids_logprob":[5],
    "logprob_mode":"processed","logit_processors":{"temperature_schedule":{"initial":1,"final":0.5,"warmup_tokens":3}},
    "custom_logit_processor":["rl_action_mask:1,2,3","disallowed_tokens:4,5"]})"));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->sampling_params.max_new_tokens, 7);
  EXPECT_EQ(r->sampling_params.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(*r->sampling_params.seed, 9u);
  EXPECT_EQ(r->sampling_params.logit_bias.at(0).first, 7);
  EXPECT_EQ(r->logprob_mode, LogprobMode::processed);
  EXPECT_EQ(*r->sampling_params.processors.allowed_token_ids, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(r->sampling_params.processors.disallowed_token_ids, (std::vector<int>{4, 5}));
  EXPECT_EQ(r->sampling_params.processors.temperature_schedule->warmup_tokens, 3);
}

TEST(JsonCodec, ErrorsNameTheField) {
  struct Case {
    const char* text;
    const char* field;
  };
  for (auto c :
       {Case{R"({"rid":"a","input_ids":"x"})", "input_ids"}, Case{R"({"rid":"a","input_ids":[1,"b"]})", "input_ids[1]"},
        Case{R"({"rid":"a","input_ids":[1],"sampling_params":{"top_k":1.5}})", "sampling_params.top_k"},
        Case{R"({"rid":"a","input_ids":[1],"sampling_params":{"temprature":1}})", "sampling_params.temprature"},
        Case{R"({"rid":"a","input_ids":[1],"sampling_params":{"stop":[1]}})", "sampling_params.stop[0]"},
        Case{R"({"rid":"a","input_ids":[1],"sampling_params":{"logit_bias":{"x":1}}})", "logit_bias"},
        Case{R"({"rid":"a","input_ids":[1],"sampling_params":{"seed":-1}})", "sampling_params.seed"},
        Case{R"({"rid":"a","input_ids":[1],"logprob_mode":"weird"})", "logprob_mode"},
        Case{R"({"rid":"a","input_ids":[1],"extra":1})", "extra"}, Case{R"({"rid":7,"input_ids":[1]})", "rid"},
        Case{R"({"rid":"a","input_ids":[1],"custom_logit_processor":"foo:1"})", "custom_logit_processor"},
        Case{R"({"rid":"a","input_ids":[1],"custom_logit_processor":"rl_action_mask:1,x"})", "custom_logit_processor"},
        Case{R"({"rid":"a","input_ids":[1],"sampling_params":{"max_new_tokens":99999999999}})", "max_new_tokens"},
        Case{R"({"rid":"a"})", "input_ids"}}) {
    Status st = parse_error(c.text);
    EXPECT_FALSE(st.ok()) << c.text;
    EXPECT_NE(st.message.find(c.field), std::string::npos) << c.text << " -> " << st.message;
  }
  EXPECT_FALSE(generate_request_from_json(json::array()).ok());
  EXPECT_FALSE(
      score_request_from_json(json::parse(R"({"rid":"a","input_ids":[1],"completion_ids":[2],"temperature":"hot"})"))
          .ok());
}

TEST(JsonCodec, FloatsReadBackAsTheSameFloat32) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<uint32_t> bits;
  int tested = 0;
  while (tested < 100000) {
    uint32_t u = bits(rng);
    float f;
    std::memcpy(&f, &u, 4);
    if (!std::isfinite(f)) continue;
    ++tested;
    std::string text = json(json_float(f)).dump();
    float back = static_cast<float>(json::parse(text).get<double>());
    ASSERT_EQ(std::memcmp(&f, &back, 4), 0) << text;
    ASSERT_LE(text.size(), 24u) << text;
  }
}

TEST(JsonCodec, SampleOutputCarriesSglangFields) {
  SampleOutput o;
  o.rid = "r";
  o.output_ids = {5, 6};
  o.return_logprob = true;
  o.has_input_logprobs = true;
  o.meta_info.finish_reason.type = FinishReason::Type::stop;
  o.meta_info.finish_reason.matched = 2;
  o.meta_info.output_token_logprobs = {{-0.5f, 5, std::nullopt}, {-0.25f, 6, std::nullopt}};
  o.meta_info.input_token_logprobs = {{std::nullopt, 1, std::nullopt}, {-1.0f, 9, std::nullopt}};
  o.meta_info.weight_version_spans = {{0, 3}};
  json j = to_json(o);
  EXPECT_EQ(j["meta_info"]["finish_reason"], json::parse(R"({"type":"stop","matched":2})"));
  EXPECT_EQ(j["meta_info"]["output_token_logprobs"][1], json::parse("[-0.25, 6, null]"));
  EXPECT_TRUE(j["meta_info"]["input_token_logprobs"][0][0].is_null());
  EXPECT_EQ(j["meta_info"]["weight_version_spans"], json::parse("[[0, 3]]"));
}

}  // namespace
}  // namespace zr
