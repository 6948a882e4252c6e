// The router's pure core stepped by hand with fake engines and fake time: balancing, updating
// engines, prefix-aware picks, a dead engine's requests re-routed with their partial output, stop
// strings across the seam, sessions, all-or-nothing batches, abort order. (The router with real
// engines over inproc: test_router_service.cpp.)
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "actors/rollout_actor.h"
#include "actors/router/router.h"
#include "actors/router_actor.h"
#include "actors/trainer.h"
#include "comm/client.h"
#include "comm/wire_codec.h"
#include "comm/wire_weights.h"
#include "model/make_model.h"
#include "model/tokenizer.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::expect_identical;

// ================================================================================================
// The core, with fake engines
// ================================================================================================

class RouterCore : public ::testing::Test {
 protected:
  void make(int engines) {
    RouterOptions opt;
    opt.heartbeat_interval = 100ms;
    opt.heartbeat_liveness = 3;
    std::vector<std::string> eps;
    for (int k = 0; k < engines; ++k) eps.push_back("inproc://fake-" + std::to_string(k));
    router_ = std::make_unique<Router>(eps, opt, now_);
    for (int k = 0; k < engines; ++k) beat(k);
  }
  void drain() {
    for (auto& m : router_->take_outbox()) (m.engine >= 0 ? sent_ : got_).push_back(std::move(m));
  }
  void from_engine(int k, const std::string& op, std::string body) {
    router_->on_engine_message(k, op, std::move(body), now_);
    drain();
  }
  // Answers every heartbeat sent to engine k: serving, idle, the tiny model's info (EOS 2).
  void beat(int k) {
    drain();
    std::vector<RouterMessage> rest, beats;
    for (auto& m : sent_)
      (m.engine == k && (m.op == "health" || m.op == "get_load" || m.op == "get_model_info") ? beats : rest)
          .push_back(m);
    sent_ = rest;
    for (const auto& m : beats) {
      const uint64_t id = wire::peek_req_id(m.body);
      if (m.op == "health") from_engine(k, "health.reply", wire::encode(HealthReply{id, "serving", 3}));
      else if (m.op == "get_load") from_engine(k, "get_load.reply", wire::encode(LoadReply{id, 0, 0, 0, 0, 0}));
      else
        from_engine(k, "get_model_info.reply",
                    wire::encode(ModelInfoReply{id, "LlamaForCausalLM", 1024, 1024, 1, {2}, -1, 3, ""}));
    }
  }
  // Time passes in half intervals; the engines in `alive` answer their heartbeats.
  void pass(Millis d, const std::vector<int>& alive) {
    for (Millis t{0}; t < d; t += 50ms) {
      now_ += 50ms;
      for (int k : alive) beat(k);
      router_->tick(now_);
      drain();
    }
  }
  void call(const std::string& op, std::string body) {
    router_->on_call("caller", op, std::move(body), now_);
    drain();
  }
  // Takes the messages with `op` sent to engine k.
  std::vector<RouterMessage> take(int k, const std::string& op) {
    drain();
    std::vector<RouterMessage> out, rest;
    for (auto& m : sent_) (m.engine == k && m.op == op ? out : rest).push_back(std::move(m));
    sent_ = rest;
    return out;
  }
  std::vector<GenerateCall> generates(int k) {
    std::vector<GenerateCall> out;
    for (const auto& m : take(k, "generate")) out.push_back(wire::decode_generate(m.body).value());
    return out;
  }
  // The replies to the caller, by op.
  std::vector<json> replies(const std::string& op) {
    std::vector<json> out, all;
    std::vector<RouterMessage> rest;
    for (auto& m : got_) {
      if (m.op == op) out.push_back(wire::unpack_body(m.body).value());
      else rest.push_back(std::move(m));
    }
    got_ = rest;
    return out;
  }
  static GenerateRequest req(const std::string& rid, std::vector<int> ids, int max_new, int n = 1) {
    GenerateRequest r;
    r.rid = rid;
    r.input_ids = std::move(ids);
    r.sampling_params.max_new_tokens = max_new;
    r.sampling_params.n = n;
    return r;
  }
  static SampleOutput output(const std::string& rid, int index, std::vector<int> ids, int prompt_tokens) {
    SampleOutput o;
    o.rid = rid;
    o.index = index;
    o.output_ids = std::move(ids);
    o.text = "<" + std::to_string(o.output_ids.size()) + ">";
    o.meta_info.id = rid;
    o.meta_info.finish_reason = FinishReason{FinishReason::Type::length, {}, static_cast<int>(o.output_ids.size()), {}};
    o.meta_info.prompt_tokens = prompt_tokens;
    o.meta_info.completion_tokens = static_cast<int>(o.output_ids.size());
    o.meta_info.weight_version = 3;
    o.meta_info.weight_version_spans = {{0, 3}};
    return o;
  }

