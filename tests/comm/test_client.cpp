// Client against a tiny fake server (a ROUTER on its own thread) that answers with canned replies:
// sync and async calls, replies out of order, streams, errors, timeouts, abort, shutdown.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "comm/client.h"

namespace zr {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

// Replies the way docs/protocol.md says a server does. Rids steer it: "err*" -> an error reply,
// "slow*" -> held until op "release" or an abort of that rid, "hold-<n>*" -> held until n such
// calls arrived, then all answered in reverse order.
class FakeServer {
 public:
  FakeServer(zmq::context_t& ctx, const std::string& bind) : ctx_(ctx) {
    std::promise<std::string> ready;
    auto endpoint = ready.get_future();
    thread_ = std::thread([this, bind, &ready] { run(bind, ready); });
    endpoint_ = endpoint.get();
  }
  ~FakeServer() {
    stop_ = true;
    thread_.join();
  }
  const std::string& endpoint() const { return endpoint_; }
  std::vector<uint64_t> received() {
    std::lock_guard lock(mu_);
    return received_;
  }

 private:
  struct Held {
    std::string peer;
    GenerateCall call;
  };

  void run(const std::string& bind, std::promise<std::string>& ready) {
    zmq::socket_t router(ctx_, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.set(zmq::sockopt::sndhwm, 0);
    router.bind(bind);
    ready.set_value(router.get(zmq::sockopt::last_endpoint));
    while (!stop_) {
      zmq::pollitem_t item{router.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, 10ms);
      Frame f;
      Status err;
      while (recv_frame(router, true, f, err, true)) handle(router, f);
    }
  }

  void send(zmq::socket_t& s, const std::string& peer, const std::string& op, std::string body) {
    Frame out{peer, op, std::move(body), {}};
    send_frame(s, true, out);
  }

  void handle(zmq::socket_t& s, Frame& f) {
    {
      std::lock_guard lock(mu_);
      received_.push_back(wire::peek_req_id(f.body));
    }
    if (f.op == "generate") return on_generate(s, f);
    if (f.op == "release") {
      for (auto& h : slow_) reply_generate(s, h.peer, h.call, nullptr);
      slow_.clear();
      return send(s, f.routing_id, "release.reply", wire::encode_req_id_only(wire::peek_req_id(f.body)));
    }
    if (f.op == "abort") return on_abort(s, f);
    auto id = wire::decode_req_id_only(f.body);
    if (f.op == "score") {
      auto call = wire::decode_score(f.body);
      if (!call.ok()) return send(s, f.routing_id, "error", wire::error_body(wire::peek_req_id(f.body), call.status()));
      ScoreReply r{call->req_id, {}};
      for (const auto& q : call->batch)
        r.outputs.push_back(ScoreOutput{q.rid, std::vector<float>(q.completion_ids.size(), -0.5f), {}, 3});
      return send(s, f.routing_id, "score.reply", wire::encode(r));
    }
    if (f.op == "open_session" || f.op == "close_session") return on_session(s, f);
    if (!id.ok()) return send(s, f.routing_id, "error", wire::error_body(wire::peek_req_id(f.body), id.status()));
    if (f.op == "get_load")
      return send(s, f.routing_id, "get_load.reply", wire::encode(LoadReply{*id, 1, 2, 3, 4, 5.5}));
    if (f.op == "health") return send(s, f.routing_id, "health.reply", wire::encode(HealthReply{*id, "serving", 7}));
    if (f.op == "get_model_info")
      return send(s, f.routing_id, "get_model_info.reply",
                  wire::encode(ModelInfoReply{*id, "LlamaForCausalLM", 100, 64, 1, {2}, 0, 7, "/m"}));
    if (f.op == "flush_cache")
      return send(s, f.routing_id, "flush_cache.reply",
                  wire::encode_simple_reply("flush_cache", SimpleReply{*id, "", 42}));
    send(s, f.routing_id, "error",
         wire::error_body(*id, make_error(ErrorCode::unknown_op, "op: unknown '" + f.op + "'")));
  }

  void on_generate(zmq::socket_t& s, Frame& f) {
    auto call = wire::decode_generate(f.body);
    if (!call.ok()) return send(s, f.routing_id, "error", wire::error_body(wire::peek_req_id(f.body), call.status()));
    const std::string& rid = call->batch[0].rid;
    if (rid.rfind("err", 0) == 0)
      return send(s, f.routing_id, "error",
                  wire::error_body(call->req_id, make_error(ErrorCode::out_of_range,
                                                            "batch[0].input_ids[0]: 999 is not in the vocabulary")));
    if (rid.rfind("slow", 0) == 0) return slow_.push_back({f.routing_id, *call});
    if (rid.rfind("hold-", 0) == 0) {
      held_.push_back({f.routing_id, *call});
      if (held_.size() < std::stoul(rid.substr(5))) return;
      for (auto it = held_.rbegin(); it != held_.rend(); ++it) reply_generate(s, it->peer, it->call, nullptr);
      held_.clear();
      return;
    }
    reply_generate(s, f.routing_id, *call, nullptr);
  }

  // Streams three chunks per stream request, then the one final reply. `abort_message` set: the
  // outputs finish with abort.
  void reply_generate(zmq::socket_t& s, const std::string& peer, const GenerateCall& call,
                      const std::string* abort_message) {
    GenerateReply reply{call.req_id, {}};
    for (const auto& r : call.batch) {
      if (r.stream && !abort_message)
        for (int k = 0; k < 3; ++k)
          send(s, peer, "generate.chunk",
               wire::encode_chunk(call.req_id, StreamChunk{r.rid, 0, "t" + std::to_string(k), {k}, {}}));
      for (int i = 0; i < r.sampling_params.n; ++i) {
        SampleOutput o;
        o.rid = r.rid;
        o.index = i;
        o.text = "out:" + r.rid;
        o.output_ids.assign(r.input_ids.rbegin(), r.input_ids.rend());
        o.meta_info.id = r.rid;
        o.meta_info.finish_reason = abort_message ? FinishReason{FinishReason::Type::abort, {}, 0, *abort_message}
                                                  : FinishReason{FinishReason::Type::length, {}, 3, ""};
        reply.outputs.push_back(o);
      }
    }
    send(s, peer, "generate.reply", wire::encode(reply));
  }

  // Aborted requests answer their own generate call first (partial outputs, finish_reason abort).
  void on_abort(zmq::socket_t& s, Frame& f) {
    auto call = wire::decode_abort(f.body);
    if (!call.ok()) return send(s, f.routing_id, "error", wire::error_body(wire::peek_req_id(f.body), call.status()));
    AbortReply reply{call->req_id, {}};
    const std::string message = "aborted by the client";
    for (auto it = slow_.begin(); it != slow_.end();) {
      const std::string& rid = it->call.batch[0].rid;
      if (call->all || rid == call->rid || (!call->rid_prefix.empty() && rid.rfind(call->rid_prefix, 0) == 0)) {
        reply.aborted.push_back(rid);
        reply_generate(s, it->peer, it->call, &message);
        it = slow_.erase(it);
      } else {
        ++it;
      }
    }
    send(s, f.routing_id, "abort.reply", wire::encode(reply));
  }

  void on_session(zmq::socket_t& s, Frame& f) {
    bool open = f.op == "open_session";
    auto call = open ? wire::decode_open_session(f.body) : wire::decode_close_session(f.body);
    if (!call.ok()) return send(s, f.routing_id, "error", wire::error_body(wire::peek_req_id(f.body), call.status()));
    if (open) {
      std::string id = "sess-" + std::to_string(++sessions_);
      open_sessions_.insert(id);
      return send(s, f.routing_id, "open_session.reply",
                  wire::encode_simple_reply(f.op, SimpleReply{call->req_id, id, 0}));
    }
    if (!open_sessions_.erase(call->session_id))
      return send(s, f.routing_id, "error",
                  wire::error_body(call->req_id, make_error(ErrorCode::not_found,
                                                            "session_id: '" + call->session_id + "' is not open")));
    send(s, f.routing_id, "close_session.reply", wire::encode_simple_reply(f.op, SimpleReply{call->req_id, "", 0}));
  }

  zmq::context_t& ctx_;
  std::thread thread_;
  std::string endpoint_;
  std::atomic<bool> stop_{false};
  std::vector<Held> slow_, held_;
  std::set<std::string> open_sessions_;
  int sessions_ = 0;
  std::mutex mu_;
  std::vector<uint64_t> received_;
};

GenerateRequest req(const std::string& rid, std::vector<int> ids = {1, 2, 3}) {
  GenerateRequest r;
  r.rid = rid;
  r.input_ids = std::move(ids);
  return r;
}

struct Fixture {
  zmq::context_t ctx;
  FakeServer server{ctx, "inproc://fake-server"};
  std::unique_ptr<Client> client = std::move(Client::connect(server.endpoint(), &ctx).value());
};

TEST(Client, SyncGenerateOverInprocAndTcp) {
  zmq::context_t ctx;
  FakeServer inproc(ctx, "inproc://fake-sync");
  FakeServer tcp(ctx, "tcp://127.0.0.1:*");
  ASSERT_NE(tcp.endpoint().find("tcp://127.0.0.1:"), std::string::npos);
  auto a = Client::connect(inproc.endpoint(), &ctx);
  auto b =
      Client::connect(tcp.endpoint(), nullptr, Client::Options{wire::EncodeOptions{true}, {}});  // own context, bin ids
  ASSERT_TRUE(a.ok() && b.ok());
  for (Client* c : {a->get(), b->get()}) {
    GenerateRequest two = req("r2", {4, 5});
    two.sampling_params.n = 2;
    auto r = c->generate({req("r1"), two});
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_EQ(r->outputs.size(), 3u);
    EXPECT_EQ(r->outputs[0].rid, "r1");
    EXPECT_EQ(r->outputs[0].output_ids, (std::vector<int>{3, 2, 1}));
    EXPECT_EQ(r->outputs[2].index, 1);
    EXPECT_EQ(r->outputs[2].meta_info.finish_reason.type, FinishReason::Type::length);
  }
}

TEST(Client, AsyncCallsInFlightAreMatchedByReqId) {
  Fixture f;
  constexpr int kHeld = 32;
  std::vector<std::future<Result<GenerateReply>>> held;
  for (int i = 0; i < kHeld; ++i) held.push_back(f.client->generate_async({req("hold-32-" + std::to_string(i))}));
  for (int i = 0; i < kHeld; ++i) {  // answered in reverse order
    auto r = held[i].get();
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->outputs.at(0).rid, "hold-32-" + std::to_string(i));
  }
  // Many threads, many calls at once.
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::vector<std::pair<std::string, std::future<Result<GenerateReply>>>> calls;
      for (int i = 0; i < 100; ++i) {
        std::string rid = "t" + std::to_string(t) + "-" + std::to_string(i);
        calls.emplace_back(rid, f.client->generate_async({req(rid, {t, i})}));
      }
      for (auto& [rid, fut] : calls) {
        auto r = fut.get();
        if (r.ok() && r->outputs.at(0).rid == rid && r->outputs[0].output_ids.size() == 2) ++good;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 400);
}

TEST(Client, StreamCallbackSeesChunksInOrderBeforeTheReply) {
  Fixture f;
  std::vector<std::string> seen;  // written on the I/O thread, read after the future resolved
  auto r = f.client->generate_stream({req("a"), req("b")},
                                     [&](const StreamChunk& c) { seen.push_back(c.rid + ":" + c.text); });
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(seen, (std::vector<std::string>{"a:t0", "a:t1", "a:t2", "b:t0", "b:t1", "b:t2"}));
  EXPECT_EQ(r->outputs.size(), 2u);
  // A blocking call from the callback would deadlock: refused. An async one is fine.
  Status inner;
  std::future<Result<GenerateReply>> later;
  auto r2 = f.client->generate_stream({req("c")}, [&](const StreamChunk&) {
    if (inner.ok()) inner = f.client->health().status();
    if (!later.valid()) later = f.client->generate_async({req("from-callback")});
  });
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(inner.code, ErrorCode::invalid_argument);
  EXPECT_TRUE(later.get().ok());
}

TEST(Client, ErrorsResolveTheCallWithTheirStatus) {
  Fixture f;
  auto r = f.client->generate({req("err-1")});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code, ErrorCode::out_of_range);
  EXPECT_NE(r.status().message.find("batch[0].input_ids[0]"), std::string::npos);
  EXPECT_EQ(f.client->close_session("nope").code, ErrorCode::not_found);
  // Raw calls see the error frame itself: an undecodable body answers req_id 0.
  auto bad = f.client->call_raw("generate", "\xc1garbage", {}, 0).get();
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->op, "error");
  EXPECT_EQ(bad->json["code"], "bad_message");
  uint64_t id = f.client->next_req_id();
  auto unknown = f.client->call_raw("frobnicate", wire::encode_req_id_only(id), {}, id).get();
  ASSERT_TRUE(unknown.ok());
  EXPECT_EQ(wire::status_from_error_json(unknown->json).code, ErrorCode::unknown_op);
  auto schema =
      f.client
          ->call_raw("generate",
                     wire::pack_body(json{{"req_id", 5}, {"rid", "x"}, {"input_ids", {1}}, {"temprature", 1}}), {}, 5)
          .get();
  EXPECT_EQ(wire::status_from_error_json(schema->json).code, ErrorCode::invalid_argument);
  EXPECT_NE(schema->json["message"].get<std::string>().find("temprature"), std::string::npos);
  EXPECT_TRUE(f.client->generate({req("still-serving")}).ok());
}

