// An actor: state plus a dispatch table from op (comm/frame.h) to handler, served by ONE thread that
// owns all of the actor's sockets: a ROUTER that clients and other actors call (bind), DEALER
// "peers" through which it calls other actors (connect_peer), and an inproc control pair that wakes
// it for stop(). The runtime knows no message schema: bodies are opaque msgpack bytes.
//
// Each loop iteration (run_once): poll the sockets (timeout 0 if the last tick had more work, else
// until a message, the next timer or heartbeat) -> dispatch every ready message (at most
// ActorOptions::max_batch per socket, so tick runs under load) -> fire due timers -> heartbeat
// watched peers -> tick(). A rollout actor runs one engine step per tick and returns true while it
// has sequences in flight.
//
// Replies. A handler gets the request Frame and a ReplyTo (where it came from). It may reply at once
// or keep the ReplyTo (a copyable value) and send any number of messages to it later from the actor
// thread: from a later tick (deferred reply), several chunks (stream), or from on_stop.
//
// Bad input never kills the actor: on the ROUTER, a malformed frame, an unknown op, a handler that
// throws, or a request still queued at stop gets op "error" with body error_body(req_id, status)
// (default: runtime/error_reply.h). An incoming "error" is never answered with an "error". On a peer
// (replies to our own calls), such messages are logged and dropped.
//
// Roles: on the ROUTER, before any handler runs, the op is checked against the CURVE role of the
// connection it came in on (comm/curve_keys.h authorize_op); a refused op gets `permission_denied`
// and its handler never runs. Connections without CURVE have no role and are not checked.
//
// Built-in ops (on() may replace them): "ping" -> "pong" with the same body, on any socket;
// "pong" -> nothing (any message from a watched peer counts as a heartbeat).
//
// Threading. Configure (bind, connect_peer, watch_peer, on, set_*, add_timer) on the constructing
// thread, then either start() the actor thread or drive the actor with run_once() from the
// constructing thread (tests step actors by hand). Between start() and the return of stop(), only the
// actor thread may call methods (handlers, timers, tick and on_stop run there and may call anything
// but start/stop). start(), stop() and the destructor belong to the owner thread. Violations abort
// (ZR_CHECK). Sockets move between threads only at start() and stop()'s join, as ZeroMQ allows.
// name(), log(), now() and endpoint() may be called from any thread (endpoint() does not change
// once the thread runs, since bind() is then refused).
//
// Ownership: the Actor owns its sockets and its thread; the Context must outlive it. Not copyable or
// movable: its thread holds `this`.
#pragma once

#include <spdlog/logger.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "comm/curve_keys.h"
#include "comm/frame.h"
#include "comm/hop_trace.h"
#include "comm/status.h"
#include "comm/wire_typed.h"
#include "runtime/clock.h"
#include "runtime/context.h"
#include "runtime/liveness.h"

namespace zr {

using PeerId = size_t;  // index of a peer of one actor, from connect_peer
using TimerId = uint64_t;

// Where a message came from, hence where its replies go. Copy it to reply later.
struct ReplyTo {
  static constexpr PeerId kRouter = std::numeric_limits<PeerId>::max();
  PeerId peer = kRouter;   // kRouter: the actor's ROUTER socket; else the DEALER of that peer
  std::string routing_id;  // the requester, on the ROUTER
  // The CURVE role of the requester's connection (Frame::user_id: "client" / "trainer"; "" without
  // CURVE or on a peer), for handlers whose behaviour depends on it (limits, whose requests an
  // abort may touch). Permission checks do not belong here: Actor::dispatch makes them.
  std::string user_id{};

