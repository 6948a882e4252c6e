#include "runtime/actor.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "comm/hop_trace.h"
#include "runtime/error_reply.h"
#include "runtime/logging.h"

namespace zr {
namespace {

// Requests answered with `unavailable` at stop, at most this many batches: a client that keeps
// sending cannot hold the shutdown forever.
constexpr size_t kRefuseBatches = 64;

// Owner code (handlers, timers, tick, on_stop) is the actor's module edge: an exception there is
// logged, never allowed to kill the actor thread.
template <class F>
void run_guarded(spdlog::logger& log, const char* what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    log.error("{} threw: {}", what, e.what());
  }
}

}  // namespace

Actor::Actor(Context& ctx, std::string name, ActorOptions opts)
    : ctx_(ctx.zmq()),
      name_(std::move(name)),
      opts_(std::move(opts)),
      clock_(opts_.clock ? opts_.clock : NowFn([] { return SteadyClock::now(); })),
      log_(make_actor_logger(name_, opts_.rank)),
      error_body_(default_error_body),
      req_id_of_(default_req_id_of),
      owner_(std::this_thread::get_id()) {
  ZR_CHECK(opts_.max_batch > 0);
  if (opts_.curve) zap_domain_ = ctx.zap().allow(*opts_.curve);
  static std::atomic<uint64_t> next_ctl{0};  // inproc names are per context; keep them unique
  const std::string ctl_endpoint = "inproc://zr.actor-ctl." + std::to_string(next_ctl++);
  ctl_ = make_socket(zmq::socket_type::pair);
  ctl_->set(zmq::sockopt::linger, 0);
  ctl_->bind(ctl_endpoint);
  ctl_owner_ = make_socket(zmq::socket_type::pair);
  ctl_owner_->set(zmq::sockopt::linger, 0);
  ctl_owner_->connect(ctl_endpoint);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ZR_CHECK_MSG(wake_fd_ >= 0, "actor '" + name_ + "': eventfd failed");
  handlers_["ping"] = [this](Frame& f, const ReplyTo& from) {
    send(from, "pong", std::move(f.body), std::move(f.bulk));
  };
  handlers_["pong"] = [](Frame&, const ReplyTo&) {};
}

Actor::~Actor() {
  stop();
  ::close(wake_fd_);
}

void Actor::wake() {
  const uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);  // cannot block (EFD_NONBLOCK); a full counter is awake anyway
}

void Actor::check_owner() const {
  if (opts_.any_owner_thread && !thread_.joinable()) return;
  ZR_CHECK_MSG(owner_.load() == std::this_thread::get_id(),
               "actor '" + name_ + "' used from a thread that does not own it (see actor.h)");
}

std::unique_ptr<zmq::socket_t> Actor::make_socket(zmq::socket_type type) {
  auto sock = std::make_unique<zmq::socket_t>(ctx_, type);
  sock->set(zmq::sockopt::linger, opts_.linger_ms);
  return sock;
}

// ---- sockets

Status Actor::bind(const std::string& endpoint) {
  check_owner();
  if (!router_) {
    router_ = make_socket(zmq::socket_type::router);
    // At its high-water mark a ROUTER drops silently: a stream to a slow client would lose chunks.
    router_->set(zmq::sockopt::sndhwm, 0);
    router_->set(zmq::sockopt::maxmsgsize, opts_.max_message_bytes);
    if (opts_.curve) set_curve_server(*router_, opts_.curve->server, zap_domain_);
  }
  try {
    router_->bind(endpoint);
  } catch (const zmq::error_t& e) {
    ErrorCode code = e.num() == EADDRINUSE ? ErrorCode::unavailable : ErrorCode::invalid_argument;
    return make_error(code, "bind " + endpoint + ": " + e.what());
  }
  endpoint_ = router_->get(zmq::sockopt::last_endpoint);
  log_->debug("bound {}", endpoint_);
  return {};
}

Result<PeerId> Actor::connect_peer(const std::string& endpoint, const std::optional<CurveClientKeys>& curve) {
  check_owner();
  Peer p;
  p.endpoint = endpoint;
  p.curve = curve;
  try {
    open_peer_socket(p);
  } catch (const zmq::error_t& e) {
    return make_error(ErrorCode::invalid_argument, "connect " + endpoint + ": " + e.what());
  }
  peers_.push_back(std::move(p));
  return peers_.size() - 1;
}