TEST(Client, TimeoutResolvesAndTheLateReplyIsDropped) {
  Fixture f;
  auto r = f.client->generate({req("slow-1")}, 30ms);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code, ErrorCode::timeout);
  EXPECT_EQ(f.client->stats().dropped_replies, 0u);
  // The server now answers: the late generate.reply comes before release.reply on the same pipe.
  uint64_t id = f.client->next_req_id();
  auto release = f.client->call_raw("release", wire::encode_req_id_only(id), {}, id).get();
  ASSERT_TRUE(release.ok());
  EXPECT_EQ(release->op, "release.reply");
  EXPECT_EQ(f.client->stats().dropped_replies, 1u);
  EXPECT_TRUE(f.client->health().ok());
}

TEST(Client, AbortAnswersTheGenerateCallWithPartialOutputs) {
  Fixture f;
  // Calls from one thread reach the server in order: the abort never overtakes the generate.
  auto gen = f.client->generate_async({req("slow-a")});
  auto ab = f.client->abort("slow-a");
  ASSERT_TRUE(ab.ok()) << ab.status().to_string();
  EXPECT_EQ(ab->aborted, std::vector<std::string>{"slow-a"});
  auto r = gen.get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outputs.at(0).meta_info.finish_reason.type, FinishReason::Type::abort);
  EXPECT_EQ(r->outputs[0].meta_info.finish_reason.message, "aborted by the client");
  auto g1 = f.client->generate_async({req("slow-grp-1")});
  auto g2 = f.client->generate_async({req("slow-grp-2")});
  EXPECT_EQ(f.client->abort_prefix("slow-grp-")->aborted.size(), 2u);
  EXPECT_TRUE(g1.get().ok() && g2.get().ok());
  EXPECT_TRUE(f.client->abort_all()->aborted.empty());
  std::vector<uint64_t> ids = f.server.received();
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
}