  TimePoint now_ = SteadyClock::now();
  std::unique_ptr<Router> router_;
  std::vector<RouterMessage> sent_, got_;
};

TEST_F(RouterCore, PicksTheLeastLoadedEngineAndAvoidsUpdatingOnes) {
  make(2);
  auto engine_of = [&](const std::string& rid, int n) {
    call("generate", wire::encode(GenerateCall{1, {req(rid, {1, 5}, 4, n)}}));
    for (int k = 0; k < 2; ++k)
      for (const auto& g : generates(k))
        if (g.batch.at(0).rid == rid) return k;
    return -1;
  };
  EXPECT_EQ(engine_of("r1", 1), 0);  // tie: lower index
  EXPECT_EQ(engine_of("r2", 1), 1);
  EXPECT_EQ(engine_of("r3", 4), 0);  // 1 sample each: lower index; engine 0 now has 5
  EXPECT_EQ(engine_of("r4", 1), 1);
  router_->mark_updating(1, true);
  EXPECT_EQ(engine_of("r5", 1), 0);  // 6 samples against 2, but engine 1 is updating
  router_->mark_updating(0, true);
  EXPECT_EQ(engine_of("r6", 1), 1);  // every engine updating: the least loaded anyway
  auto st = router_->engines();
  EXPECT_TRUE(st[0].updating && st[1].updating);
  EXPECT_EQ(st[0].in_flight, 3);
  EXPECT_EQ(st[0].in_flight_samples, 6);
  EXPECT_EQ(st[1].in_flight_samples, 3);
  // An update sent through the router marks its engine until the engine answers.
  router_->mark_updating(0, false);
  router_->mark_updating(1, false);
  UpdateWeightsCall u;
  u.req_id = 77;
  u.version = 4;
  u.path = WeightPath::disk;
  u.disk_path = "/nowhere";
  router_->call_engine(1, "caller", "update_weights", wire::encode(u), now_);
  auto sent = take(1, "update_weights");
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_TRUE(router_->engines()[1].updating);
  EXPECT_EQ(engine_of("r7", 1), 0);
  from_engine(1, "update_weights.reply",
              wire::encode(UpdateWeightsReply{wire::peek_req_id(sent[0].body), 4, 10, 0, 0, 0, {}}));
  EXPECT_FALSE(router_->engines()[1].updating);
  auto acks = replies("update_weights.reply");
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0]["req_id"], 77);  // the caller's req_id, not the router's
}

