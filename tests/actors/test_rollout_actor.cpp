// The rollout service: the RolloutActor driven through the client library over inproc (stepped by
// hand) and tcp loopback (actor thread), with hostile input, concurrency, abort, sessions.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "actors/rollout_actor.h"
#include "comm/client.h"
#include "comm/hop_trace.h"
#include "comm/wire_codec.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using namespace std::chrono_literals;
using testing::expect_identical;

class RolloutService : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = zr::testing::shared_model_dir("stories260K");
    if (!d) GTEST_SKIP() << "shared model 'stories260K' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models";
    dir_ = *d;
  }
  std::unique_ptr<RolloutActor> make_actor(EngineOptions opt = {}) {
    RolloutActorOptions ro;
    ro.model_path = dir_;
    return std::make_unique<RolloutActor>(ctx_, testing::load_engine(dir_, opt), ro);
  }
  // Steps an unthreaded actor until the future is ready.
  template <class T>
  T step_until(RolloutActor& a, std::future<T>& f) {
    while (f.wait_for(0s) != std::future_status::ready) a.run_once(1ms);
    return f.get();
  }
  static GenerateRequest req(const std::string& rid, std::vector<int> ids, int max_new, uint64_t seed) {
    GenerateRequest r;
    r.rid = rid;
    r.input_ids = std::move(ids);
    r.sampling_params.max_new_tokens = max_new;
    r.sampling_params.temperature = seed % 2 ? 0.9f : 0.0f;
    r.sampling_params.seed = seed;
    r.return_logprob = true;
    return r;
  }
  Context ctx_;
  std::string dir_;
};

TEST_F(RolloutService, InprocGenerateMatchesTheEngineAndReference) {
  auto actor = make_actor();
  ASSERT_TRUE(actor->bind("inproc://svc-a").ok());
  auto client = std::move(Client::connect("inproc://svc-a", &ctx_.zmq())).value();
  std::ifstream f(dir_ + "/reference.json");
  auto ref = nlohmann::json::parse(f)["cases"][0];
  auto r = req("golden", ref["prompt_ids"], 32, 0);
  auto fut = client->generate_async({r});
  auto reply = step_until(*actor, fut);
  ASSERT_TRUE(reply.ok()) << reply.status().to_string();
  ASSERT_EQ(reply->outputs.size(), 1u);
  EXPECT_EQ(reply->outputs[0].output_ids, ref["greedy_ids"].get<std::vector<int>>());
  EXPECT_EQ(reply->outputs[0].text, ref["text"].get<std::string>());
}

TEST_F(RolloutService, BatchCallWithNSamplesAndErrorsNamingTheField) {
  auto actor = make_actor();
  ASSERT_TRUE(actor->bind("inproc://svc-b").ok());
  auto client = std::move(Client::connect("inproc://svc-b", &ctx_.zmq())).value();
  auto a = req("a", {1, 403, 407}, 6, 1), b = req("b", {1, 300}, 4, 3);
  b.sampling_params.n = 3;
  auto fut = client->generate_async({a, b});
  auto reply = step_until(*actor, fut);
  ASSERT_TRUE(reply.ok());
  ASSERT_EQ(reply->outputs.size(), 4u);  // a, then b's 3 samples by index
  EXPECT_EQ(reply->outputs[0].rid, "a");
  for (int i = 0; i < 3; ++i) EXPECT_EQ(reply->outputs[1 + i].index, i);
  auto bad = req("c", {1, 9999}, 4, 1);
  auto fut2 = client->generate_async({req("ok", {1, 2}, 4, 1), bad});
  auto r2 = step_until(*actor, fut2);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code, ErrorCode::out_of_range);
  EXPECT_NE(r2.status().message.find("batch[1].input_ids[1]"), std::string::npos) << r2.status().message;
  EXPECT_TRUE(actor->engine().idle());  // the good request of the refused batch was withdrawn
}

