// Actor dispatch, error replies, deferred and streamed replies, tick, timers and peers. Actors are
// stepped by hand with run_once() over inproc:// (deterministic, no sleeps); tcp and ipc use
// bounded waits because their connections are made by ZeroMQ's I/O thread.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <msgpack.hpp>
#include <optional>
#include <stdexcept>

#include "comm/wire_codec.h"
#include "runtime/actor.h"

namespace zr {
namespace {

using namespace std::chrono_literals;

// A client: a DEALER driven from the test thread.
class Client {
 public:
  Client(Context& ctx, const std::string& endpoint) : sock_(ctx.zmq(), zmq::socket_type::dealer) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.connect(endpoint);
  }
  void send(std::string op, std::string body, std::vector<zmq::message_t> bulk = {}) {
    Frame f{"", std::move(op), std::move(body), std::move(bulk)};
    send_frame(sock_, false, f);
  }
  void send_raw(const std::string& single_part) { sock_.send(zmq::buffer(single_part)); }
  std::optional<Frame> try_recv() {
    Frame f;
    Status err;
    if (!recv_frame(sock_, false, f, err)) return std::nullopt;
    EXPECT_TRUE(err.ok()) << err.to_string();
    return f;
  }
  // Steps `actor` until a message arrives; bounded real time (tcp/ipc connect asynchronously).
  std::optional<Frame> recv_stepping(Actor& actor, Millis limit = 5000ms) {
    const TimePoint deadline = SteadyClock::now() + limit;
    while (SteadyClock::now() < deadline) {
      if (auto f = try_recv()) return f;
      actor.run_once(10ms);
    }
    return try_recv();
  }

 private:
  zmq::socket_t sock_;
};

std::string body_with_req_id(uint64_t req_id) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(1);
  pk.pack(std::string("req_id"));
  pk.pack(req_id);
  return std::string(buf.data(), buf.size());
}

struct ErrorFields {
  uint64_t req_id = 0;
  std::string code;
  std::string message;
};

ErrorFields decode_error(const Frame& f) {
  EXPECT_EQ(f.op, "error");
  msgpack::object_handle oh = msgpack::unpack(f.body.data(), f.body.size());
  auto m = oh.get().as<std::map<std::string, msgpack::object>>();
  return {m.at("req_id").as<uint64_t>(), m.at("code").as<std::string>(), m.at("message").as<std::string>()};
}

// An actor that answers "echo" with "echo.reply" (same body and bulk frames).
void add_echo(Actor& a) {
  a.on("echo",
       [&a](Frame& f, const ReplyTo& from) { a.send(from, "echo.reply", std::move(f.body), std::move(f.bulk)); });
}

void expect_echo_roundtrip(const std::string& bind_endpoint) {
  Context ctx;
  Actor a(ctx, "echo");
  add_echo(a);
  ASSERT_TRUE(a.bind(bind_endpoint).ok());
  EXPECT_EQ(a.endpoint().find('*'), std::string::npos) << a.endpoint();
  EXPECT_EQ(a.endpoint().find(":0"), std::string::npos) << a.endpoint();
  Client c(ctx, a.endpoint());
  c.send("echo", "hello");
  auto r = c.recv_stepping(a);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->op, "echo.reply");
  EXPECT_EQ(r->body, "hello");
}

TEST(RuntimeActor, DispatchesByOpOverInproc) {
  Context ctx;
  Actor a(ctx, "echo");
  add_echo(a);
  a.on("upper", [&a](Frame& f, const ReplyTo& from) { a.send(from, "upper.reply", "HELLO"); });
  ASSERT_TRUE(a.bind("inproc://rt-dispatch").ok());
  EXPECT_EQ(a.endpoint(), "inproc://rt-dispatch");
  Client c(ctx, a.endpoint());
  std::vector<zmq::message_t> bulk;
  bulk.emplace_back(std::string("tensor-bytes"));
  bulk.emplace_back(std::string("more"));
  c.send("echo", "hello", std::move(bulk));
  c.send("upper", "hello");
  EXPECT_TRUE(a.run_once());
  auto r1 = c.try_recv();
  auto r2 = c.try_recv();
  ASSERT_TRUE(r1 && r2);
  EXPECT_EQ(r1->op, "echo.reply");
  EXPECT_EQ(r1->body, "hello");
  ASSERT_EQ(r1->bulk.size(), 2u);
  EXPECT_EQ(r1->bulk[0].to_string(), "tensor-bytes");
  EXPECT_EQ(r1->bulk[1].to_string(), "more");
  EXPECT_EQ(r2->op, "upper.reply");
  EXPECT_EQ(r2->body, "HELLO");
  EXPECT_FALSE(a.run_once());  // idle
}

