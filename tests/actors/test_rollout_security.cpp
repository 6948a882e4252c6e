// The rollout actor behind CURVE (roles per op, unknown keys) and its limits (prompts per call, n,
// in flight per connection, --weights-root, max_new_tokens past the context), through the C++
// client over tcp loopback with the actor on its own thread.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "actors/rollout_actor.h"
#include "actors/router_actor.h"
#include "comm/client.h"
#include "comm/wire_codec.h"
#include "comm/wire_weights.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using namespace std::chrono_literals;

struct KeySet {
  CurveKeyPair server = *make_curve_keypair(), trainer = *make_curve_keypair(), client = *make_curve_keypair();
  CurveKeyPair stranger = *make_curve_keypair();
  Client::Options as(const CurveKeyPair& own) const {
    Client::Options o;
    o.curve = CurveClientKeys{server.public_key, own};
    return o;
  }
};

class RolloutSecurity : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = zr::testing::shared_model_dir("stories260K");
    if (!d) GTEST_SKIP() << "shared model 'stories260K' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models";
    dir_ = *d;
  }
  // Starts an actor on tcp://127.0.0.1 with `ro` (keys from keys_ when curve is set).
  void start(RolloutActorOptions ro, bool curve) {
    ro.model_path = dir_;
    if (curve) ro.curve = CurveServerKeys{keys_.server, {keys_.trainer.public_key}, {keys_.client.public_key}};
    actor_ = std::make_unique<RolloutActor>(ctx_, testing::load_engine(dir_, {}), ro);
    ASSERT_TRUE(actor_->bind("tcp://127.0.0.1:*").ok());
    actor_->start();
  }
  std::unique_ptr<Client> connect(Client::Options o = {}) {
    auto c = Client::connect(actor_->endpoint(), nullptr, o);
    EXPECT_TRUE(c.ok());
    return std::move(c).value();
  }
  // The error code of a raw call (ok: "" and the reply's op in `op`).
  static std::string code_of(Client& c, const std::string& op, const std::string& body, uint64_t id,
                             std::string* message = nullptr, Client::Timeout timeout = 20s) {
    auto r = c.call_raw(op, body, {}, id, timeout).get();
    if (!r.ok()) return error_code_name(r.status().code);
    if (r->op != "error") return "";
    if (message) *message = r->json["message"].get<std::string>();
    return r->json["code"].get<std::string>();
  }
  static GenerateRequest req(const std::string& rid, int max_new) {
    GenerateRequest r;
    r.rid = rid;
    r.input_ids = {1, 403, 407};
    r.sampling_params.max_new_tokens = max_new;
    r.sampling_params.temperature = 0;
    return r;
  }
  // `theirs` starts a long generate; `mine` (another client key) can abort none of it, by name or
  // all at once; `theirs` can; a trainer key may abort anyone's.
  static void check_client_aborts_only_its_own(Client& mine, Client& theirs, Client& trainer) {
    auto r = req("theirs-1", 500);  // 64 x 500 tokens: runs for a while on any machine
    r.sampling_params.ignore_eos = true;
    r.sampling_params.n = 64;
    auto running = theirs.generate_async({r});
    ASSERT_TRUE(theirs.health().ok());  // the generate is taken before the health reply comes back
    auto a = mine.abort("theirs-1");
    ASSERT_TRUE(a.ok());
    EXPECT_TRUE(a->aborted.empty());
    auto all = mine.abort_all();
    ASSERT_TRUE(all.ok());
    EXPECT_TRUE(all->aborted.empty());
    EXPECT_EQ(running.wait_for(0s), std::future_status::timeout);  // still running
    auto own = theirs.abort_prefix("theirs-");
    ASSERT_TRUE(own.ok());
    EXPECT_EQ(own->aborted, std::vector<std::string>{"theirs-1"});
    auto g = running.get();
    ASSERT_TRUE(g.ok()) << g.status().to_string();
    EXPECT_EQ(g->outputs[0].meta_info.finish_reason.type, FinishReason::Type::abort);
    auto r2 = r;
    r2.rid = "theirs-2";
    auto again = theirs.generate_async({r2});
    ASSERT_TRUE(theirs.health().ok());
    auto by_trainer = trainer.abort("theirs-2");
    ASSERT_TRUE(by_trainer.ok());
    EXPECT_EQ(by_trainer->aborted, std::vector<std::string>{"theirs-2"});
    EXPECT_TRUE(again.get().ok());
  }
  void TearDown() override {
    if (actor_) actor_->stop();
  }
  KeySet keys_;
  Context ctx_;
  std::string dir_;
  std::unique_ptr<RolloutActor> actor_;
};

