// Actor threads, stop() with clients waiting (on_stop replies, queued requests refused), the
// Context, and shutdown by SIGTERM. Waits on real threads are bounded; nothing sleeps for a result.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <optional>
#include <thread>
#include <type_traits>

#include "runtime/actor.h"
#include "runtime/signals.h"

namespace zr {
namespace {

using namespace std::chrono_literals;

class Client {
 public:
  Client(Context& ctx, const std::string& endpoint) : sock_(ctx.zmq(), zmq::socket_type::dealer) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.connect(endpoint);
  }
  void send(std::string op, std::string body) {
    Frame f{"", std::move(op), std::move(body), {}};
    send_frame(sock_, false, f);
  }
  std::optional<Frame> try_recv() {
    Frame f;
    Status err;
    if (!recv_frame(sock_, false, f, err)) return std::nullopt;
    EXPECT_TRUE(err.ok()) << err.to_string();
    return f;
  }
  // Waits (bounded) for a message sent by an actor thread.
  std::optional<Frame> recv_wait(Millis limit = 5000ms) {
    zmq::pollitem_t item{sock_.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, limit);
    return try_recv();
  }

 private:
  zmq::socket_t sock_;
};

// The shape of a rollout actor: "generate" is answered later; on_stop aborts what is in flight.
// All of this state belongs to the actor thread while it runs.
struct DeferringActor {
  explicit DeferringActor(Context& ctx, const std::string& endpoint) : actor(ctx, "rollout") {
    actor.on("generate", [this](Frame& f, const ReplyTo& from) { pending.push_back(from); });
    actor.set_on_stop([this] {
      for (const ReplyTo& to : pending) actor.send(to, "generate.reply", "aborted");
      pending.clear();
      on_stop_ran = true;
    });
    EXPECT_TRUE(actor.bind(endpoint).ok());
  }
  std::vector<ReplyTo> pending;
  bool on_stop_ran = false;
  Actor actor;  // last: destroyed (stopped) before the state its handlers use
};

// Sends a request, then a ping: the pong proves the actor thread has taken the request (one
// DEALER's messages arrive in order).
void send_and_sync(Client& c, const std::string& op) {
  c.send(op, "");
  c.send("ping", "sync");
  auto pong = c.recv_wait();
  ASSERT_TRUE(pong);
  EXPECT_EQ(pong->op, "pong");
}

TEST(RuntimeContext, IsMoveOnlyAndKeepsTheZmqContextInPlace) {
  static_assert(!std::is_copy_constructible_v<Context>);
  static_assert(!std::is_copy_assignable_v<Context>);
  static_assert(std::is_nothrow_move_constructible_v<Context>);
  Context c1;
  zmq::context_t* raw = &c1.zmq();
  Context c2(std::move(c1));
  EXPECT_EQ(&c2.zmq(), raw);
  Actor a(c2, "a");
  ASSERT_TRUE(a.bind("inproc://rt-ctx").ok());
}

TEST(RuntimeLifecycle, ThreadServesUntilStopped) {
  Context ctx;
  Actor a(ctx, "echo");
  a.on("echo", [&a](Frame& f, const ReplyTo& from) { a.send(from, "echo.reply", std::move(f.body)); });
  ASSERT_TRUE(a.bind("inproc://rt-thread").ok());
  Client c(ctx, a.endpoint());
  a.start();
  EXPECT_TRUE(a.running());
  for (int i = 0; i < 3; ++i) {
    c.send("echo", std::to_string(i));
    auto r = c.recv_wait();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, std::to_string(i));
  }
  a.stop();
  EXPECT_FALSE(a.running());
  EXPECT_TRUE(a.stopped());
  a.stop();  // idempotent
}

TEST(RuntimeLifecycle, StopWhileAClientWaitsLetsOnStopReply) {
  Context ctx;
  DeferringActor d(ctx, "inproc://rt-stop-wait");
  Client c(ctx, d.actor.endpoint());
  d.actor.start();
  send_and_sync(c, "generate");
  EXPECT_FALSE(c.try_recv());  // still in flight
  d.actor.stop();
  EXPECT_TRUE(d.on_stop_ran);
  auto r = c.recv_wait();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->op, "generate.reply");
  EXPECT_EQ(r->body, "aborted");
}