TEST_F(RouterCore, PrefersTheEngineThatHoldsThePromptsPrefixWhileLoadAllows) {
  make(2);
  auto engine_of = [&](const std::string& rid, std::vector<int> ids) {
    call("generate", wire::encode(GenerateCall{1, {req(rid, std::move(ids), 4)}}));
    for (int k = 0; k < 2; ++k)
      for (const auto& g : generates(k))
        if (g.batch.at(0).rid == rid) return k;
    return -1;
  };
  std::vector<int> a(40), b(40);
  for (int i = 0; i < 40; ++i) a[i] = 10 + i, b[i] = 500 + i;
  std::vector<int> a_longer = a;
  a_longer.insert(a_longer.end(), {7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22});
  EXPECT_EQ(engine_of("a1", a), 0);  // tie: lower index
  EXPECT_EQ(engine_of("b1", b), 1);  // least loaded
  EXPECT_EQ(engine_of("a2", a), 0);
  EXPECT_EQ(engine_of("a3", a), 0) << "engine 0 holds the prefix: it wins over the less loaded engine 1";
  EXPECT_EQ(engine_of("a4", a_longer), 0) << "a longer prompt sharing the prefix follows it";
  std::vector<int> a_diverged = a;
  a_diverged[3] = 1;  // shares less than half of its chunks
  EXPECT_EQ(engine_of("c1", a_diverged), 1);
  // A batch of copies of one new prompt goes to one engine.
  std::vector<GenerateRequest> batch;
  std::vector<int> d(48, 3);
  for (int i = 0; i < 8; ++i) batch.push_back(req("d" + std::to_string(i), d, 4));
  call("generate", wire::encode(GenerateCall{2, batch}));
  auto on0 = generates(0), on1 = generates(1);
  size_t n0 = 0, n1 = 0;
  for (const auto& g : on0) n0 += g.batch.size();
  for (const auto& g : on1) n1 += g.batch.size();
  EXPECT_TRUE((n0 == 8 && n1 == 0) || (n0 == 0 && n1 == 8)) << n0 << " / " << n1;
  // Past kPrefixBalance samples more than the least loaded engine, the prefix no longer wins.
  const int holder = n0 == 8 ? 0 : 1;
  int moved = -1;
  for (int i = 0; i < 2 * kPrefixBalance && moved < 0; ++i)
    if (engine_of("e" + std::to_string(i), d) != holder) moved = i;
  EXPECT_GE(moved, 0) << "load balance must win eventually";
}