TEST_F(RolloutSecurity, ClientKeyGeneratesAndReadsButCannotChangeTheEngine) {
  start({}, true);
  auto c = connect(keys_.as(keys_.client));
  auto g = c->generate({req("a", 4)});
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  EXPECT_TRUE(c->health().ok());
  EXPECT_TRUE(c->get_model_info().ok());
  EXPECT_TRUE(c->score({ScoreRequest{"s", {1, 403}, {407}}}).ok());
  auto session = c->open_session();
  ASSERT_TRUE(session.ok());
  EXPECT_TRUE(c->close_session(*session).ok());
  EXPECT_TRUE(c->abort("nothing").ok());
  EXPECT_EQ(code_of(*c, "get_weight_version", wire::encode_req_id_only(100), 100), "");
  UpdateWeightsCall upd;
  upd.req_id = 101;
  upd.version = 9;
  upd.path = WeightPath::disk;
  upd.disk_path = dir_;
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"update_weights", wire::encode(upd)},
      {"release_memory", wire::encode(MemoryCall{102, {"kv_cache"}})},
      {"resume_memory", wire::encode(MemoryCall{103, {"kv_cache"}})},
      {"flush_cache", wire::encode_req_id_only(104)},
      {"shutdown", wire::encode_req_id_only(105)},
  };
  for (const auto& [op, body] : refused) {
    std::string msg;
    EXPECT_EQ(code_of(*c, op, body, wire::peek_req_id(body), &msg), "permission_denied") << op;
    EXPECT_NE(msg.find("'" + op + "'"), std::string::npos) << msg;
  }
  EXPECT_TRUE(c->health().ok());  // still serving, still the same weights
  auto f = c->flush_cache();
  EXPECT_EQ(f.status().code, ErrorCode::permission_denied);
}

TEST_F(RolloutSecurity, TrainerKeyMayCallTheWeightAndMemoryOps) {
  start({}, true);
  auto t = connect(keys_.as(keys_.trainer));
  EXPECT_TRUE(t->flush_cache().ok());
  EXPECT_EQ(code_of(*t, "release_memory", wire::encode(MemoryCall{1, {"kv_cache"}}), 1), "");
  EXPECT_EQ(code_of(*t, "resume_memory", wire::encode(MemoryCall{2, {"kv_cache"}}), 2), "");
  EXPECT_TRUE(t->generate({req("t", 2)}).ok());
}

// A client key aborts only what its own connection asked for; a trainer key may abort anything.
TEST_F(RolloutSecurity, ClientAbortsOnlyItsOwnRequests) {
  start({}, true);
  auto mine = connect(keys_.as(keys_.client));
  auto theirs = connect(keys_.as(keys_.client));
  auto trainer = connect(keys_.as(keys_.trainer));
  check_client_aborts_only_its_own(*mine, *theirs, *trainer);
}