TEST_F(RolloutService, AbortMidStreamReturnsPartialOutput) {
  auto actor = make_actor();
  ASSERT_TRUE(actor->bind("inproc://svc-c").ok());
  auto client = std::move(Client::connect("inproc://svc-c", &ctx_.zmq())).value();
  auto r = req("long", {1, 403}, 200, 1);
  r.stream = true;
  r.sampling_params.ignore_eos = true;
  std::atomic<int> chunks{0};
  std::string streamed;
  auto fut = client->generate_stream_async({r}, [&](const StreamChunk& c) {
    streamed += c.text;
    ++chunks;
  });
  actor->start();
  for (int i = 0; i < 10000 && chunks < 5; ++i) std::this_thread::sleep_for(1ms);
  auto ab = client->abort("long", 10s);
  ASSERT_TRUE(ab.ok());
  EXPECT_EQ(ab->aborted, std::vector<std::string>{"long"});
  auto reply = fut.get();
  ASSERT_TRUE(reply.ok());
  const SampleOutput& o = reply->outputs.at(0);
  EXPECT_EQ(o.meta_info.finish_reason.type, FinishReason::Type::abort);
  EXPECT_GE(o.output_ids.size(), 5u);
  EXPECT_LT(o.output_ids.size(), 200u);
  EXPECT_EQ(o.text.substr(0, streamed.size()), streamed);
  actor->stop();
}

// 10,000 random or mutated messages, then a normal generate still matches reference.json.
TEST_F(RolloutService, SurvivesTenThousandHostileMessages) {
  auto actor = make_actor();
  ASSERT_TRUE(actor->bind("inproc://svc-d").ok());
  auto client = std::move(Client::connect("inproc://svc-d", &ctx_.zmq())).value();
  std::string good = wire::encode(GenerateCall{7, {req("fz", {1, 403, 407}, 4, 1)}});
  const char* ops[] = {"generate", "score", "abort", "get_load", "open_session", "close_session", "nonsense", ""};
  std::mt19937_64 rng(99);
  for (int i = 0; i < 10000; ++i) {
    std::string body = good;
    switch (rng() % 4) {
      case 0:
        body.resize(rng() % (body.size() + 1));
        break;  // truncation
      case 1:
        for (int k = 0; k < 3; ++k) body[rng() % body.size()] ^= char(1 << (rng() % 8));
        break;  // bit flips
      case 2:
        body.assign(rng() % 64, '\0');
        for (auto& c : body) c = char(rng());
        break;  // noise
      default:
        body = body.substr(0, rng() % body.size()) + good.substr(rng() % good.size());
        break;  // splice
    }
    client->send_raw(ops[rng() % 8], body);
    if (i % 64 == 0)
      while (actor->run_once(0ms)) {}
  }
  for (int i = 0; i < 2000 && !actor->engine().idle(); ++i) actor->run_once(1ms);
  while (actor->run_once(5ms)) {}
  StepOutputs discard;
  actor->engine().abort(AbortCall{0, "", "", true}, discard);  // mutated-but-valid requests, if any
  std::ifstream f(dir_ + "/reference.json");
  auto ref = nlohmann::json::parse(f)["cases"][1];
  auto fut = client->generate_async({req("after-fuzz", ref["prompt_ids"], 32, 0)});
  auto reply = step_until(*actor, fut);
  ASSERT_TRUE(reply.ok()) << reply.status().to_string();
  EXPECT_EQ(reply->outputs[0].output_ids, ref["greedy_ids"].get<std::vector<int>>());
}

TEST_F(RolloutService, SessionTurnsOverTheWire) {
  auto actor = make_actor();
  ASSERT_TRUE(actor->bind("inproc://svc-e").ok());
  actor->start();
  auto client = std::move(Client::connect("inproc://svc-e", &ctx_.zmq())).value();
  auto sid = client->open_session();
  ASSERT_TRUE(sid.ok());
  auto t1 = req("t1", {1, 403, 407}, 8, 1);
  t1.session_id = *sid;
  auto r1 = client->generate({t1});
  ASSERT_TRUE(r1.ok());
  auto t2 = req("t2", {300, 301}, 8, 3);
  t2.session_id = *sid;
  auto r2 = client->generate({t2});
  ASSERT_TRUE(r2.ok());
  std::vector<int> all = {1, 403, 407};
  all.insert(all.end(), r1->outputs[0].output_ids.begin(), r1->outputs[0].output_ids.end());
  all.insert(all.end(), {300, 301});
  auto one = client->generate({req("one", all, 8, 3)});
  ASSERT_TRUE(one.ok());
  expect_identical(r2->outputs[0], one->outputs[0], "session turn 2 vs one request");
  EXPECT_TRUE(client->close_session(*sid).ok());
  auto load = client->get_load();
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->running, 0);
  auto info = client->get_model_info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->vocab_size, 512);
  actor->stop();
}