TEST_F(RouterCore, ADeadEnginesSamplesContinueElsewhereWithTheirPartialOutput) {
  make(2);
  GenerateRequest a = req("a", {1, 10, 11}, 10, 2);
  a.sampling_params.temperature = 0.7f;
  a.sampling_params.seed = 7;
  a.return_logprob = true;
  a.top_logprobs_num = 2;
  call("generate", wire::encode(GenerateCall{1, {a}}));
  auto g = generates(0);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_TRUE(g[0].batch[0].stream);  // the router follows every token
  auto chunk = [&](int index, std::vector<int> ids, std::vector<float> lps, const std::string& text) {
    StreamChunk c{"a", index, text, ids, {}};
    for (size_t i = 0; i < ids.size(); ++i) c.output_token_logprobs.push_back({lps[i], ids[i], {}});
    from_engine(0, "generate.chunk", wire::encode_chunk(g[0].req_id, c));
  };
  chunk(0, {5, 6}, {-0.5f, -0.6f}, "ab");
  chunk(1, {8}, {-0.8f}, "d");
  chunk(0, {7}, {-0.7f}, "c");
  pass(250ms, {0, 1});
  EXPECT_TRUE(router_->engines()[0].alive);
  pass(600ms, {1});  // engine 0 is silent for more than 3 intervals
  auto st = router_->engines();
  EXPECT_FALSE(st[0].alive);
  EXPECT_TRUE(st[1].alive);
  EXPECT_EQ(st[0].rerouted, 1);
  EXPECT_EQ(take(0, "abort").size(), 1u);  // in case it only seemed dead
  auto conts = generates(1);
  ASSERT_EQ(conts.size(), 2u);
  std::sort(conts.begin(), conts.end(),
            [](auto& x, auto& y) { return x.batch[0].input_ids.size() > y.batch[0].input_ids.size(); });
  const GenerateRequest& c0 = conts[0].batch.at(0);
  const GenerateRequest& c1 = conts[1].batch.at(0);
  EXPECT_EQ(c0.input_ids, (std::vector<int>{1, 10, 11, 5, 6, 7}));
  EXPECT_EQ(c1.input_ids, (std::vector<int>{1, 10, 11, 8}));
  EXPECT_EQ(c0.sampling_params.n, 1);
  EXPECT_EQ(c0.sampling_params.max_new_tokens, 7);
  EXPECT_EQ(c1.sampling_params.max_new_tokens, 9);
  EXPECT_EQ(*c0.sampling_params.seed, 7u);  // the engine's seed of sample i: seed + i
  EXPECT_EQ(*c1.sampling_params.seed, 8u);
  EXPECT_EQ(c0.logprob_start_len, 3);  // the partial tokens' top lists come back as prompt lists
  EXPECT_NE(c0.rid, "a");
  EXPECT_NE(c0.rid, c1.rid);
  EXPECT_TRUE(replies("generate.reply").empty());
  // Engine 1 finishes both continuations.
  auto finish = [&](const GenerateCall& call, int index_in_prompt, std::vector<int> ids) {
    const GenerateRequest& r = call.batch[0];
    SampleOutput o = output(r.rid, 0, ids, static_cast<int>(r.input_ids.size()));
    o.return_logprob = o.has_top = o.has_input_logprobs = true;
    for (int id : ids) {
      o.meta_info.output_token_logprobs.push_back({-1.0f, id, {}});
      o.meta_info.output_top_logprobs.push_back({{-1.0f, id, {}}, {-2.0f, 99, {}}});
    }
    for (size_t p = 3; p < r.input_ids.size(); ++p) {
      o.meta_info.input_token_logprobs.push_back({-0.25f, r.input_ids[p], {}});
      o.meta_info.input_top_logprobs.push_back({{-0.25f, r.input_ids[p], {}}, {-3.0f, 98 + index_in_prompt, {}}});
    }
    from_engine(1, "generate.reply", wire::encode(GenerateReply{call.req_id, {o}}));
  };
  finish(conts[0], 0, {20, 21, 22, 23, 24, 25, 26});
  EXPECT_TRUE(replies("generate.reply").empty());  // sample 1 still runs
  finish(conts[1], 1, {30, 31, 32, 33, 34, 35, 36, 37, 38});
  auto done = replies("generate.reply");
  ASSERT_EQ(done.size(), 1u);
  auto rep = wire::generate_reply_from_json(done[0]).value();
  EXPECT_EQ(rep.req_id, 1u);
  ASSERT_EQ(rep.outputs.size(), 2u);
  const SampleOutput& s0 = rep.outputs[0];
  EXPECT_EQ(s0.rid, "a");
  EXPECT_EQ(s0.index, 0);
  EXPECT_EQ(s0.output_ids, (std::vector<int>{5, 6, 7, 20, 21, 22, 23, 24, 25, 26}));
  EXPECT_EQ(s0.text, "abc<7>");  // no tokenizer here: the streamed text, then the continuation's
  EXPECT_EQ(s0.meta_info.prompt_tokens, 3);
  EXPECT_EQ(s0.meta_info.completion_tokens, 10);
  EXPECT_EQ(s0.meta_info.finish_reason.type, FinishReason::Type::length);
  EXPECT_EQ(s0.meta_info.finish_reason.length, 10);
  ASSERT_EQ(s0.meta_info.output_token_logprobs.size(), 10u);
  EXPECT_EQ(*s0.meta_info.output_token_logprobs[1].logprob, -0.6f);  // from the dead engine's chunks
  EXPECT_EQ(*s0.meta_info.output_token_logprobs[3].logprob, -1.0f);
  ASSERT_EQ(s0.meta_info.output_top_logprobs.size(), 10u);
  EXPECT_EQ(s0.meta_info.output_top_logprobs[2].at(0).token_id, 7);  // the continuation's prompt list
  EXPECT_EQ(s0.meta_info.output_top_logprobs[2].at(1).token_id, 98);
  EXPECT_EQ(s0.meta_info.output_top_logprobs[3].at(1).token_id, 99);
  EXPECT_FALSE(s0.has_input_logprobs);  // not asked for: the continuation's prompt lists stay inside
  ASSERT_EQ(s0.meta_info.weight_version_spans.size(), 1u);  // both engines served version 3
  const SampleOutput& s1 = rep.outputs[1];
  EXPECT_EQ(s1.index, 1);
  EXPECT_EQ(s1.output_ids.size(), 10u);
  EXPECT_EQ(s1.output_ids[0], 8);
  EXPECT_EQ(s1.meta_info.output_top_logprobs[0].at(1).token_id, 99);
  EXPECT_EQ(router_->engines()[1].finished, 2);
  EXPECT_EQ(router_->calls_in_flight(), 0u);
}