// A blocking call made while the client is idle sends and waits on the caller's thread; calls from
// other threads meanwhile take the socket back through the I/O thread, and the blocked call still
// gets its own reply there.
TEST(Client, ABlockingCallHandsTheSocketOverWhenOtherCallsComeIn) {
  Fixture f;
  std::promise<Result<GenerateReply>> slow;
  std::thread waiter([&] { slow.set_value(f.client->generate({req("slow-h")})); });
  auto held = slow.get_future();
  while (f.server.received().empty()) std::this_thread::sleep_for(1ms);
  auto other = f.client->generate_async({req("other")});
  ASSERT_EQ(other.wait_for(5s), std::future_status::ready);  // sent and answered while slow-h waits
  EXPECT_EQ(other.get()->outputs.at(0).rid, "other");
  EXPECT_TRUE(f.client->health().ok());
  EXPECT_EQ(held.wait_for(0ms), std::future_status::timeout);
  EXPECT_EQ(f.client->abort("slow-h")->aborted, std::vector<std::string>{"slow-h"});
  auto r = held.get();
  waiter.join();
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->outputs.at(0).meta_info.finish_reason.type, FinishReason::Type::abort);
  // Blocking calls from many threads at once, mixed with async ones: each gets its own reply.
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        std::string rid = "b" + std::to_string(t) + "-" + std::to_string(i);
        auto got = t == 0 ? f.client->generate_async({req(rid, {t, i})}).get() : f.client->generate({req(rid, {t, i})});
        if (got.ok() && got->outputs.at(0).rid == rid && got->outputs[0].output_ids.size() == 2) ++good;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 400);
  EXPECT_EQ(f.client->stats().dropped_replies, 0u);
}

