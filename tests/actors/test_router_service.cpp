// The router with real engines over inproc: load spread, sticky sessions, an engine that stops
// answering under load (every request finishes exactly as one healthy engine would produce it, and
// the router and the trainer say which engine died), and a router that a client cannot tell from
// an engine. (The pure core with fake engines: test_router_core.cpp.)
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

// Stands between the router and an engine, relaying both ways, until `dark_after` chunks have gone
// through; from then on it swallows everything: an engine that stops answering without closing
// anything (as a hung or partitioned host does). The engine behind it goes on generating.
class Blackhole {
 public:
  Blackhole(Context& ctx, const std::string& bind, const std::string& engine, int dark_after)
      : actor_(ctx, "blackhole"), dark_after_(dark_after) {
    EXPECT_TRUE(actor_.bind(bind).ok());
    peer_ = actor_.connect_peer(engine).value();
    for (const char* op : {"generate",
                           "score",
                           "abort",
                           "get_load",
                           "health",
                           "get_model_info",
                           "flush_cache",
                           "open_session",
                           "close_session",
                           "update_weights",
                           "get_weight_version",
                           "shutdown",
                           "generate.chunk",
                           "generate.reply",
                           "score.reply",
                           "abort.reply",
                           "get_load.reply",
                           "health.reply",
                           "get_model_info.reply",
                           "flush_cache.reply",
                           "open_session.reply",
                           "close_session.reply",
                           "update_weights.reply",
                           "get_weight_version.reply",
                           "error"})
      actor_.on(op, [this, name = std::string(op)](Frame& f, const ReplyTo& from) { relay(name, f, from); });
    actor_.start();
  }
  ~Blackhole() { actor_.stop(); }
  const std::string& endpoint() const { return actor_.endpoint(); }
  bool dark() const { return dark_.load(); }
  // Output ids relayed per rid before it went dark: the partial output the router had.
  int relayed(const std::string& rid) {
    std::lock_guard<std::mutex> lock(mu_);
    return relayed_[rid];
  }

 private:
  void relay(const std::string& op, Frame& f, const ReplyTo& from) {
    if (dark_) return;
    if (from.via_router()) {
      caller_ = from.routing_id;
      actor_.send_peer(peer_, op, std::move(f.body));
      return;
    }
    if (op == "generate.chunk") {
      auto ch = wire::stream_chunk_from_json(wire::unpack_body(f.body).value()).value();
      std::lock_guard<std::mutex> lock(mu_);
      relayed_[ch.rid] += static_cast<int>(ch.output_ids.size());
    }
    actor_.send_to(caller_, op, std::move(f.body));
    if (op == "generate.chunk" && ++chunks_ >= dark_after_) dark_ = true;
  }

  Actor actor_;
  PeerId peer_ = 0;
  std::string caller_;
  int dark_after_ = 0, chunks_ = 0;
  std::atomic<bool> dark_{false};
  std::mutex mu_;
  std::map<std::string, int> relayed_;
};