// With the model's tokenizer the router rebuilds a re-routed sample's text from all its ids, and
// finds a stop string that only completes across the seam (no engine could see it).
TEST_F(RouterCore, AStopStringAcrossTheSeamEndsTheSample) {
  zr::testing::TempDir tmp;
  MakeModelOptions mo;
  mo.out_dir = tmp.path() + "/tiny";
  ASSERT_TRUE(make_model(mo).ok());
  auto tok = std::move(Tokenizer::load(mo.out_dir + "/tokenizer.model")).value();
  const std::vector<int> ids = tok.encode("Once upon a time there was a little cat", false);
  ASSERT_GE(ids.size(), 6u);
  IncrementalDetokenizer d(tok, true);
  std::string t3, t4;
  for (int i = 0; i < 4; ++i) (i < 3 ? t3 : t4) += d.push(ids[i]);
  t4 = t3 + t4;
  const std::string stop = t4.substr(t3.size() - 1);  // the last character before the seam and after it
  ASSERT_EQ(t4.find(stop), t3.size() - 1);
  RouterOptions opt;
  opt.heartbeat_interval = 100ms;
  opt.heartbeat_liveness = 3;
  opt.tokenizer = mo.out_dir;
  router_ = std::make_unique<Router>(std::vector<std::string>{"inproc://f0", "inproc://f1"}, opt, now_);
  // The core reads no file: it asks its driver for --tokenizer once, and has it once handed back.
  EXPECT_FALSE(router_->has_tokenizer());
  auto wanted = router_->take_tokenizer_load();
  ASSERT_EQ(wanted, std::optional<std::string>(mo.out_dir));
  EXPECT_EQ(router_->take_tokenizer_load(), std::nullopt);
  router_->on_tokenizer_loaded(*wanted, Tokenizer::load(*wanted));
  ASSERT_TRUE(router_->has_tokenizer());
  beat(0);
  beat(1);
  GenerateRequest g = req("s", {1, 5}, 20);
  g.sampling_params.stop = {stop};
  g.stream = true;
  call("generate", wire::encode(GenerateCall{40, {g}}));
  auto sent = generates(0);
  ASSERT_EQ(sent.size(), 1u);
  from_engine(0, "generate.chunk",
              wire::encode_chunk(sent[0].req_id, StreamChunk{"s", 0, "", {ids[0], ids[1], ids[2]}, {}}));
  pass(600ms, {1});
  auto cont = generates(1);
  ASSERT_EQ(cont.size(), 1u);
  const std::string crid = cont[0].batch[0].rid;
  from_engine(1, "generate.chunk", wire::encode_chunk(cont[0].req_id, StreamChunk{crid, 0, "", {ids[3]}, {}}));
  auto stops = take(1, "abort");  // the engine goes on past the stop string: stopped
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(wire::decode_abort(stops[0].body)->rid, crid);
  from_engine(1, "generate.chunk", wire::encode_chunk(cont[0].req_id, StreamChunk{crid, 0, "", {ids[4]}, {}}));
  SampleOutput o = output(crid, 0, {ids[3], ids[4]}, 5);
  o.meta_info.finish_reason = FinishReason{FinishReason::Type::abort, {}, 0, "aborted by request"};
  from_engine(1, "generate.reply", wire::encode(GenerateReply{cont[0].req_id, {o}}));
  std::string streamed_text;
  std::vector<int> streamed_ids;
  for (const auto& ch : replies("generate.chunk")) {
    streamed_text += ch["text"].get<std::string>();
    for (int id : ch["output_ids"]) streamed_ids.push_back(id);
  }
  auto done = replies("generate.reply");
  ASSERT_EQ(done.size(), 1u);
  auto out = wire::generate_reply_from_json(done[0])->outputs.at(0);
  EXPECT_EQ(out.output_ids, (std::vector<int>{ids[0], ids[1], ids[2], ids[3]}));
  EXPECT_EQ(out.text, t3.substr(0, t3.size() - 1));
  EXPECT_EQ(out.meta_info.finish_reason.type, FinishReason::Type::stop);
  EXPECT_EQ(std::get<std::string>(out.meta_info.finish_reason.matched), stop);
  EXPECT_EQ(out.meta_info.completion_tokens, 4);
  EXPECT_EQ(streamed_text, out.text);
  EXPECT_EQ(streamed_ids, out.output_ids);
}