TEST(Client, OtherOpsDecodeTheirReplies) {
  Fixture f;
  auto load = f.client->get_load();
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->kv_blocks_total, 4);
  EXPECT_EQ(load->tokens_per_s, 5.5);
  EXPECT_EQ(f.client->health()->status, "serving");
  EXPECT_EQ(f.client->get_model_info()->vocab_size, 100);
  EXPECT_EQ(*f.client->flush_cache(), 42);
  auto s = f.client->open_session();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, "sess-1");
  EXPECT_TRUE(f.client->close_session(*s).ok());
  EXPECT_EQ(*f.client->open_session(), "sess-2");
  auto score = f.client->score({ScoreRequest{"s", {1, 2}, {3, 4, 5}}});
  ASSERT_TRUE(score.ok()) << score.status().to_string();
  EXPECT_EQ(score->outputs.at(0).logprobs, (std::vector<float>{-0.5f, -0.5f, -0.5f}));
}

TEST(Client, DestructionResolvesCallsInFlight) {
  zmq::context_t ctx;
  FakeServer server(ctx, "inproc://fake-destroy");
  auto client = std::move(Client::connect(server.endpoint(), &ctx).value());
  auto pending = client->generate_async({req("slow-z")}, Client::kNoTimeout);
  client.reset();
  auto r = pending.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code, ErrorCode::unavailable);
}

TEST(Client, ConnectToABadEndpointFails) {
  auto c = Client::connect("nonsense://x");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code, ErrorCode::unavailable);
}

}  // namespace
}  // namespace zr