TEST_F(RolloutSecurity, UnknownKeyGetsNoAnswerAndOthersAreServed) {
  start({}, true);
  auto stranger = connect(keys_.as(keys_.stranger));
  auto plain = connect();
  auto pending = stranger->generate_async({req("x", 2)}, 2s);
  auto pending_plain = plain->health(2s);
  auto c = connect(keys_.as(keys_.client));
  EXPECT_TRUE(c->generate({req("ok", 2)}).ok());
  // No answer either way: a timeout if the request was queued before the refused handshake tore
  // the pipe down, else unavailable (no pipe to send on; seen under ASan, where the client is slower).
  auto no_answer = [](ErrorCode code) { return code == ErrorCode::timeout || code == ErrorCode::unavailable; };
  const ErrorCode stranger_code = pending.get().status().code, plain_code = pending_plain.status().code;
  EXPECT_TRUE(no_answer(stranger_code)) << error_code_name(stranger_code);
  EXPECT_TRUE(no_answer(plain_code)) << error_code_name(plain_code);
  EXPECT_TRUE(c->health().ok());
}

TEST_F(RolloutSecurity, CallLimitsNameTheFieldAndTheFlag) {
  RolloutActorOptions ro;
  ro.limits.max_prompts_per_call = 2;
  ro.limits.max_n = 2;
  start(ro, false);
  auto c = connect();
  auto three = c->generate({req("a", 1), req("b", 1), req("c", 1)});
  EXPECT_EQ(three.status().code, ErrorCode::invalid_argument);
  EXPECT_EQ(three.status().message.rfind("batch: 3 requests", 0), 0u) << three.status().message;
  EXPECT_NE(three.status().message.find("--max-prompts-per-call 2"), std::string::npos);
  auto r = req("n", 1);
  r.sampling_params.n = 3;
  auto n = c->generate({r});
  EXPECT_EQ(n.status().code, ErrorCode::invalid_argument);
  EXPECT_EQ(n.status().message.rfind("sampling_params.n:", 0), 0u) << n.status().message;
  auto s = c->score({ScoreRequest{"1", {1, 2}, {3}}, ScoreRequest{"2", {1, 2}, {3}}, ScoreRequest{"3", {1, 2}, {3}}});
  EXPECT_EQ(s.status().code, ErrorCode::invalid_argument);
  EXPECT_TRUE(c->generate({req("a", 1), req("b", 1)}).ok());  // at the limits: fine
}

TEST_F(RolloutSecurity, InFlightPerConnection) {
  RolloutActorOptions ro;
  ro.limits.max_in_flight = 2;
  start(ro, false);
  auto c = connect();
  auto other = connect();
  auto busy = c->generate_async({req("long1", 400), req("long2", 400)});
  auto over = c->generate({req("third", 1)});
  EXPECT_EQ(over.status().code, ErrorCode::unavailable);
  EXPECT_NE(over.status().message.find("--max-in-flight 2"), std::string::npos) << over.status().message;
  EXPECT_TRUE(other->generate({req("elsewhere", 1)}).ok());  // another connection has its own count
  ASSERT_TRUE(c->abort_all().ok());
  EXPECT_TRUE(busy.get().ok());
  EXPECT_TRUE(c->generate({req("after", 1)}).ok());  // the count went back down
}

TEST_F(RolloutSecurity, DiskUpdatesOnlyUnderTheWeightsRoots) {
  zr::testing::TempDir root;
  RolloutActorOptions ro;
  ro.weights_roots = {root.path()};
  start(ro, false);
  auto c = connect();
  auto info = c->get_model_info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->weights_roots, std::vector<std::string>{root.path()});
  UpdateWeightsCall upd;
  upd.req_id = 1;
  upd.version = 2;
  upd.path = WeightPath::disk;
  for (const std::string& outside : {dir_, root.path() + "/../elsewhere", std::string("/etc")}) {
    upd.disk_path = outside;
    std::string msg;
    EXPECT_EQ(code_of(*c, "update_weights", wire::encode(upd), 1, &msg), "permission_denied") << outside;
    EXPECT_EQ(msg.rfind("disk_path:", 0), 0u) << msg;
  }
  upd.disk_path = root.path() + "/no-such-checkpoint";  // inside: refused for another reason
  std::string code = code_of(*c, "update_weights", wire::encode(upd), 1);
  EXPECT_NE(code, "permission_denied");
  EXPECT_NE(code, "");
}