// 500 concurrent requests from 8 client threads over tcp loopback: all answered, each equal to the
// same request run alone.
TEST_F(RolloutService, FiveHundredConcurrentRequestsOverTcp) {
  auto actor = make_actor();
  ASSERT_TRUE(actor->bind("tcp://127.0.0.1:*").ok());
  const std::string ep = actor->endpoint();
  actor->start();
  constexpr int kThreads = 8, kPerThread = 63;  // 504 requests
  std::vector<std::vector<GenerateRequest>> work(kThreads);
  std::mt19937_64 rng(5);
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < kPerThread; ++i) {
      std::vector<int> ids{1};
      for (int k = 0, len = 1 + int(rng() % 12); k < len; ++k) ids.push_back(3 + int(rng() % 500));
      work[t].push_back(req("t" + std::to_string(t) + "-" + std::to_string(i), ids, 2 + int(rng() % 10), rng()));
    }
  std::vector<std::vector<Result<GenerateReply>>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      auto client = std::move(Client::connect(ep)).value();
      std::vector<std::future<Result<GenerateReply>>> futs;
      for (const auto& r : work[t]) futs.push_back(client->generate_async({r}, 120s));
      for (auto& f : futs) got[t].push_back(f.get());
    });
  for (auto& th : threads) th.join();
  actor->stop();
  auto alone = testing::load_engine(dir_);
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < kPerThread; ++i) {
      ASSERT_TRUE(got[t][i].ok()) << got[t][i].status().to_string();
      ASSERT_TRUE(alone->submit(work[t][i]).ok());
      auto one = testing::run_to_completion(*alone).samples.at(work[t][i].rid).at(0);
      expect_identical(got[t][i]->outputs.at(0), one, work[t][i].rid);
    }
}

// comm/hop_trace.h: a 1-token generate over tcp marks every hop once tracing is on, in the order the
// request passes them (what bench_service --hops reports), and nothing while it is off.
TEST_F(RolloutService, HopTraceMarksEveryHopOfAGenerateInOrder) {
  using hop_trace::Hop;
  auto actor = make_actor();
  ASSERT_TRUE(actor->bind("tcp://127.0.0.1:*").ok());
  actor->start();
  auto client = std::move(Client::connect(actor->endpoint())).value();
  // A get_load after a generate is a fence: the actor answers it only after it finished the
  // generate's reply, including the marks it makes after sending it.
  auto generate_and_fence = [&](const std::string& rid) {
    ASSERT_TRUE(client->generate({req(rid, {1, 5, 6}, 1, 0)}).ok());
    ASSERT_TRUE(client->get_load().ok());
  };
  hop_trace::set_enabled(false);
  generate_and_fence("off");
  EXPECT_TRUE(hop_trace::take().empty());
  hop_trace::set_enabled(true);
  generate_and_fence("on");
  hop_trace::set_enabled(false);
  std::map<Hop, int64_t> first;  // the generate's marks come before the fence's
  for (const auto& e : hop_trace::take())
    if (!first.count(e.hop) || e.ns < first[e.hop]) first[e.hop] = e.ns;
  for (size_t h = 0; h < static_cast<size_t>(Hop::kCount); ++h)
    EXPECT_TRUE(first.count(static_cast<Hop>(h))) << "no mark at " << hop_trace::hop_name(static_cast<Hop>(h));
  // io_sent and reply_sent are marked after a send returns, so the other side may come first.
  const Hop path[] = {Hop::client_call,   Hop::client_queued,    Hop::io_send,     Hop::actor_recv,
                      Hop::actor_decoded, Hop::engine_submitted, Hop::step_start,  Hop::step_end,
                      Hop::reply_encoded, Hop::io_received,      Hop::io_resolved, Hop::client_returned};
  for (size_t k = 1; k < std::size(path); ++k)
    EXPECT_LE(first[path[k - 1]], first[path[k]])
        << hop_trace::hop_name(path[k - 1]) << " after " << hop_trace::hop_name(path[k]);
  EXPECT_LE(first[Hop::io_send], first[Hop::io_sent]);
  EXPECT_LE(first[Hop::reply_encoded], first[Hop::reply_sent]);
  actor->stop();
}

}  // namespace
}  // namespace zr