TEST(RuntimeActor, DispatchesOverTcpLoopbackWildcardPort) { expect_echo_roundtrip("tcp://127.0.0.1:*"); }

TEST(RuntimeActor, DispatchesOverTcpLoopbackPortZero) { expect_echo_roundtrip("tcp://127.0.0.1:0"); }

TEST(RuntimeActor, DispatchesOverIpc) {
  const std::string path = "/tmp/zr-runtime-test-" + std::to_string(::getpid()) + ".sock";
  expect_echo_roundtrip("ipc://" + path);
  std::filesystem::remove(path);
}

TEST(RuntimeActor, BindErrorsAreStatusValues) {
  Context ctx;
  Actor a(ctx, "a");
  Actor b(ctx, "b");
  Status bad = a.bind("nonsense://x");
  EXPECT_EQ(bad.code, ErrorCode::invalid_argument) << bad.to_string();
  ASSERT_TRUE(a.bind("tcp://127.0.0.1:*").ok());
  Status in_use = b.bind(a.endpoint());
  EXPECT_EQ(in_use.code, ErrorCode::unavailable) << in_use.to_string();
  EXPECT_NE(in_use.message.find(a.endpoint()), std::string::npos);
  EXPECT_FALSE(a.connect_peer("nonsense://x").ok());
}

TEST(RuntimeActor, UnknownOpGetsErrorAndActorKeepsServing) {
  Context ctx;
  Actor a(ctx, "echo");
  add_echo(a);
  ASSERT_TRUE(a.bind("inproc://rt-unknown").ok());
  Client c(ctx, a.endpoint());
  c.send("no_such_op", body_with_req_id(7));
  c.send("echo", "still here");
  a.run_once();
  auto err = c.try_recv();
  ASSERT_TRUE(err);
  ErrorFields e = decode_error(*err);
  EXPECT_EQ(e.req_id, 7u);
  EXPECT_EQ(e.code, "unknown_op");
  EXPECT_NE(e.message.find("no_such_op"), std::string::npos);
  auto ok = c.try_recv();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->body, "still here");
}

TEST(RuntimeActor, MalformedFrameGetsErrorAndActorKeepsServing) {
  Context ctx;
  Actor a(ctx, "echo");
  add_echo(a);
  ASSERT_TRUE(a.bind("inproc://rt-malformed").ok());
  Client c(ctx, a.endpoint());
  c.send_raw("only-one-part");
  c.send("echo", "after");
  a.run_once();
  auto err = c.try_recv();
  ASSERT_TRUE(err);
  ErrorFields e = decode_error(*err);
  EXPECT_EQ(e.code, "bad_message");
  EXPECT_EQ(e.req_id, 0u);
  auto ok = c.try_recv();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->body, "after");
}

TEST(RuntimeActor, ThrowingHandlerGetsInternalErrorAndActorKeepsServing) {
  Context ctx;
  Actor a(ctx, "echo");
  add_echo(a);
  a.on("boom", [](Frame&, const ReplyTo&) { throw std::runtime_error("kaput"); });
  ASSERT_TRUE(a.bind("inproc://rt-throw").ok());
  Client c(ctx, a.endpoint());
  c.send("boom", body_with_req_id(3));
  c.send("echo", "after");
  a.run_once();
  auto err = c.try_recv();
  ASSERT_TRUE(err);
  ErrorFields e = decode_error(*err);
  EXPECT_EQ(e.code, "internal");
  EXPECT_EQ(e.req_id, 3u);
  EXPECT_NE(e.message.find("kaput"), std::string::npos);
  auto ok = c.try_recv();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->body, "after");
}