class RouterService : public ::testing::Test {
 protected:
  void SetUp() override {
    MakeModelOptions mo;
    mo.preset = "tiny";
    mo.seed = 5;
    mo.out_dir = dir();
    ASSERT_TRUE(make_model(mo).ok());
  }
  std::string dir() const { return tmp_.path() + "/tiny"; }
  std::string ep(const std::string& name) const {
    return "inproc://rt-" + name + "-" + std::to_string(reinterpret_cast<uintptr_t>(this));
  }
  // A rollout engine on its own thread at ep(name).
  std::string engine(const std::string& name) {
    EngineOptions eo;
    eo.threads = 1;
    eo.kv_cache_bytes = size_t{16} << 20;
    RolloutActorOptions ro;
    ro.name = name;
    ro.model_path = dir();  // the router finds the tokenizer through get_model_info
    engines_.push_back(std::make_unique<RolloutActor>(ctx_, testing::load_engine(dir(), eo), ro));
    EXPECT_TRUE(engines_.back()->bind(ep(name)).ok());
    engines_.back()->start();
    return ep(name);
  }
  static RouterOptions fast_heartbeats() {
    RouterOptions o;
    o.heartbeat_interval = 50ms;
    o.heartbeat_liveness = 10;
    return o;
  }
  std::unique_ptr<RouterActor> router(const std::vector<std::string>& engines) {
    RouterActorOptions o;
    o.router = fast_heartbeats();
    auto r = std::move(RouterActor::create(ctx_, engines, o)).value();
    EXPECT_TRUE(r->bind(ep("router")).ok());
    r->start();
    return r;
  }
  std::unique_ptr<Client> client(const std::string& endpoint) {
    return std::move(Client::connect(endpoint, &ctx_.zmq())).value();
  }
  static EnginesReply get_engines(Client& c) {
    const uint64_t id = c.next_req_id();
    auto raw = c.call_raw("get_engines", wire::encode_req_id_only(id), {}, id, 30s).get();
    EXPECT_TRUE(raw.ok());
    EXPECT_EQ(raw->op, "get_engines.reply");
    return wire::engines_reply_from_json(raw->json).value();
  }
  static GenerateRequest greedy(const std::string& rid, std::vector<int> ids, int max_new) {
    GenerateRequest r;
    r.rid = rid;
    r.input_ids = std::move(ids);
    r.sampling_params.temperature = 0;
    r.sampling_params.max_new_tokens = max_new;
    r.sampling_params.ignore_eos = true;
    r.return_logprob = true;
    return r;
  }
  // Samples keyed "rid/index".
  static std::map<std::string, SampleOutput> by_key(const std::vector<SampleOutput>& v) {
    std::map<std::string, SampleOutput> m;
    for (const auto& o : v) m[o.rid + "/" + std::to_string(o.index)] = o;
    return m;
  }

  Context ctx_;
  zr::testing::TempDir tmp_;
  std::vector<std::unique_ptr<RolloutActor>> engines_;
};

TEST_F(RouterService, SpreadsABatchOverTheEngines) {
  auto r = router({engine("a"), engine("b")});
  auto c = client(r->endpoint());
  auto direct = client(engine("ref"));
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 12; ++i) reqs.push_back(greedy("q" + std::to_string(i), {1, 40 + i, 7 * i + 3}, 12));
  auto got = c->generate(reqs, 120s);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  auto want = direct->generate(reqs, 120s);
  ASSERT_TRUE(want.ok());
  ASSERT_EQ(got->outputs.size(), 12u);
  for (size_t i = 0; i < 12; ++i) {
    EXPECT_EQ(got->outputs[i].rid, reqs[i].rid);  // request order, as from an engine
    expect_identical(got->outputs[i], want->outputs[i], reqs[i].rid);
  }
  auto st = get_engines(*c);
  ASSERT_EQ(st.engines.size(), 2u);
  EXPECT_EQ(st.engines[0].finished, 6);
  EXPECT_EQ(st.engines[1].finished, 6);
  EXPECT_EQ(st.engines[0].in_flight + st.engines[1].in_flight, 0);
}

TEST_F(RouterService, SessionsStickToTheirEngine) {
  auto r = router({engine("a"), engine("b")});
  auto c = client(r->endpoint());
  auto direct = client(engine("ref"));
  auto s1 = c->open_session(), s2 = c->open_session(), d1 = direct->open_session();
  ASSERT_TRUE(s1.ok() && s2.ok() && d1.ok());
  EXPECT_NE(*s1, *s2);
  auto st = get_engines(*c);
  EXPECT_EQ(st.engines[0].sessions, 1);
  EXPECT_EQ(st.engines[1].sessions, 1);
  const std::vector<std::vector<int>> turns = {{1, 300, 301}, {400}, {500, 501}};
  for (size_t t = 0; t < turns.size(); ++t) {
    auto a = greedy("s1-" + std::to_string(t), turns[t], 6);
    a.session_id = *s1;
    auto b = greedy("s2-" + std::to_string(t), turns[turns.size() - 1 - t], 6);
    b.session_id = *s2;
    auto fa = c->generate_async({a}, 60s);
    auto fb = c->generate_async({b}, 60s);
    a.session_id = *d1;
    auto want = direct->generate({a}, 60s);
    auto got = fa.get();
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    ASSERT_TRUE(fb.get().ok());
    ASSERT_TRUE(want.ok());
    expect_identical(got->outputs.at(0), want->outputs.at(0), a.rid);  // the turn saw its session's tokens
    EXPECT_EQ(got->outputs[0].meta_info.prompt_tokens, want->outputs[0].meta_info.prompt_tokens);
    EXPECT_EQ(got->outputs[0].meta_info.cached_tokens, want->outputs[0].meta_info.cached_tokens);
  }
  st = get_engines(*c);
  EXPECT_EQ(st.engines[0].finished, 3);  // each session's three turns ran where it lives
  EXPECT_EQ(st.engines[1].finished, 3);
  ASSERT_TRUE(c->close_session(*s1).ok());
  auto gone = greedy("late", {1, 2}, 2);
  gone.session_id = *s1;
  auto e = c->generate({gone}, 30s);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code, ErrorCode::not_found);
  EXPECT_EQ(e.status().message, "session_id: no session '" + *s1 + "'");
}