// Without --tokenizer the core asks its driver, once, for the model folder the first engine
// reports (it reads no file itself: loading is the driver's, off the actor loop), and a load that
// failed leaves it without one.
TEST_F(RouterCore, AsksOnceForTheEnginesTokenizerAndReadsNoFile) {
  RouterOptions opt;
  opt.heartbeat_interval = 100ms;
  router_ = std::make_unique<Router>(std::vector<std::string>{"inproc://f0", "inproc://f1"}, opt, now_);
  EXPECT_EQ(router_->take_tokenizer_load(), std::nullopt);  // no model folder known yet
  drain();
  auto answer_info = [&](int k, const std::string& model_path) {
    for (auto& m : take(k, "get_model_info"))
      from_engine(k, "get_model_info.reply",
                  wire::encode(ModelInfoReply{
                      wire::peek_req_id(m.body), "LlamaForCausalLM", 1024, 1024, 1, {2}, -1, 3, model_path}));
  };
  answer_info(0, "/models/a");
  EXPECT_EQ(router_->take_tokenizer_load(), std::optional<std::string>("/models/a"));
  EXPECT_EQ(router_->take_tokenizer_load(), std::nullopt);
  answer_info(1, "/models/b");
  EXPECT_EQ(router_->take_tokenizer_load(), std::nullopt);  // one load, whatever the later engines say
  router_->on_tokenizer_loaded("/models/a", make_error(ErrorCode::not_found, "/models/a: no such folder"));
  EXPECT_FALSE(router_->has_tokenizer());
}

TEST_F(RouterCore, ASampleThatHadFinishedOnTheDeadEngineIsNotContinued) {
  make(2);
  call("generate", wire::encode(GenerateCall{5, {req("e", {1, 3}, 10)}}));
  auto g = generates(0);
  ASSERT_EQ(g.size(), 1u);
  from_engine(0, "generate.chunk", wire::encode_chunk(g[0].req_id, StreamChunk{"e", 0, "x", {5, 2}, {}}));  // 2 = EOS
  pass(600ms, {1});
  EXPECT_TRUE(generates(1).empty());
  auto done = replies("generate.reply");
  ASSERT_EQ(done.size(), 1u);
  auto o = wire::generate_reply_from_json(done[0])->outputs.at(0);
  EXPECT_EQ(o.output_ids, (std::vector<int>{5, 2}));
  EXPECT_EQ(o.meta_info.finish_reason.type, FinishReason::Type::stop);
  EXPECT_EQ(std::get<int>(o.meta_info.finish_reason.matched), 2);
  // Untouched requests go again whole: n samples, one prefill.
  call("generate", wire::encode(GenerateCall{6, {req("f", {1, 3}, 10, 3)}}));
  auto f = generates(1);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].batch[0].sampling_params.n, 3);
}