// SGLang's clip (Scheduler.handle_generate_request): max_new_tokens = min(requested,
// min(context - 1, KV positions - 1) - prompt - 1), so the request ends with finish "length" two
// below the context, never runs on. nil (SGLang's None) is "as many as that"; -1 is refused, as
// SGLang's SamplingParams.verify does.
TEST_F(RolloutSecurity, MaxNewTokensPastTheContextIsClippedAsSGLangDoes) {
  start({}, false);
  auto c = connect();
  auto info = c->get_model_info();
  ASSERT_TRUE(info.ok());
  auto r = req("huge", 1 << 30);
  r.sampling_params.ignore_eos = true;
  auto g = c->generate({r});
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  const MetaInfo& m = g->outputs[0].meta_info;
  EXPECT_EQ(m.finish_reason.type, FinishReason::Type::length);
  EXPECT_EQ(m.prompt_tokens + m.completion_tokens, info->context_length - 2);
  EXPECT_EQ(m.completion_tokens, generation_budget(m.prompt_tokens, info->context_length));

  nlohmann::json body = {{"req_id", 7},
                         {"rid", "none"},
                         {"input_ids", {1, 403, 407}},
                         {"sampling_params", {{"max_new_tokens", nullptr}, {"ignore_eos", true}, {"temperature", 0}}}};
  auto nil = c->call_raw("generate", wire::pack_body(body), {}, 7, 30s).get();
  ASSERT_TRUE(nil.ok()) << nil.status().to_string();
  ASSERT_EQ(nil->op, "generate.reply") << nil->json.dump();
  const auto& meta = nil->json["outputs"][0]["meta_info"];
  EXPECT_EQ(meta["completion_tokens"].get<int>(), info->context_length - 2 - 3);
  EXPECT_EQ(meta["finish_reason"]["type"], "length");

  body["rid"] = "minus-one";
  body["sampling_params"]["max_new_tokens"] = -1;
  std::string msg;
  EXPECT_EQ(code_of(*c, "generate", wire::pack_body(body), 7, &msg), "invalid_argument");
  EXPECT_EQ(msg.rfind("sampling_params.max_new_tokens:", 0), 0u) << msg;

  auto full = req("full", 5);  // no room for min_new_tokens: too_long, naming both
  full.input_ids.assign(info->context_length - 3, 403);
  full.sampling_params.min_new_tokens = 2;
  auto refused = c->generate({full});
  EXPECT_EQ(refused.status().code, ErrorCode::too_long);
  EXPECT_NE(refused.status().message.find("min_new_tokens"), std::string::npos) << refused.status().message;
}

// `zrollout router --curve-secret ...`: the router's own ROUTER checks roles the same way (one
// dispatch point), and it reaches a CURVE engine with a trainer key.
TEST_F(RolloutSecurity, RouterChecksRolesAndReachesAKeyedEngine) {
  start({}, true);  // the engine: CURVE, trainer key = keys_.trainer
  KeySet front;     // the router's own keys; its callers' keys are listed here
  RouterActorOptions ro;
  ro.curve = CurveServerKeys{front.server, {front.trainer.public_key}, {front.client.public_key}};
  ro.engine_curve_for = [this](const std::string&) { return CurveClientKeys{keys_.server.public_key, keys_.trainer}; };
  auto router = RouterActor::create(ctx_, {actor_->endpoint()}, ro);
  ASSERT_TRUE(router.ok()) << router.status().to_string();
  ASSERT_TRUE((*router)->bind("tcp://127.0.0.1:*").ok());
  (*router)->start();
  auto c = Client::connect((*router)->endpoint(), nullptr, front.as(front.client));
  auto t = Client::connect((*router)->endpoint(), nullptr, front.as(front.trainer));
  ASSERT_TRUE(c.ok() && t.ok());
  auto g = (*c)->generate({req("via-router", 3)});
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  EXPECT_EQ(g->outputs[0].output_ids.size(), 3u);
  auto f = (*c)->flush_cache();
  EXPECT_EQ(f.status().code, ErrorCode::permission_denied);
  EXPECT_NE(f.status().message.find("'flush_cache'"), std::string::npos);
  EXPECT_TRUE((*t)->flush_cache().ok());  // the trainer's call goes through to the engine (trainer key there too)
  (*router)->stop();
}