// on<Request, Reply>: the body is decoded by type, a body that does not decode and an error the
// handler returns are answered with the request's req_id, a value as "<op>.reply".
TEST(RuntimeActor, TypedHandlerDecodesRepliesAndAnswersErrorsWithTheRequestId) {
  Context ctx;
  Actor a(ctx, "typed");
  int calls = 0;
  a.on<TokenizeCall, TokenizeReply>("tokenize", [&calls](TokenizeCall& c, const ReplyTo&) -> Result<TokenizeReply> {
    ++calls;
    if (c.text == "bad") return make_error(ErrorCode::invalid_argument, "text: bad");
    return TokenizeReply{c.req_id, {static_cast<int>(c.text.size())}};
  });
  ASSERT_TRUE(a.bind("inproc://rt-typed").ok());
  Client c(ctx, a.endpoint());
  c.send("tokenize", body_with_req_id(9));  // no text: does not decode
  c.send("tokenize", wire::encode(TokenizeCall{5, "bad", false}));
  c.send("tokenize", wire::encode(TokenizeCall{6, "four", false}));
  a.run_once();
  auto undecodable = c.try_recv();
  ASSERT_TRUE(undecodable);
  ErrorFields e = decode_error(*undecodable);
  EXPECT_EQ(e.req_id, 9u);
  EXPECT_NE(e.message.find("text"), std::string::npos) << e.message;
  auto refused = c.try_recv();
  ASSERT_TRUE(refused);
  e = decode_error(*refused);
  EXPECT_EQ(e.req_id, 5u);
  EXPECT_EQ(e.code, "invalid_argument");
  auto ok = c.try_recv();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->op, "tokenize.reply");
  msgpack::object_handle oh = msgpack::unpack(ok->body.data(), ok->body.size());
  auto m = oh.get().as<std::map<std::string, msgpack::object>>();
  EXPECT_EQ(m.at("req_id").as<uint64_t>(), 6u);
  EXPECT_EQ(m.at("input_ids").as<std::vector<int>>(), std::vector<int>{4});
  EXPECT_EQ(calls, 2) << "a body that does not decode never reaches the handler";
}

TEST(RuntimeActor, ErrorHooksShapeTheErrorBody) {
  Context ctx;
  Actor a(ctx, "a");
  a.set_req_id_of([](std::string_view body) -> uint64_t { return body.size(); });
  a.set_error_body(
      [](uint64_t req_id, const Status& st) { return "E" + std::to_string(req_id) + ":" + error_code_name(st.code); });
  ASSERT_TRUE(a.bind("inproc://rt-hooks").ok());
  Client c(ctx, a.endpoint());
  c.send("nope", "12345");
  a.run_once();
  auto err = c.try_recv();
  ASSERT_TRUE(err);
  EXPECT_EQ(err->op, "error");
  EXPECT_EQ(err->body, "E5:unknown_op");
}

TEST(RuntimeActor, PingIsAnsweredWithPong) {
  Context ctx;
  Actor a(ctx, "a");
  ASSERT_TRUE(a.bind("inproc://rt-ping").ok());
  Client c(ctx, a.endpoint());
  c.send("ping", "seq-9");
  a.run_once();
  auto r = c.try_recv();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->op, "pong");
  EXPECT_EQ(r->body, "seq-9");
}

TEST(RuntimeActor, DeferredReplyFromALaterTickReachesTheRightClient) {
  Context ctx;
  Actor a(ctx, "rollout");
  std::vector<std::pair<ReplyTo, std::string>> pending;  // actor state
  int ticks = 0;
  a.on("work", [&](Frame& f, const ReplyTo& from) { pending.emplace_back(from, std::move(f.body)); });
  a.set_tick([&] {
    if (pending.empty()) return false;
    if (++ticks < 3) return true;  // "generation" takes three steps
    for (auto& [to, body] : pending) a.send(to, "work.reply", "done:" + body);
    pending.clear();
    return false;
  });
  ASSERT_TRUE(a.bind("inproc://rt-deferred").ok());
  Client c1(ctx, a.endpoint());
  Client c2(ctx, a.endpoint());
  c1.send("work", "one");
  c2.send("work", "two");
  EXPECT_TRUE(a.run_once());  // both requests taken, tick 1
  EXPECT_FALSE(c1.try_recv() || c2.try_recv());
  EXPECT_TRUE(a.run_once());  // tick 2
  EXPECT_FALSE(c1.try_recv() || c2.try_recv());
  EXPECT_FALSE(a.run_once());  // tick 3 replies; nothing left
  auto r1 = c1.try_recv();
  auto r2 = c2.try_recv();
  ASSERT_TRUE(r1 && r2);
  EXPECT_EQ(r1->body, "done:one");
  EXPECT_EQ(r2->body, "done:two");
}