TEST_F(RouterCore, SessionsStayOnTheirEngineAndDieWithIt) {
  make(2);
  auto open = [&](int expect_engine) {
    call("open_session", wire::encode_req_id_only(9));
    auto o = take(expect_engine, "open_session");
    EXPECT_EQ(o.size(), 1u);
    if (o.empty()) return std::string();
    from_engine(expect_engine, "open_session.reply",
                wire::encode_simple_reply("open_session", SimpleReply{wire::peek_req_id(o[0].body), "session-0", 0}));
    auto r = replies("open_session.reply");
    return r.at(0)["session_id"].get<std::string>();
  };
  const std::string s0 = open(0), s1 = open(1);  // sessions spread over the engines
  EXPECT_NE(s0, s1);
  GenerateRequest t = req("t1", {7}, 8);
  t.session_id = s0;
  call("generate", wire::encode(GenerateCall{10, {t}}));
  auto g = generates(0);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].batch[0].session_id, "session-0");  // the engine's own id
  from_engine(0, "generate.chunk", wire::encode_chunk(g[0].req_id, StreamChunk{"t1", 0, "", {4, 4}, {}}));
  pass(600ms, {1});
  auto done = replies("generate.reply");
  ASSERT_EQ(done.size(), 1u);  // its KV is gone: it ends here, with what it had
  auto o = wire::generate_reply_from_json(done[0])->outputs.at(0);
  EXPECT_EQ(o.output_ids, (std::vector<int>{4, 4}));
  EXPECT_EQ(o.meta_info.finish_reason.type, FinishReason::Type::abort);
  EXPECT_NE(o.meta_info.finish_reason.message.find(s0), std::string::npos) << o.meta_info.finish_reason.message;
  t.rid = "t2";
  call("generate", wire::encode(GenerateCall{11, {t}}));
  auto err = replies("error");
  ASSERT_EQ(err.size(), 1u);
  EXPECT_EQ(err[0]["code"], "unavailable");
  EXPECT_NE(err[0]["message"].get<std::string>().find("session_id: session '" + s0 + "'"), std::string::npos);
  t.session_id = s1;
  call("generate", wire::encode(GenerateCall{12, {t}}));
  auto g1 = generates(1);
  ASSERT_EQ(g1.size(), 1u);
  EXPECT_EQ(g1[0].batch[0].session_id, "session-0");
  call("close_session", wire::encode(SessionCall{13, s0}));  // lost: closing forgets it
  EXPECT_EQ(replies("close_session.reply").size(), 1u);
  call("close_session", wire::encode(SessionCall{14, s0}));
  err = replies("error");
  ASSERT_EQ(err.size(), 1u);
  EXPECT_EQ(err[0]["code"], "not_found");
}

