// CURVE on an actor's ROUTER: the context's ZAP handler admits only listed keys, the role travels
// as each message's User-Id, and the actor refuses ops beyond the role before any handler runs.
// Also ZMQ_MAXMSGSIZE. Over tcp://127.0.0.1 (inproc has no security handshake), so the waits are
// bounded in real time.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <msgpack.hpp>
#include <optional>

#include "runtime/actor.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using namespace std::chrono_literals;

CurveKeyPair keypair() {
  auto k = make_curve_keypair();
  EXPECT_TRUE(k.ok());
  return *k;
}

std::string body_with_req_id(uint64_t req_id) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(1);
  pk.pack(std::string("req_id"));
  pk.pack(req_id);
  return std::string(buf.data(), buf.size());
}

// A DEALER with (or without) a CURVE key, driven from the test thread.
class KeyedClient {
 public:
  KeyedClient(Context& ctx, const std::string& endpoint, const std::optional<CurveClientKeys>& keys)
      : sock_(ctx.zmq(), zmq::socket_type::dealer) {
    sock_.set(zmq::sockopt::linger, 0);
    if (keys) set_curve_client(sock_, *keys);
    sock_.connect(endpoint);
  }
  void send(std::string op, std::string body) {
    Frame f{"", std::move(op), std::move(body), {}};
    send_frame(sock_, false, f);
  }
  std::optional<Frame> recv_stepping(Actor& actor, Millis limit) {
    const TimePoint deadline = SteadyClock::now() + limit;
    Frame f;
    Status err;
    while (SteadyClock::now() < deadline) {
      if (recv_frame(sock_, false, f, err)) return f;
      actor.run_once(10ms);
    }
    return std::nullopt;
  }

 private:
  zmq::socket_t sock_;
};

std::string error_code_of(const Frame& f, std::string* message = nullptr) {
  msgpack::object_handle oh = msgpack::unpack(f.body.data(), f.body.size());
  auto m = oh.get().as<std::map<std::string, msgpack::object>>();
  if (message) *message = m.at("message").as<std::string>();
  return m.at("code").as<std::string>();
}

struct Keys {
  CurveKeyPair server = keypair(), trainer = keypair(), client = keypair(), stranger = keypair();
  CurveServerKeys server_keys() const { return {server, {trainer.public_key}, {client.public_key}}; }
  CurveClientKeys as(const CurveKeyPair& own) const { return {server.public_key, own}; }
};

// An actor with one client op ("generate") and one trainer op ("update_weights"); both record who
// called them, so a test sees that a refused op never reached its handler.
struct Fixture {
  Keys keys;
  Context ctx;
  std::optional<Actor> actor;
  std::vector<std::string> ran;  // "op:user_id" per handler call

  explicit Fixture(ActorOptions opt = {}) {
    opt.curve = keys.server_keys();
    actor.emplace(ctx, "guarded", opt);
    for (const char* op : {"generate", "update_weights"})
      actor->on(op, [this, op = std::string(op)](Frame& f, const ReplyTo& from) {
        ran.push_back(op + ":" + f.user_id);
        actor->send(from, op + ".reply", std::move(f.body));
      });
    EXPECT_TRUE(actor->bind("tcp://127.0.0.1:*").ok());
  }
};

TEST(ActorCurve, ClientRoleMayGenerateButNotUpdateWeights) {
  Fixture fx;
  KeyedClient c(fx.ctx, fx.actor->endpoint(), fx.keys.as(fx.keys.client));
  c.send("generate", body_with_req_id(1));
  auto r = c.recv_stepping(*fx.actor, 5000ms);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->op, "generate.reply");
  c.send("update_weights", body_with_req_id(2));
  r = c.recv_stepping(*fx.actor, 5000ms);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->op, "error");
  std::string msg;
  EXPECT_EQ(error_code_of(*r, &msg), "permission_denied");
  EXPECT_NE(msg.find("'update_weights'"), std::string::npos) << msg;
  EXPECT_EQ(fx.ran, std::vector<std::string>{"generate:client"});  // the refused op never ran
}

TEST(ActorCurve, TrainerRoleMayCallEverything) {
  Fixture fx;
  KeyedClient t(fx.ctx, fx.actor->endpoint(), fx.keys.as(fx.keys.trainer));
  for (const char* op : {"update_weights", "generate"}) {
    t.send(op, body_with_req_id(7));
    auto r = t.recv_stepping(*fx.actor, 5000ms);
    ASSERT_TRUE(r) << op;
    EXPECT_EQ(r->op, std::string(op) + ".reply");
  }
  // An op nobody handles is still unknown_op (not a permission question).
  t.send("no_such_op", body_with_req_id(8));
  auto r = t.recv_stepping(*fx.actor, 5000ms);
  ASSERT_TRUE(r);
  EXPECT_EQ(error_code_of(*r), "unknown_op");
  EXPECT_EQ(fx.ran, (std::vector<std::string>{"update_weights:trainer", "generate:trainer"}));
}