TEST(RuntimeLifecycle, StopWithoutThreadRunsOnStopThenRefusesQueuedRequests) {
  Context ctx;
  DeferringActor d(ctx, "inproc://rt-stop-queued");
  Client c(ctx, d.actor.endpoint());
  c.send("generate", "");
  d.actor.run_once();
  c.send("generate", "");  // never taken
  d.actor.stop();
  auto aborted = c.try_recv();
  ASSERT_TRUE(aborted);
  EXPECT_EQ(aborted->op, "generate.reply");
  auto refused = c.try_recv();
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->op, "error");
  EXPECT_NE(refused->body.find("unavailable"), std::string::npos);
  EXPECT_NE(refused->body.find("shutting down"), std::string::npos);
}

TEST(RuntimeLifecycle, DestructorStopsTheThread) {
  Context ctx;
  bool on_stop_ran = false;
  {
    Actor a(ctx, "scoped");
    a.set_on_stop([&] { on_stop_ran = true; });
    a.start();
  }
  EXPECT_TRUE(on_stop_ran);
}

// A worker thread's wake() gets an idle actor (no timers: it would wait forever) to run its tick.
TEST(RuntimeLifecycle, WakeFromAnotherThreadRunsTheTick) {
  Context ctx;
  std::atomic<int> ticks{0};
  std::atomic<bool> work{false}, done{false};
  Actor a(ctx, "woken");
  a.set_tick([&] {
    ticks.fetch_add(1);
    if (work.exchange(false)) done = true;
    return false;  // nothing more now: the loop sleeps until something arrives
  });
  a.start();
  std::this_thread::sleep_for(50ms);
  const int idle_ticks = ticks.load();
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(ticks.load(), idle_ticks);  // asleep, not spinning
  std::thread worker([&] {
    work = true;
    a.wake();
  });
  worker.join();
  const TimePoint deadline = SteadyClock::now() + 5s;
  while (!done && SteadyClock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(done.load());
  a.stop();
}

TEST(RuntimeLifecycle, TimersFireOnTheActorThread) {
  Context ctx;
  std::atomic<int> fired{0};
  Actor a(ctx, "timed");
  a.add_timer(2ms, [&] { fired.fetch_add(1); });
  a.start();
  const TimePoint deadline = SteadyClock::now() + 5s;
  while (fired.load() < 3 && SteadyClock::now() < deadline) std::this_thread::sleep_for(1ms);
  a.stop();
  EXPECT_GE(fired.load(), 3);
}

TEST(RuntimeSignals, RaisedSigtermWakesTheWaiter) {
  install_shutdown_signals();
  EXPECT_EQ(wait_for_shutdown_signal(0ms), std::nullopt);
  raise(SIGTERM);
  EXPECT_EQ(wait_for_shutdown_signal(5000ms), SIGTERM);
  raise(SIGINT);
  EXPECT_EQ(wait_for_shutdown_signal(), SIGINT);
  EXPECT_EQ(wait_for_shutdown_signal(1ms), std::nullopt);  // consumed
}

TEST(RuntimeSignals, ServeShutsDownOnSigtermAndRepliesToWaitingClients) {
  install_shutdown_signals();  // before any thread, as zrollout serve does
  Context ctx;
  DeferringActor d(ctx, "inproc://rt-serve");
  Client c(ctx, d.actor.endpoint());
  d.actor.start();
  send_and_sync(c, "generate");
  std::thread killer([] { ::kill(::getpid(), SIGTERM); });  // process-directed, like `kill`
  auto sig = wait_for_shutdown_signal(5000ms);
  killer.join();
  EXPECT_EQ(sig, SIGTERM);
  d.actor.stop();
  auto r = c.recv_wait();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "aborted");
}

}  // namespace
}  // namespace zr