TEST_F(RouterCore, ABatchStaysAllOrNothingAcrossEngines) {
  make(2);
  call("generate", wire::encode(GenerateCall{20, {req("x", {1, 2}, 8), req("y", {1, 999}, 8)}}));
  auto gx = generates(0), gy = generates(1);
  ASSERT_EQ(gx.size(), 1u);
  ASSERT_EQ(gy.size(), 1u);
  from_engine(
      1, "error",
      wire::error_body(gy[0].req_id, make_error(ErrorCode::out_of_range,
                                                "input_ids[1]: token id 999 is outside the vocabulary [0, 512)")));
  auto aborts = take(0, "abort");
  ASSERT_EQ(aborts.size(), 1u);  // the part that was accepted stops
  EXPECT_EQ(wire::decode_abort(aborts[0].body)->rid, "x");
  EXPECT_TRUE(replies("error").empty());  // once every engine has answered
  SampleOutput o = output("x", 0, {3}, 2);
  o.meta_info.finish_reason = FinishReason{FinishReason::Type::abort, {}, 0, "aborted by request"};
  from_engine(0, "generate.reply", wire::encode(GenerateReply{gx[0].req_id, {o}}));
  auto err = replies("error");
  ASSERT_EQ(err.size(), 1u);
  EXPECT_EQ(err[0]["req_id"], 20);
  EXPECT_EQ(err[0]["code"], "out_of_range");
  EXPECT_EQ(err[0]["message"], "batch[1].input_ids[1]: token id 999 is outside the vocabulary [0, 512)");
  EXPECT_TRUE(replies("generate.reply").empty());
  call("generate", wire::encode(GenerateCall{21, {req("x", {1, 2}, 8)}}));  // the rid is free again
  EXPECT_TRUE(replies("error").empty());
  call("generate", wire::encode(GenerateCall{22, {req("x", {1, 2}, 8)}}));
  err = replies("error");
  ASSERT_EQ(err.size(), 1u);
  EXPECT_EQ(err[0]["code"], "duplicate_rid");
  EXPECT_EQ(err[0]["message"], "rid: 'x' is already in flight");
}

TEST_F(RouterCore, AbortRepliesAfterTheAbortedCalls) {
  make(2);
  call("generate", wire::encode(GenerateCall{30, {req("b", {1, 2}, 50)}}));
  auto g = generates(0);
  ASSERT_EQ(g.size(), 1u);
  call("abort", wire::encode(AbortCall{31, "", "b", false}));  // by prefix
  auto a = take(0, "abort");
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(wire::decode_abort(a[0].body)->rid, "b");
  SampleOutput o = output("b", 0, {3, 4}, 2);
  o.meta_info.finish_reason = FinishReason{FinishReason::Type::abort, {}, 0, "aborted by request"};
  from_engine(0, "generate.reply", wire::encode(GenerateReply{g[0].req_id, {o}}));
  from_engine(0, "abort.reply", wire::encode(AbortReply{wire::peek_req_id(a[0].body), {"b"}}));
  ASSERT_EQ(got_.size(), 2u);
  EXPECT_EQ(got_[0].op, "generate.reply");
  EXPECT_EQ(got_[1].op, "abort.reply");
  EXPECT_EQ(wire::unpack_body(got_[1].body).value()["aborted"], json::array({"b"}));
}

// tokenize / detokenize go to one live engine; its reply (or error) reaches the caller under the
// caller's req_id.
TEST_F(RouterCore, TokenizeOpsAreForwardedToOneEngine) {
  make(2);
  call("tokenize", wire::encode(TokenizeCall{41, "hi", true}));
  auto t = take(0, "tokenize");
  auto t1 = take(1, "tokenize");
  t.insert(t.end(), t1.begin(), t1.end());
  ASSERT_EQ(t.size(), 1u);
  const int k = t[0].engine;
  auto fwd = wire::decode_tokenize(t[0].body);
  ASSERT_TRUE(fwd.ok());
  EXPECT_EQ(fwd->text, "hi");
  from_engine(k, "tokenize.reply", wire::encode(TokenizeReply{fwd->req_id, {1, 7}}));
  auto r = replies("tokenize.reply");
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0]["req_id"], 41);
  EXPECT_EQ(r[0]["input_ids"], json::array({1, 7}));

  call("detokenize", wire::encode(DetokenizeCall{42, {1, 99999}, true}));
  auto d = take(0, "detokenize");
  auto d1 = take(1, "detokenize");
  d.insert(d.end(), d1.begin(), d1.end());
  ASSERT_EQ(d.size(), 1u);
  from_engine(d[0].engine, "error",
              wire::error_body(wire::peek_req_id(d[0].body), make_error(ErrorCode::out_of_range, "input_ids[1]: ...")));
  auto e = replies("error");
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0]["req_id"], 42);
  EXPECT_EQ(e[0]["code"], "out_of_range");
}

}  // namespace
}  // namespace zr