// A key in neither folder, or a peer without CURVE, gets no answer; the server keeps serving others.
TEST(ActorCurve, UnknownKeyGetsNoAnswerWhileOthersAreServed) {
  Fixture fx;
  KeyedClient stranger(fx.ctx, fx.actor->endpoint(), fx.keys.as(fx.keys.stranger));
  KeyedClient plain(fx.ctx, fx.actor->endpoint(), std::nullopt);
  KeyedClient wrong_server(fx.ctx, fx.actor->endpoint(), CurveClientKeys{fx.keys.client.public_key, fx.keys.client});
  stranger.send("generate", body_with_req_id(1));
  plain.send("generate", body_with_req_id(2));
  wrong_server.send("generate", body_with_req_id(3));
  KeyedClient good(fx.ctx, fx.actor->endpoint(), fx.keys.as(fx.keys.client));
  good.send("generate", body_with_req_id(4));
  auto r = good.recv_stepping(*fx.actor, 5000ms);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->op, "generate.reply");
  EXPECT_FALSE(stranger.recv_stepping(*fx.actor, 1500ms));
  EXPECT_FALSE(plain.recv_stepping(*fx.actor, 200ms));
  EXPECT_FALSE(wrong_server.recv_stepping(*fx.actor, 200ms));
  EXPECT_GE(fx.ctx.zap().denied(), 1u);  // the stranger's handshake reached ZAP and was refused
  EXPECT_EQ(fx.ran, std::vector<std::string>{"generate:client"});
  good.send("generate", body_with_req_id(5));  // still serving
  ASSERT_TRUE(good.recv_stepping(*fx.actor, 5000ms));
}

// Two CURVE servers in one context keep their own allow-lists (one ZAP domain each).
TEST(ActorCurve, AllowListsArePerServer) {
  Fixture a;
  Keys other;
  ActorOptions opt;
  opt.curve = other.server_keys();
  Actor b(a.ctx, "other", opt);
  b.on("generate", [&b](Frame& f, const ReplyTo& from) { b.send(from, "generate.reply", std::move(f.body)); });
  ASSERT_TRUE(b.bind("tcp://127.0.0.1:*").ok());
  // a's client key, with b's server key: b does not list it.
  KeyedClient c(a.ctx, b.endpoint(), CurveClientKeys{other.server.public_key, a.keys.client});
  c.send("generate", body_with_req_id(1));
  EXPECT_FALSE(c.recv_stepping(b, 1500ms));
  KeyedClient ok(a.ctx, b.endpoint(), other.as(other.client));
  ok.send("generate", body_with_req_id(2));
  ASSERT_TRUE(ok.recv_stepping(b, 5000ms));
}

// A router-style actor reaches a CURVE server through its peer DEALER with a trainer key.
TEST(ActorCurve, PeerDealerAuthenticatesWithItsKey) {
  Fixture fx;
  ActorOptions opt;
  opt.peer_curve = fx.keys.as(fx.keys.trainer);
  Actor caller(fx.ctx, "caller", opt);
  std::optional<std::string> got;
  caller.on("update_weights.reply", [&](Frame& f, const ReplyTo&) { got = f.op; });
  auto peer = caller.connect_peer(fx.actor->endpoint());
  ASSERT_TRUE(peer.ok());
  ASSERT_TRUE(caller.send_peer(*peer, "update_weights", body_with_req_id(3)).ok());
  const TimePoint deadline = SteadyClock::now() + 5000ms;
  while (!got && SteadyClock::now() < deadline) {
    fx.actor->run_once(5ms);
    caller.run_once(5ms);
  }
  EXPECT_EQ(got, "update_weights.reply");
  EXPECT_EQ(fx.ran, std::vector<std::string>{"update_weights:trainer"});
}