void Actor::open_peer_socket(Peer& p) {
  auto sock = make_socket(zmq::socket_type::dealer);
  const std::optional<CurveClientKeys>& curve = p.curve ? p.curve : opts_.peer_curve;
  if (curve && curve->enabled()) set_curve_client(*sock, *curve);  // throws on a bad key: connect_peer reports it
  sock->connect(p.endpoint);
  p.sock = std::move(sock);
}

void Actor::watch_peer(PeerId peer, std::function<void(PeerId)> on_dead, LivenessConfig cfg) {
  check_owner();
  ZR_CHECK(peer < peers_.size());
  peers_[peer].liveness.emplace(clock_(), cfg);
  peers_[peer].on_dead = std::move(on_dead);
}

bool Actor::peer_connected(PeerId peer) const {
  check_owner();
  ZR_CHECK(peer < peers_.size());
  return peers_[peer].sock != nullptr;
}

// ---- behaviour

void Actor::on(std::string op, Handler handler) {
  check_owner();
  ZR_CHECK(handler != nullptr);
  handlers_[std::move(op)] = std::move(handler);
}

void Actor::set_tick(std::function<bool()> tick) {
  check_owner();
  tick_ = std::move(tick);
}

void Actor::set_on_stop(std::function<void()> on_stop) {
  check_owner();
  on_stop_ = std::move(on_stop);
}

void Actor::set_error_body(ErrorBodyFn fn) {
  check_owner();
  ZR_CHECK(fn != nullptr);
  error_body_ = std::move(fn);
}

void Actor::set_req_id_of(ReqIdFn fn) {
  check_owner();
  ZR_CHECK(fn != nullptr);
  req_id_of_ = std::move(fn);
}

// ---- sending

Status Actor::send(const ReplyTo& to, std::string op, std::string body, std::vector<zmq::message_t> bulk) {
  check_owner();
  Frame f{to.routing_id, std::move(op), std::move(body), std::move(bulk)};
  if (to.via_router()) {
    ZR_CHECK_MSG(router_ != nullptr, "actor '" + name_ + "': reply on the ROUTER before bind()");
    send_frame(*router_, true, f);  // a non-mandatory ROUTER drops what it cannot route: never blocks
    return {};
  }
  ZR_CHECK(to.peer < peers_.size());
  Peer& p = peers_[to.peer];
  if (!p.sock) return make_error(ErrorCode::unavailable, "peer " + p.endpoint + " is reconnecting");
  // A DEALER blocks at its high-water mark; when it can take the first part it takes the rest.
  if (!(p.sock->get(zmq::sockopt::events) & ZMQ_POLLOUT))
    return make_error(ErrorCode::unavailable, "peer " + p.endpoint + ": send queue full");
  send_frame(*p.sock, false, f);
  return {};
}

Status Actor::send_to(std::string routing_id, std::string op, std::string body, std::vector<zmq::message_t> bulk) {
  return send(ReplyTo::router(std::move(routing_id)), std::move(op), std::move(body), std::move(bulk));
}

Status Actor::send_peer(PeerId peer, std::string op, std::string body, std::vector<zmq::message_t> bulk) {
  return send(ReplyTo::to_peer(peer), std::move(op), std::move(body), std::move(bulk));
}

void Actor::send_error(const ReplyTo& to, uint64_t req_id, const Status& status) {
  send(to, "error", error_body_(req_id, status));
}

// ---- timers

TimerId Actor::add_timer(Millis period, std::function<void()> fn) {
  check_owner();
  ZR_CHECK(period > Millis{0} && fn != nullptr);
  TimerId id = next_timer_id_++;
  timers_.emplace(id, Timer{period, clock_() + period, std::move(fn)});
  return id;
}

void Actor::cancel_timer(TimerId id) {
  check_owner();
  timers_.erase(id);
}