TEST(RuntimeActor, StreamsSeveralRepliesToOneRequest) {
  Context ctx;
  Actor a(ctx, "rollout");
  std::optional<ReplyTo> streaming;
  int sent = 0;
  a.on("generate", [&](Frame&, const ReplyTo& from) { streaming = from; });
  a.set_tick([&] {
    if (!streaming) return false;
    if (sent < 3) {
      a.send(*streaming, "generate.chunk", "chunk" + std::to_string(sent++));
      return true;
    }
    a.send(*streaming, "generate.reply", "final");
    streaming.reset();
    return false;
  });
  ASSERT_TRUE(a.bind("inproc://rt-stream").ok());
  Client c(ctx, a.endpoint());
  c.send("generate", "");
  while (a.run_once()) {}
  std::vector<std::string> got;
  while (auto f = c.try_recv()) got.push_back(f->op + "/" + f->body);
  EXPECT_EQ(got, (std::vector<std::string>{"generate.chunk/chunk0", "generate.chunk/chunk1", "generate.chunk/chunk2",
                                           "generate.reply/final"}));
}

TEST(RuntimeActor, TickWithMoreWorkDoesNotWait) {
  Context ctx;
  Actor a(ctx, "busy");
  int steps = 0;
  a.set_tick([&] { return ++steps < 5; });
  a.run_once();  // first tick: more work
  const TimePoint t0 = SteadyClock::now();
  while (a.run_once(Millis{60000})) {}
  EXPECT_EQ(steps, 5);
  EXPECT_LT(SteadyClock::now() - t0, 30s);  // a blocking poll would have waited a minute per call
}

TEST(RuntimeActor, MaxBatchLetsTickRunBetweenBatches) {
  Context ctx;
  Actor a(ctx, "a", ActorOptions{.max_batch = 2});
  int handled = 0;
  std::vector<int> handled_at_tick;
  a.on("req", [&](Frame&, const ReplyTo&) { ++handled; });
  a.set_tick([&] {
    handled_at_tick.push_back(handled);
    return false;
  });
  ASSERT_TRUE(a.bind("inproc://rt-batch").ok());
  Client c(ctx, a.endpoint());
  for (int i = 0; i < 5; ++i) c.send("req", "");
  while (a.run_once()) {}
  EXPECT_EQ(handled, 5);
  EXPECT_EQ(handled_at_tick, (std::vector<int>{2, 4, 5, 5}));
}

TEST(RuntimeActor, TimersFireOnAFakeClock) {
  TimePoint t = TimePoint{} + 1h;
  Context ctx;
  Actor a(ctx, "timed", ActorOptions{.clock = [&] { return t; }});
  int fired = 0;
  TimerId id = a.add_timer(100ms, [&] { ++fired; });
  a.run_once();
  EXPECT_EQ(fired, 0);
  t += 99ms;
  a.run_once();
  EXPECT_EQ(fired, 0);
  t += 1ms;
  EXPECT_TRUE(a.run_once());
  EXPECT_EQ(fired, 1);
  EXPECT_FALSE(a.run_once());  // not twice for one period
  t += 250ms;                  // 350: one fire, the missed period is skipped, next at 450
  a.run_once();
  EXPECT_EQ(fired, 2);
  t += 99ms;
  a.run_once();
  EXPECT_EQ(fired, 2);
  t += 1ms;
  a.run_once();
  EXPECT_EQ(fired, 3);
  a.cancel_timer(id);
  t += 1s;
  a.run_once();
  EXPECT_EQ(fired, 3);
}

TEST(RuntimeActor, TimerMayCancelItselfAndAddAnother) {
  TimePoint t = TimePoint{} + 1h;
  Context ctx;
  Actor a(ctx, "timed", ActorOptions{.clock = [&] { return t; }});
  int once = 0, later = 0;
  TimerId id = 0;
  id = a.add_timer(10ms, [&] {
    ++once;
    a.cancel_timer(id);
    a.add_timer(20ms, [&] { ++later; });
  });
  for (int i = 0; i < 10; ++i) {
    t += 10ms;
    a.run_once();
  }
  EXPECT_EQ(once, 1);
  EXPECT_EQ(later, 4);  // added at 10ms; fires at 30, 50, 70, 90
}