// The requests of the tests below: greedy and ignore_eos, so every one runs its max_new_tokens and
// the tokens after a re-route are what one healthy engine produces. Split by load over two idle
// engines, engine 0 gets d0 (n=2: each sample continues on its own), d3 (top logprobs: the partial
// tokens' lists come back as prompt lists) and d5 (a text prompt: the router tokenizes it).
std::vector<GenerateRequest> load_for_death(int max_new) {
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 6; ++i) {
    GenerateRequest r;
    r.rid = "d" + std::to_string(i);
    if (i == 5) r.text = "Once upon a time there was";
    else r.input_ids = {1, 20 + i, 300 + 11 * i, 5};
    r.sampling_params.temperature = 0;
    r.sampling_params.max_new_tokens = max_new;
    r.sampling_params.ignore_eos = true;
    r.sampling_params.n = i == 0 ? 2 : 1;
    r.return_logprob = true;
    if (i == 3) r.top_logprobs_num = 3;
    reqs.push_back(std::move(r));
  }
  return reqs;
}

void expect_like_one_healthy_engine(const std::vector<SampleOutput>& got, const std::vector<SampleOutput>& want,
                                    int max_new) {
  auto g = std::map<std::string, SampleOutput>(), w = g;
  for (const auto& o : got) g[o.rid + "/" + std::to_string(o.index)] = o;
  for (const auto& o : want) w[o.rid + "/" + std::to_string(o.index)] = o;
  ASSERT_EQ(g.size(), w.size());
  for (const auto& [key, o] : w) {
    ASSERT_TRUE(g.count(key)) << key;
    const SampleOutput& x = g.at(key);
    expect_identical(x, o, key);
    EXPECT_EQ(x.meta_info.completion_tokens, max_new) << key;
    EXPECT_EQ(x.meta_info.finish_reason.type, FinishReason::Type::length) << key;
    EXPECT_EQ(x.meta_info.finish_reason.length, max_new) << key;
    EXPECT_EQ(x.meta_info.prompt_tokens, o.meta_info.prompt_tokens) << key;
    EXPECT_EQ(x.meta_info.output_top_logprobs.size(), o.meta_info.output_top_logprobs.size()) << key;
    for (size_t t = 0; t < o.meta_info.output_top_logprobs.size(); ++t) {
      ASSERT_EQ(x.meta_info.output_top_logprobs[t].size(), o.meta_info.output_top_logprobs[t].size()) << key;
      for (size_t k = 0; k < o.meta_info.output_top_logprobs[t].size(); ++k)
        EXPECT_EQ(x.meta_info.output_top_logprobs[t][k].token_id, o.meta_info.output_top_logprobs[t][k].token_id)
            << key << " position " << t;
    }
  }
}