size_t Actor::fire_timers(TimePoint now) {
  std::vector<TimerId> due;
  for (const auto& [id, t] : timers_)
    if (t.next <= now) due.push_back(id);
  for (TimerId id : due) {
    auto it = timers_.find(id);
    if (it == timers_.end()) continue;  // cancelled by a timer that fired before it
    Timer& t = it->second;
    t.next += t.period;
    if (t.next <= now) t.next = now + t.period;  // skip missed periods
    std::function<void()> fn = t.fn;             // a copy: fn may cancel its own timer
    run_guarded(*log_, "timer", fn);
  }
  return due.size();
}

// ---- heartbeats

size_t Actor::heartbeat_peers(TimePoint now) {
  size_t events = 0;
  for (PeerId id = 0; id < peers_.size(); ++id) {
    Peer& p = peers_[id];
    if (!p.liveness) continue;
    if (!p.sock) {
      if (now < p.reconnect_at) continue;
      open_peer_socket(p);  // the endpoint was accepted by connect_peer
      p.liveness->on_reconnect(now);
      log_->info("peer {}: reconnected", p.endpoint);
      ++events;
    } else if (p.liveness->dead(now)) {
      Millis backoff = p.liveness->reconnect_backoff();
      log_->warn("peer {}: silent for {} heartbeats; reconnecting in {} ms", p.endpoint, p.liveness->config().liveness,
                 backoff.count());
      p.sock->set(zmq::sockopt::linger, 0);  // drop what was queued to the dead peer
      p.sock.reset();
      p.reconnect_at = now + backoff;
      auto on_dead = p.on_dead;  // a copy: on_dead may connect peers, moving `p`
      if (on_dead) run_guarded(*log_, "on_dead", [&] { on_dead(id); });
      ++events;
    } else if (p.liveness->tick(now)) {
      send_peer(id, "ping", "");
      ++events;
    }
  }
  return events;
}

// ---- the loop

Millis Actor::poll_timeout(Millis max_wait, TimePoint now) const {
  if (more_ || max_wait == Millis{0}) return Millis{0};
  std::optional<TimePoint> next;
  auto earliest = [&](TimePoint t) {
    if (!next || t < *next) next = t;
  };
  for (const auto& [id, t] : timers_) earliest(t.next);
  for (const Peer& p : peers_)
    if (p.liveness) earliest(p.sock ? p.liveness->next_event() : p.reconnect_at);
  if (!next) return max_wait;
  Millis until = std::max(Millis{0}, std::chrono::ceil<Millis>(*next - now));
  return max_wait < Millis{0} ? until : std::min(until, max_wait);
}

void Actor::poll(Millis timeout) {
  std::vector<zmq::pollitem_t> items;
  items.push_back({ctl_->handle(), 0, ZMQ_POLLIN, 0});
  items.push_back({nullptr, wake_fd_, ZMQ_POLLIN, 0});
  if (router_) items.push_back({router_->handle(), 0, ZMQ_POLLIN, 0});
  for (const Peer& p : peers_)
    if (p.sock) items.push_back({p.sock->handle(), 0, ZMQ_POLLIN, 0});
  try {
    zmq::poll(items, timeout);
  } catch (const zmq::error_t& e) {
    if (e.num() != EINTR) throw;  // a signal handler ran: just go round again
  }
}

bool Actor::run_once(Millis max_wait) {
  check_owner();
  ZR_CHECK_MSG(!stopped_, "actor '" + name_ + "': run_once after stop()");
  poll(poll_timeout(max_wait, clock_()));
  size_t events = drain_control();
  if (uint64_t woken = 0; ::read(wake_fd_, &woken, sizeof woken) == sizeof woken) events += 1;
  if (router_) events += drain_router();
  for (PeerId p = 0; p < peers_.size(); ++p) events += drain_peer(p);
  const TimePoint now = clock_();
  events += fire_timers(now);
  events += heartbeat_peers(now);
  more_ = false;
  if (tick_) run_guarded(*log_, "tick", [&] { more_ = tick_(); });
  return events > 0 || more_;
}

size_t Actor::drain_control() {
  size_t n = 0;
  zmq::message_t m;
  while (ctl_->recv(m, zmq::recv_flags::dontwait)) {  // the only control message is "stop"
    stop_requested_ = true;
    ++n;
  }
  return n;
}