// ZMQ_MAXMSGSIZE: a part over the limit drops that connection (libzmq cannot answer it); others go on.
TEST(ActorLimits, OversizeMessageDropsOnlyThatConnection) {
  Context ctx;
  ActorOptions opt;
  opt.max_message_bytes = 64 << 10;
  Actor a(ctx, "limited", opt);
  int calls = 0;
  a.on("echo", [&](Frame& f, const ReplyTo& from) {
    ++calls;
    a.send(from, "echo.reply", std::move(f.body));
  });
  ASSERT_TRUE(a.bind("tcp://127.0.0.1:*").ok());
  KeyedClient big(ctx, a.endpoint(), std::nullopt);
  KeyedClient small(ctx, a.endpoint(), std::nullopt);
  big.send("echo", std::string(128 << 10, 'x'));
  EXPECT_FALSE(big.recv_stepping(a, 1000ms));
  small.send("echo", std::string(60 << 10, 'y'));
  auto r = small.recv_stepping(a, 5000ms);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body.size(), size_t(60 << 10));
  EXPECT_EQ(calls, 1);
}

// A field of /proc/self/status ("Threads", "VmRSS" in kB).
long proc_status(const std::string& field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  return -1;
}

// A raw TCP connection that completes a ZMTP 3.0 NULL handshake as a DEALER and then stays idle:
// what a crowd of idle clients costs the server, without a client-side libzmq socket each.
int zmtp_idle_connection(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return ::close(fd), -1;
  std::string greeting(64, '\0');
  greeting[0] = '\xff';
  greeting[9] = '\x7f';
  greeting[10] = 3;  // ZMTP 3.0
  greeting.replace(12, 4, "NULL");
  const std::string body = std::string("\x05READY") + "\x0bSocket-Type" + std::string("\0\0\0\x06", 4) + "DEALER";
  const std::string ready = std::string("\x04") + static_cast<char>(body.size()) + body;
  const std::string out = greeting + ready;
  if (::send(fd, out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size())) return ::close(fd), -1;
  // The server's greeting and READY: the connection is fully set up on its side.
  char buf[256];
  size_t got = 0;
  while (got < 64 + 2) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return ::close(fd), -1;
    got += static_cast<size_t>(n);
  }
  return fd;
}

// Thousands of idle connections cost the server no thread (libzmq's I/O thread multiplexes them;
// the actor's thread never sees an idle peer) and bounded memory. Measured: about 23 KiB each, most
// of it libzmq's: each connection's two pipes start with a 256-message queue chunk (16 KiB each,
// a compile-time constant of libzmq), of which a page or two is touched, plus the 8 KiB decoder
// and encoder buffers. The bound below is that with some slack, not "a few KiB".
TEST(ActorLimits, IdleConnectionsCostNoThreadAndLittleMemory) {
  constexpr int kConnections = 2000;
  Context ctx;
  Actor a(ctx, "crowded", ActorOptions{});
  a.on("echo", [&a](Frame& f, const ReplyTo& from) { a.send(from, "echo.reply", std::move(f.body)); });
  ASSERT_TRUE(a.bind("tcp://127.0.0.1:*").ok());
  const int port = std::stoi(a.endpoint().substr(a.endpoint().rfind(':') + 1));
  a.start();
  std::vector<int> fds;
  fds.push_back(zmtp_idle_connection(port));  // warm-up: the first connection allocates the engine's pools
  ASSERT_GE(fds.back(), 0);
  const long threads_before = proc_status("Threads"), rss_before = proc_status("VmRSS");
  for (int i = 1; i < kConnections; ++i) {
    int fd = zmtp_idle_connection(port);
    ASSERT_GE(fd, 0) << "connection " << i << ": " << std::strerror(errno);
    fds.push_back(fd);
  }
  const long threads_after = proc_status("Threads"), rss_after = proc_status("VmRSS");
  const double kib_each = static_cast<double>(rss_after - rss_before) / (kConnections - 1);
  std::printf("%d idle connections: threads %ld -> %ld, RSS %ld -> %ld KiB (%.1f KiB each)\n", kConnections,
              threads_before, threads_after, rss_before, rss_after, kib_each);
  EXPECT_EQ(threads_after, threads_before);
  if (!testing::kSanitized) {
    EXPECT_LT(kib_each, 32.0);  // ASan's allocator: ~53 KiB each
  }
  // Still serving a real client.
  zmq::socket_t c(ctx.zmq(), zmq::socket_type::dealer);
  c.set(zmq::sockopt::linger, 0);
  c.set(zmq::sockopt::rcvtimeo, 5000);
  c.connect(a.endpoint());
  Frame f{"", "echo", "hi", {}};
  send_frame(c, false, f);
  Frame r;
  Status err;
  ASSERT_TRUE(recv_frame(c, false, r, err, /*dontwait=*/false));
  EXPECT_EQ(r.op, "echo.reply");
  for (int fd : fds) ::close(fd);
  c.close();
  a.stop();
}

}  // namespace
}  // namespace zr