TEST_F(RouterService, AnEngineThatStopsAnsweringUnderLoadIsReRouted) {
  constexpr int kMaxNew = 48;
  Blackhole hole(ctx_, ep("hole"), engine("a"), /*dark_after=*/40);  // well before a's requests end
  auto r = router({hole.endpoint(), engine("b")});
  auto c = client(r->endpoint());
  auto direct = client(engine("ref"));
  auto reqs = load_for_death(kMaxNew);
  std::mutex mu;
  std::map<std::string, std::pair<std::string, std::vector<int>>> streamed;  // rid/index -> text, ids
  auto got = c->generate_stream(
      reqs,
      [&](const StreamChunk& ch) {
        std::lock_guard<std::mutex> lock(mu);
        auto& s = streamed[ch.rid + "/" + std::to_string(ch.index)];
        s.first += ch.text;
        s.second.insert(s.second.end(), ch.output_ids.begin(), ch.output_ids.end());
      },
      120s);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_TRUE(hole.dark());
  auto want = direct->generate(reqs, 120s);
  ASSERT_TRUE(want.ok());
  expect_like_one_healthy_engine(got->outputs, want->outputs, kMaxNew);
  for (const auto& o : got->outputs) {  // the stream of a re-routed sample still adds up
    const auto& s = streamed[o.rid + "/" + std::to_string(o.index)];
    EXPECT_EQ(s.first, o.text) << o.rid;
    EXPECT_EQ(s.second, o.output_ids) << o.rid;
  }
  for (const char* rid : {"d0", "d3", "d5"}) {  // they had begun on the engine that went silent
    EXPECT_GT(hole.relayed(rid), 0) << rid;
    EXPECT_LT(hole.relayed(rid), kMaxNew) << rid;
  }
  auto st = get_engines(*c);
  ASSERT_EQ(st.engines.size(), 2u);
  EXPECT_FALSE(st.engines[0].alive);  // the router says which engine died
  EXPECT_EQ(st.engines[0].endpoint, hole.endpoint());
  EXPECT_EQ(st.engines[0].rerouted, 3);
  EXPECT_TRUE(st.engines[1].alive);
  // Nothing goes to the dead engine any more.
  auto after = c->generate({greedy("after", {1, 2, 3}, 4)}, 60s);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(get_engines(*c).engines[1].finished, st.engines[1].finished + 1);
}

TEST_F(RouterService, TheTrainerIsToldWhichEngineDied) {
  constexpr int kMaxNew = 48;
  Blackhole hole(ctx_, ep("hole"), engine("a"), /*dark_after=*/40);
  TrainerOptions to;
  to.router = fast_heartbeats();
  auto t = std::move(Trainer::connect(ctx_, {hole.endpoint(), engine("b")}, to)).value();
  auto direct = client(engine("ref"));
  auto reqs = load_for_death(kMaxNew);
  auto got = t->generate(reqs, 120s);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  auto want = direct->generate(reqs, 120s);
  ASSERT_TRUE(want.ok());
  expect_like_one_healthy_engine(*got, want->outputs, kMaxNew);
  EXPECT_GT(hole.relayed("d0"), 0);  // the first request engine 0 got had begun there (one call per
                                     // request: whether the later ones had is up to its scheduler)
  auto st = t->engines();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_FALSE(st[0].alive);
  EXPECT_EQ(st[0].rerouted, 3);
  EXPECT_TRUE(st[1].alive);
  // A publish skips the dead engine instead of waiting for it, and says so.
  auto pub = t->publish(dir(), 1, PublishOptions{});
  ASSERT_TRUE(pub.ok()) << pub.status().to_string();
  EXPECT_EQ(pub->dead, std::vector<int>{0});
  EXPECT_EQ(pub->acked, std::vector<int>{1});
  EXPECT_EQ(*t->weight_version(1), 1);
  auto v0 = t->weight_version(0);
  ASSERT_FALSE(v0.ok());
  EXPECT_EQ(v0.status().code, ErrorCode::unavailable);
}