size_t Actor::drain_router() {
  size_t n = 0;
  Frame f;
  Status err;
  while (n < opts_.max_batch && recv_frame(*router_, true, f, err)) {
    ++n;
    hop_trace::mark(hop_trace::Hop::actor_recv);
    const ReplyTo from = ReplyTo::router(f.routing_id, f.user_id);
    dispatch(f, from, err);
  }
  return n;
}

size_t Actor::drain_peer(PeerId p) {
  size_t n = 0;
  Frame f;
  Status err;
  // peers_[p] again each time: a handler may connect peers (moving the vector) or a peer may die.
  while (n < opts_.max_batch && peers_[p].sock && recv_frame(*peers_[p].sock, false, f, err)) {
    ++n;
    if (peers_[p].liveness) peers_[p].liveness->on_heard(clock_());
    dispatch(f, ReplyTo::to_peer(p), err);
  }
  return n;
}

void Actor::dispatch(Frame& f, const ReplyTo& from, const Status& recv_err) {
  if (!recv_err.ok()) {
    reject(from, f.op, {}, recv_err);
    return;
  }
  auto it = handlers_.find(f.op);
  if (it == handlers_.end()) {
    reject(from, f.op, f.body, make_error(ErrorCode::unknown_op, "unknown op '" + f.op + "'"));
    return;
  }
  // The one place roles are enforced: every op on the ROUTER, before its handler.
  if (from.via_router()) {
    if (Status st = authorize_op(f.op, f.user_id); !st.ok()) {
      reject(from, f.op, f.body, st);
      return;
    }
  }
  const Handler handler = it->second;  // a copy: the handler may replace itself with on()
  try {
    handler(f, from);
  } catch (const std::exception& e) {
    // The req_id is lost if the handler moved the body out before throwing.
    reject(from, f.op, f.body, make_error(ErrorCode::internal, "op '" + f.op + "' failed: " + e.what()));
  }
}

void Actor::reject(const ReplyTo& from, const std::string& op, const std::string& body, const Status& st) {
  // Never answer an error with an error (two actors would bounce it forever), and never answer a
  // peer: what arrives there are replies to our own calls.
  if (!from.via_router() || op == "error") {
    log_->warn("dropped a message (op '{}') from {}: {}", op,
               from.via_router() ? std::string("a client") : peers_[from.peer].endpoint, st.to_string());
    return;
  }
  log_->warn("rejected op '{}': {}", op, st.to_string());
  send_error(from, req_id_of_(body), st);
}

void Actor::refuse_queued() {
  if (!router_) return;
  const Status shutting_down = make_error(ErrorCode::unavailable, "actor '" + name_ + "' is shutting down");
  Frame f;
  Status err;
  size_t n = 0;
  while (n < kRefuseBatches * opts_.max_batch && recv_frame(*router_, true, f, err)) {
    ++n;
    reject(ReplyTo::router(f.routing_id), f.op, f.body, err.ok() ? shutting_down : err);
  }
}

void Actor::finish() {
  stop_requested_ = true;
  if (on_stop_) run_guarded(*log_, "on_stop", on_stop_);
  refuse_queued();
  stopped_ = true;
  log_->debug("stopped");
}

void Actor::thread_main() {
  owner_ = std::this_thread::get_id();
  log_->debug("thread started");
  while (!stop_requested_) run_once(kForever);
  finish();
}

void Actor::start() {
  check_owner();
  ZR_CHECK_MSG(!thread_.joinable() && !stopped_, "actor '" + name_ + "': start() twice or after stop()");
  owner_ = std::thread::id{};  // nobody until the actor thread claims it
  thread_ = std::thread([this] { thread_main(); });
}

void Actor::stop() {
  if (thread_.joinable()) {
    ZR_CHECK_MSG(std::this_thread::get_id() != thread_.get_id(), "actor '" + name_ + "': stop() from its own thread");
    ctl_owner_->send(zmq::str_buffer("stop"), zmq::send_flags::none);
    thread_.join();
    owner_ = std::this_thread::get_id();
    return;
  }
  if (stopped_) return;
  check_owner();
  finish();
}

}  // namespace zr