// A router in front of a CURVE engine talks to it with a trainer key, so the engine cannot tell its
// callers apart: the router itself lets a client key abort only its own requests.
TEST_F(RolloutSecurity, ThroughARouterAClientAbortsOnlyItsOwnRequests) {
  start({}, true);
  KeySet front;
  RouterActorOptions ro;
  ro.curve = CurveServerKeys{front.server, {front.trainer.public_key}, {front.client.public_key}};
  ro.engine_curve_for = [this](const std::string&) { return CurveClientKeys{keys_.server.public_key, keys_.trainer}; };
  auto router = RouterActor::create(ctx_, {actor_->endpoint()}, ro);
  ASSERT_TRUE(router.ok()) << router.status().to_string();
  ASSERT_TRUE((*router)->bind("tcp://127.0.0.1:*").ok());
  (*router)->start();
  auto at_router = [&](const CurveKeyPair& k) {
    auto c = Client::connect((*router)->endpoint(), nullptr, front.as(k));
    EXPECT_TRUE(c.ok());
    return std::move(c).value();
  };
  auto mine = at_router(front.client), theirs = at_router(front.client), trainer = at_router(front.trainer);
  check_client_aborts_only_its_own(*mine, *theirs, *trainer);
  (*router)->stop();
}

// The router's own limits (`zrollout router --max-in-flight ...`): behind a router every call
// reaches the engine on the router's one connection, so the per-caller cap is the router's.
TEST_F(RolloutSecurity, ARouterCapsWhatEachConnectionHasInFlight) {
  start({}, false);
  RouterActorOptions ro;
  ro.router.limits = CallLimits{2, 2, 2};  // prompts per call, n, in flight
  auto router = RouterActor::create(ctx_, {actor_->endpoint()}, ro);
  ASSERT_TRUE(router.ok()) << router.status().to_string();
  ASSERT_TRUE((*router)->bind("tcp://127.0.0.1:*").ok());
  (*router)->start();
  auto c = Client::connect((*router)->endpoint());
  auto other = Client::connect((*router)->endpoint());
  ASSERT_TRUE(c.ok() && other.ok());
  auto three = (*c)->generate({req("a", 1), req("b", 1), req("c", 1)});
  EXPECT_EQ(three.status().code, ErrorCode::invalid_argument);
  EXPECT_NE(three.status().message.find("--max-prompts-per-call 2"), std::string::npos) << three.status().message;
  auto wide = req("wide", 1);
  wide.sampling_params.n = 3;
  EXPECT_EQ((*c)->generate({wide}).status().code, ErrorCode::invalid_argument);
  auto long1 = req("long1", 500), long2 = req("long2", 500);
  long1.sampling_params.ignore_eos = long2.sampling_params.ignore_eos = true;
  auto busy = (*c)->generate_async({long1, long2});
  ASSERT_TRUE((*c)->health().ok());  // the router has counted them
  auto over = (*c)->generate({req("third", 1)});
  EXPECT_EQ(over.status().code, ErrorCode::unavailable);
  EXPECT_NE(over.status().message.find("--max-in-flight 2"), std::string::npos) << over.status().message;
  auto score = (*c)->score({ScoreRequest{"s", {1, 2}, {3}}});
  EXPECT_EQ(score.status().code, ErrorCode::unavailable);       // score counts too
  EXPECT_TRUE((*other)->generate({req("elsewhere", 1)}).ok());  // another connection has its own count
  ASSERT_TRUE((*c)->abort_all().ok());
  EXPECT_TRUE(busy.get().ok());
  EXPECT_TRUE((*c)->generate({req("after", 1), req("after2", 1)}).ok());  // the count went back down
  (*router)->stop();
}

}  // namespace
}  // namespace zr