  static ReplyTo router(std::string routing_id, std::string user_id = {}) {
    return {kRouter, std::move(routing_id), std::move(user_id)};
  }
  static ReplyTo to_peer(PeerId p) { return {p, {}, {}}; }
  bool via_router() const { return peer == kRouter; }
};

// The handler may move the body and bulk frames out of `request`.
using Handler = std::function<void(Frame& request, const ReplyTo& from)>;
using ErrorBodyFn = std::function<std::string(uint64_t req_id, const Status& status)>;
using ReqIdFn = std::function<uint64_t(std::string_view body)>;

struct ActorOptions {
  std::optional<int> rank{};  // logger "<name>@rank<r>"; default $OMPI_COMM_WORLD_RANK when set
  int linger_ms = 1000;       // how long closing a socket may wait to deliver queued messages
  size_t max_batch = 256;     // messages read per socket per iteration before timers and tick run
  NowFn clock{};              // time for timers and heartbeats; default SteadyClock::now (tests: fake)
  // The ROUTER speaks CURVE as the server: only keys in these allow-lists get in (the context's ZAP
  // handler decides), and each message's role is checked against the op before its handler runs.
  std::optional<CurveServerKeys> curve{};
  std::optional<CurveClientKeys> peer_curve{};  // DEALERs to peers authenticate with this key
  int64_t max_message_bytes = -1;               // ZMQ_MAXMSGSIZE of the ROUTER: a larger part drops the connection
  // An actor never start()ed, driven with run_once() by one thread at a time but not always the
  // same one (the Trainer, which Python calls from whichever thread holds its lock): the owner
  // check is off while no actor thread runs. The caller orders the threads' uses (a lock).
  bool any_owner_thread = false;
};

class Actor {
 public:
  Actor(Context& ctx, std::string name, ActorOptions opts = {});
  ~Actor();  // stop()
  Actor(const Actor&) = delete;
  Actor& operator=(const Actor&) = delete;

  const std::string& name() const { return name_; }
  spdlog::logger& log() { return *log_; }
  TimePoint now() const { return clock_(); }

  // ---- sockets
  // Binds the actor's ROUTER (made on first bind) to an inproc://, ipc:// or tcp:// endpoint.
  // "tcp://127.0.0.1:*" or port 0 picks a free port: endpoint() then reports the real one.
  Status bind(const std::string& endpoint);
  const std::string& endpoint() const { return endpoint_; }  // last bound; "" before bind
  // A DEALER connected to another actor's ROUTER. Replies (and requests) arriving on it are
  // dispatched by op like the ROUTER's, with ReplyTo::to_peer(id).
  // `curve` (when enabled) authenticates this DEALER instead of ActorOptions::peer_curve.
  Result<PeerId> connect_peer(const std::string& endpoint, const std::optional<CurveClientKeys>& curve = std::nullopt);
  // Heartbeats the peer (ping every interval; any message from it counts as heard). When it has
  // been silent for cfg.liveness intervals: on_dead(peer) runs, the DEALER is closed (dropping what
  // was queued to it) and reconnected after an exponential backoff (runtime/liveness.h).
  void watch_peer(PeerId peer, std::function<void(PeerId)> on_dead, LivenessConfig cfg = {});
  bool peer_connected(PeerId peer) const;  // false while waiting to reconnect

  // ---- behaviour
  void on(std::string op, Handler handler);  // replaces a previous handler for op
  // A typed handler, the decode-or-error and encode lines written once for every op: the body is
  // decoded as Request (wire_decode, found by type: comm/wire_typed.h), a body that does not
  // decode is answered with op "error" and the req_id the body carries, fn runs, and its result
  // is answered: a Reply goes as "<op>.reply" (wire_encode), an error as "error" with the
  // request's req_id.
  //   Reply given:  fn(Request&, const ReplyTo&) -> Result<Reply>
  //   Reply = void: fn(Request&, Frame&, const ReplyTo&) -> Status, for ops that answer later
  //                 (generate, score, update_weights): only an error is answered here.
  // Both go through the one dispatch table (dispatch()), so a check made there before any
  // handler runs applies to typed handlers too.
  template <class Request, class Reply = void, class Fn>
  void on(std::string op, Fn fn);
  void set_tick(std::function<bool()> tick);        // returns true while it has more work now
  void set_on_stop(std::function<void()> on_stop);  // finish or abort in-flight work and reply
  void set_error_body(ErrorBodyFn fn);
  void set_req_id_of(ReqIdFn fn);  // req_id of a body, for error replies

  // ---- sending (actor thread). A send to the ROUTER never blocks: a reply to a requester that is
  // gone (or whose queue is full) is dropped by ZeroMQ. A send to a peer fails with `unavailable`
  // while it reconnects or when its queue is full.
  Status send(const ReplyTo& to, std::string op, std::string body, std::vector<zmq::message_t> bulk = {});
  Status send_to(std::string routing_id, std::string op, std::string body, std::vector<zmq::message_t> bulk = {});
  Status send_peer(PeerId peer, std::string op, std::string body, std::vector<zmq::message_t> bulk = {});
  // op "error" with error_body(req_id, status).
  void send_error(const ReplyTo& to, uint64_t req_id, const Status& status);

  // ---- timers (actor thread). fn runs every period from now; missed periods are skipped, not
  // replayed. fn may add or cancel timers, itself included.
  TimerId add_timer(Millis period, std::function<void()> fn);
  void cancel_timer(TimerId id);