// The same bodies to an engine and to a router in front of two engines: the same answers.
TEST_F(RouterService, AClientCannotTellTheRouterFromAnEngine) {
  auto r = router({engine("a"), engine("b")});
  auto via = client(r->endpoint());
  auto direct = client(engine("ref"));
  uint64_t id = 1000;
  auto both = [&](const std::string& op, const json& body) {
    json b = body;
    b["req_id"] = ++id;
    auto x = direct->call_raw(op, wire::pack_body(b), {}, id, 60s).get();
    auto y = via->call_raw(op, wire::pack_body(b), {}, id, 60s).get();
    EXPECT_TRUE(x.ok() && y.ok());
    auto strip = [](json j) {  // timings differ
      if (j.contains("outputs"))
        for (auto& o : j["outputs"])
          if (o.contains("meta_info")) o["meta_info"].erase("e2e_latency");
      return j;
    };
    EXPECT_EQ(x->op, y->op) << op << " " << body.dump();
    EXPECT_EQ(strip(x->json), strip(y->json)) << op << " " << body.dump();
    return strip(y->json);
  };
  GenerateRequest a = greedy("ga", {1, 33, 44, 55}, 10);
  a.logprob_start_len = 0;
  a.top_logprobs_num = 3;
  a.token_ids_logprob = {5, 6};
  GenerateRequest b;
  b.rid = "gb";
  b.text = "Once upon a time";
  b.sampling_params.n = 3;
  b.sampling_params.temperature = 0.8f;
  b.sampling_params.top_p = 0.9f;
  b.sampling_params.seed = 11;
  b.sampling_params.max_new_tokens = 12;
  b.return_logprob = true;
  auto gen = both("generate", wire::to_json(GenerateCall{0, {a, b}}));
  EXPECT_EQ(gen["outputs"].size(), 4u);
  ScoreRequest s{"sc", {1, 33, 44}, {55, 66, 77}, 0.7f, 2};
  both("score", wire::to_json(ScoreCall{0, {s, ScoreRequest{"sd", {1, 2}, {3}, 1.0f, 0}}}));
  // Errors name the same field, with the same code.
  both("generate", json{{"rid", "x"}, {"input_ids", {1, 2}}, {"sampling_params", {{"top_k", "x"}}}});
  both("generate",
       json{{"batch", {{{"rid", "ok"}, {"input_ids", {1, 2}}}, {{"rid", "bad"}, {"input_ids", {1, 5000}}}}}});
  both("generate",
       json{{"batch", {{{"rid", "twice"}, {"input_ids", {1, 2}}}, {{"rid", "twice"}, {"input_ids", {1, 3}}}}}});
  both("generate", json{{"rid", "s"}, {"input_ids", {1, 2}}, {"session_id", "nope"}});
  both("generate", json{{"rid", "t"}, {"input_ids", {1, 2}}, {"sampling_params", {{"n", 0}}}});
  both("nonsense", json::object());
  both("generate.reply", json::object());
  both("abort", json::object());
  both("close_session", json{{"session_id", "nope"}});
  both("open_session", json{{"session_id", "mine"}});
  both("score", json{{"rid", "t"}, {"input_ids", {1, 2}}, {"completion_ids", {3}}, {"temperature", 0}});
  // Abort mid-stream: the partial output comes back with finish_reason abort, then abort.reply.
  for (Client* cl : {direct.get(), via.get()}) {
    GenerateRequest l = greedy("long", {1, 403}, 1000);
    std::atomic<int> chunks{0};
    auto fut = cl->generate_stream_async(
        {l}, [&](const StreamChunk&) { ++chunks; }, 60s);
    for (int i = 0; i < 30000 && chunks < 5; ++i) std::this_thread::sleep_for(1ms);
    auto ab = cl->abort("long", 30s);
    ASSERT_TRUE(ab.ok());
    EXPECT_EQ(ab->aborted, std::vector<std::string>{"long"});
    auto out = fut.get();
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(out->outputs.at(0).meta_info.finish_reason.type, FinishReason::Type::abort);
    EXPECT_GE(out->outputs[0].output_ids.size(), 5u);
    EXPECT_LT(out->outputs[0].output_ids.size(), 1000u);
    auto none = cl->abort("long", 30s);  // nothing left to abort: not an error
    ASSERT_TRUE(none.ok());
    EXPECT_TRUE(none->aborted.empty());
  }
}

}  // namespace
}  // namespace zr