TEST(RuntimeActor, LoggerNamesActorAndRank) {
  Context ctx;
  Actor a(ctx, "rollout", ActorOptions{.rank = 3});
  EXPECT_EQ(a.log().name(), "rollout@rank3");
  a.log().info("hello from the test");
}

TEST(RuntimePeer, RequestAndReplyBetweenActors) {
  Context ctx;
  Actor server(ctx, "server");
  server.on("add", [&](Frame& f, const ReplyTo& from) { server.send(from, "add.reply", f.body + "+1"); });
  ASSERT_TRUE(server.bind("inproc://rt-peer").ok());
  Actor caller(ctx, "caller");
  auto peer = caller.connect_peer(server.endpoint());
  ASSERT_TRUE(peer.ok());
  std::string got;
  caller.on("add.reply", [&](Frame& f, const ReplyTo& from) {
    EXPECT_EQ(from.peer, *peer);
    got = f.body;
  });
  ASSERT_TRUE(caller.send_peer(*peer, "add", "41").ok());
  server.run_once();
  caller.run_once();
  EXPECT_EQ(got, "41+1");
}

TEST(RuntimePeer, ErrorsAreNeverAnsweredWithErrors) {
  Context ctx;
  Actor server(ctx, "server");
  server.on("weird", [&](Frame&, const ReplyTo& from) { server.send(from, "unexpected.reply", ""); });
  ASSERT_TRUE(server.bind("inproc://rt-noloop").ok());
  Actor caller(ctx, "caller");
  PeerId peer = *caller.connect_peer(server.endpoint());
  caller.send_peer(peer, "no_such_op", "");  // the server answers "error"
  caller.send_peer(peer, "weird", "");       // the server answers an op the caller does not know
  EXPECT_TRUE(server.run_once());
  EXPECT_TRUE(caller.run_once());   // both replies dropped with a warning, not answered
  EXPECT_FALSE(server.run_once());  // so nothing bounces back
  EXPECT_FALSE(caller.run_once());
}

TEST(RuntimePeer, WatchedPeerDiesThenReconnectsWithBackoff) {
  TimePoint t = TimePoint{} + 1h;
  auto clock = [&] { return t; };
  Context ctx;
  Actor server(ctx, "server", ActorOptions{.clock = clock});
  ASSERT_TRUE(server.bind("inproc://rt-watch").ok());
  Actor watcher(ctx, "watcher", ActorOptions{.clock = clock});
  PeerId peer = *watcher.connect_peer(server.endpoint());
  std::vector<PeerId> dead;
  watcher.watch_peer(
      peer, [&](PeerId p) { dead.push_back(p); }, LivenessConfig{3, 100ms, 100ms, 400ms});

  auto exchange = [&] {  // the watcher pings when due and the server answers
    watcher.run_once();
    server.run_once();
    watcher.run_once();
  };
  for (int i = 0; i < 5; ++i) {  // answered heartbeats keep the peer alive
    t += 100ms;
    exchange();
  }
  EXPECT_TRUE(dead.empty());
  for (int i = 0; i < 3; ++i) {  // the server goes silent for three intervals
    EXPECT_TRUE(watcher.peer_connected(peer));
    t += 100ms;
    watcher.run_once();
  }
  EXPECT_EQ(dead, std::vector<PeerId>{peer});
  EXPECT_FALSE(watcher.peer_connected(peer));
  EXPECT_FALSE(watcher.send_peer(peer, "x", "").ok());
  t += 99ms;
  watcher.run_once();
  EXPECT_FALSE(watcher.peer_connected(peer));
  t += 1ms;  // first backoff: 100ms
  watcher.run_once();
  EXPECT_TRUE(watcher.peer_connected(peer));
  for (int i = 0; i < 3; ++i) {  // still silent: dead again
    t += 100ms;
    watcher.run_once();
  }
  EXPECT_EQ(dead.size(), 2u);
  t += 199ms;  // second backoff: 200ms
  watcher.run_once();
  EXPECT_FALSE(watcher.peer_connected(peer));
  t += 1ms;
  watcher.run_once();
  EXPECT_TRUE(watcher.peer_connected(peer));
  while (server.run_once()) {  // the server answers again (stale pings included)
  }
  for (int i = 0; i < 5; ++i) {
    t += 100ms;
    exchange();
  }
  EXPECT_EQ(dead.size(), 2u);
}

}  // namespace
}  // namespace zr