  // ---- running
  // Spawns the actor thread. Not after stop().
  void start();
  // Stops the actor (idempotent): the loop ends, on_stop runs on the actor thread (sockets still
  // open, so it can reply), then every request still queued on the ROUTER gets error
  // `unavailable`, and the thread is joined. Without start(), all of this runs on the caller.
  void stop();
  // One loop iteration without a thread, waiting at most `max_wait` for something to do (kForever:
  // no limit). Returns true if it dispatched a message, fired a timer, pinged, dropped or reconnected
  // a peer, or the tick reported more work: `while (a.run_once()) {}` runs an actor until idle.
  // A fake clock (ActorOptions::clock) is meant for run_once(0ms) stepping, not for a real thread.
  bool run_once(Millis max_wait = Millis{0});
  // Any thread: the actor loop wakes from its wait and runs one more iteration (timers, tick), e.g.
  // when a worker thread finished something the tick is waiting for.
  void wake();
  bool running() const { return thread_.joinable(); }  // owner thread
  bool stopped() const { return stopped_; }            // owner thread, when no actor thread runs

 private:
  struct Peer {
    std::string endpoint;
    std::optional<CurveClientKeys> curve;  // this peer's keys (else opts_.peer_curve)
    std::unique_ptr<zmq::socket_t> sock;   // null while waiting to reconnect
    std::optional<Liveness> liveness;      // set by watch_peer
    std::function<void(PeerId)> on_dead;
    TimePoint reconnect_at{};
  };
  struct Timer {
    Millis period;
    TimePoint next;
    std::function<void()> fn;
  };

  void check_owner() const;
  void thread_main();
  void finish();
  Millis poll_timeout(Millis max_wait, TimePoint now) const;
  void poll(Millis timeout);
  size_t drain_control();
  size_t drain_router();
  size_t drain_peer(PeerId p);
  void dispatch(Frame& f, const ReplyTo& from, const Status& recv_err);
  void reject(const ReplyTo& from, const std::string& op, const std::string& body, const Status& st);
  void refuse_queued();
  size_t fire_timers(TimePoint now);
  size_t heartbeat_peers(TimePoint now);
  void open_peer_socket(Peer& p);
  std::unique_ptr<zmq::socket_t> make_socket(zmq::socket_type type);

  zmq::context_t& ctx_;
  std::string name_;
  ActorOptions opts_;
  NowFn clock_;
  std::shared_ptr<spdlog::logger> log_;

  std::unique_ptr<zmq::socket_t> router_;
  std::string endpoint_;
  std::string zap_domain_;  // set when opts_.curve: the ROUTER's allow-lists in the ZAP handler
  std::vector<Peer> peers_;
  std::unique_ptr<zmq::socket_t> ctl_;        // actor side of the control pair
  std::unique_ptr<zmq::socket_t> ctl_owner_;  // owner side: stop() writes here
  int wake_fd_ = -1;                          // eventfd: wake() from any thread

  std::unordered_map<std::string, Handler> handlers_;
  std::function<bool()> tick_;
  std::function<void()> on_stop_;
  ErrorBodyFn error_body_;
  ReqIdFn req_id_of_;

  std::map<TimerId, Timer> timers_;
  TimerId next_timer_id_ = 1;

  bool more_ = false;            // the last tick had more work: poll without waiting
  bool stop_requested_ = false;  // actor thread only: set by the control message
  bool stopped_ = false;
  std::thread thread_;
  std::atomic<std::thread::id> owner_;  // the thread allowed to touch the actor now
};

template <class Request, class Reply, class Fn>
void Actor::on(std::string op, Fn fn) {
  Handler h = [this, fn = std::move(fn), op, reply_op = op + ".reply"](Frame& f, const ReplyTo& from) mutable {
    Result<Request> req = wire_decode(std::string_view(f.body), op, WireTag<Request>{});
    if (!req.ok()) return send_error(from, req_id_of_(f.body), req.status());
    hop_trace::mark(hop_trace::Hop::actor_decoded);
    if constexpr (std::is_void_v<Reply>) {
      if (Status st = fn(*req, f, from); !st.ok()) send_error(from, req->req_id, st);
    } else {
      Result<Reply> reply = fn(*req, from);
      if (!reply.ok()) return send_error(from, req->req_id, reply.status());
      send(from, reply_op, wire_encode(*reply, op));
    }
  };
  on(std::move(op), std::move(h));
}

}  // namespace zr
