#include "comm/client.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <queue>
#include <tuple>
#include <unordered_map>

#include "comm/hop_trace.h"

namespace zr {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// A request on its way: built on the caller's thread, owned by the I/O thread once submitted.
struct Client::Call {
  bool stop = false;  // the destructor's command: no request
  uint64_t req_id = 0;
  std::string op;
  std::string body;
  std::vector<std::string> bulk;
  Clock::time_point deadline = Clock::time_point::max();
  bool expect_reply = true;                       // false: send_raw
  ChunkCallback on_chunk;                         // "generate.chunk" frames go here when set
  std::function<void(Result<RawReply>)> resolve;  // called exactly once (on the I/O thread unless submit fails)
  uint64_t seq = 0;    // I/O thread's number for this call, tells stale deadline entries apart
  bool adopt = false;  // already sent by a caller that drove the socket: the I/O thread only waits
};

namespace {

Clock::time_point deadline_after(Client::Timeout timeout) {
  auto now = Clock::now();
  if (timeout >= Client::Timeout(std::chrono::hours(24 * 365 * 100))) return Clock::time_point::max();
  return now + std::chrono::duration_cast<Clock::duration>(std::max(timeout, Client::Timeout(0)));
}

Status deadlock_error() {
  return make_error(ErrorCode::invalid_argument,
                    "client: a blocking call from a stream callback (the I/O thread) would deadlock; use *_async");
}

// What a typed call makes of the raw reply: "error" -> its Status, a wrong op -> bad_message.
template <class T>
Result<T> typed_result(const std::string& op, Result<Client::RawReply> r,
                       const std::function<Result<T>(const json&)>& decode) {
  if (!r.ok()) return r.status();
  if (r->op == "error") return wire::status_from_error_json(r->json);
  if (r->op != op + ".reply")
    return make_error(ErrorCode::bad_message, "reply: expected op '" + op + ".reply', got '" + r->op + "'");
  return decode(r->json);
}

Client::RawReply raw_reply(Frame& f, json body) {
  Client::RawReply reply{std::move(f.op), std::move(f.body), std::move(body), {}};
  for (auto& b : f.bulk) reply.bulk.push_back(b.to_string());
  return reply;
}

void poke(int fd) {
  uint64_t one = 1;
  while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {}
}

// zmq::poll, going round again when a signal handler interrupted it.
void poll_items(zmq::pollitem_t* items, size_t n, std::chrono::milliseconds timeout) {
  for (;;) {
    try {
      zmq::poll(items, n, timeout);
      return;
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw;
    }
  }
}

}  // namespace

// Runs on the I/O thread and owns the DEALER socket (to the server).
class Client::IoLoop {
 public:
  explicit IoLoop(Client& client) : client_(client) {}

  void run(const std::string& endpoint, std::promise<Status>& ready) {
    client_.io_thread_id_ = std::this_thread::get_id();
    try {
      dealer_ = zmq::socket_t(*client_.context_, zmq::socket_type::dealer);
      dealer_.set(zmq::sockopt::linger, 0);  // never hold up shutdown for a dead server
      dealer_.set(zmq::sockopt::sndhwm, 0);  // calls are bounded by the caller, not by dropping
      dealer_.set(zmq::sockopt::rcvhwm, 0);
      if (client_.options_.curve.enabled()) set_curve_client(dealer_, client_.options_.curve);
      dealer_.connect(endpoint);
      client_.dealer_ = &dealer_;
    } catch (const zmq::error_t& e) {
      ready.set_value(make_error(ErrorCode::unavailable, "client: cannot connect to '" + endpoint + "': " + e.what()));
      return;
    }
    ready.set_value(Status{});
    loop();
    shutdown();
  }

 private:
  void loop() {
    while (!stopping_) {
      if (go_idle()) {
        wait_while_idle();
        drain_commands();
        continue;
      }
      zmq::pollitem_t items[] = {{dealer_.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, client_.wake_fd_, ZMQ_POLLIN, 0}};
      poll_items(items, 2, poll_timeout());
      if (items[0].revents & ZMQ_POLLIN) drain_replies();
      if (items[1].revents & ZMQ_POLLIN) drain_commands();
      expire(Clock::now());
    }
  }

  // Nothing in flight and nothing queued: the I/O thread gives the socket up, so a blocking call
  // may drive it from its own thread (Client::call_sync). True when it did.
  bool go_idle() {
    if (!pending_.empty()) return false;
    std::lock_guard lock(client_.queue_mu_);
    if (!client_.queue_.empty()) return false;
    client_.io_idle_ = true;
    deadlines_ = {};  // all stale: nothing is pending
    return true;
  }

  // Sleeps on the wake fd (never touching the socket, which a caller may be driving) until a
  // submit, hand_over or release gives the socket back (io_idle_ false).
  void wait_while_idle() {
    for (;;) {
      zmq::pollitem_t wake{nullptr, client_.wake_fd_, ZMQ_POLLIN, 0};
      poll_items(&wake, 1, std::chrono::milliseconds(-1));
      uint64_t wakeups = 0;
      while (::read(client_.wake_fd_, &wakeups, sizeof wakeups) < 0 && errno == EINTR) {}
      std::lock_guard lock(client_.queue_mu_);
      if (!client_.io_idle_) return;
    }
  }

  std::chrono::milliseconds poll_timeout() {
    if (deadlines_.empty()) return std::chrono::milliseconds(-1);
    auto left = std::get<0>(deadlines_.top()) - Clock::now();
    return std::max(std::chrono::milliseconds(0), std::chrono::ceil<std::chrono::milliseconds>(left));
  }

  std::deque<std::unique_ptr<Call>> take_queue() {
    uint64_t wakeups = 0;
    while (::read(client_.wake_fd_, &wakeups, sizeof wakeups) < 0 && errno == EINTR) {}
    std::deque<std::unique_ptr<Call>> calls;
    std::lock_guard lock(client_.queue_mu_);
    calls.swap(client_.queue_);
    return calls;
  }

  void drain_commands() {
    for (auto& call : take_queue()) {
      if (call->stop) stopping_ = true;
      else if (!stopping_) start_call(std::move(call));
      else if (call->resolve) call->resolve(make_error(ErrorCode::unavailable, "client: closed"));
    }
  }

  void start_call(std::unique_ptr<Call> call) {
    if (call->expect_reply && pending_.count(call->req_id))
      return call->resolve(
          make_error(ErrorCode::invalid_argument, "req_id: " + std::to_string(call->req_id) + " is already in flight"));
    if (call->adopt) return adopt(std::move(call));
    hop_trace::mark(hop_trace::Hop::io_send);
    if (!send_call(dealer_, *call)) {
      if (call->expect_reply) call->resolve(make_error(ErrorCode::unavailable, "client: send queue full"));
      return;
    }
    hop_trace::mark(hop_trace::Hop::io_sent);
    if (call->expect_reply) adopt(std::move(call));
  }

  // From now on this thread matches the call's reply and watches its deadline.
  void adopt(std::unique_ptr<Call> call) {
    call->seq = ++seq_;
    if (call->deadline != Clock::time_point::max()) deadlines_.emplace(call->deadline, call->seq, call->req_id);
    uint64_t id = call->req_id;
    pending_.emplace(id, std::move(call));
  }

  void drain_replies() {
    for (;;) {
      Frame f;
      Status err;
      if (!recv_frame(dealer_, false, f, err, true)) return;
      hop_trace::mark(hop_trace::Hop::io_received);
      if (!err.ok()) {
        ++client_.dropped_;
        continue;
      }
      on_reply(std::move(f));
    }
  }

  void on_reply(Frame f) {
    auto body = wire::unpack_body(f.body);
    auto id = body.ok() ? wire::req_id_from_json(*body) : Result<uint64_t>(body.status());
    auto it = id.ok() ? pending_.find(*id) : pending_.end();
    if (it == pending_.end()) {
      ++client_.dropped_;
      return;
    }
    Call& call = *it->second;
    if (f.op == "generate.chunk") {
      if (call.on_chunk) deliver_chunk(it, *body);
      return;  // chunks of calls that did not ask for them, and raw calls, are skipped
    }
    std::unique_ptr<Call> done = std::move(it->second);
    pending_.erase(it);
    done->resolve(raw_reply(f, std::move(body).value()));
  }

  void deliver_chunk(std::unordered_map<uint64_t, std::unique_ptr<Call>>::iterator it, const json& body) {
    Status st;
    if (auto chunk = wire::stream_chunk_from_json(body); !chunk.ok()) {
      st = make_error(ErrorCode::bad_message, "generate.chunk: " + chunk.status().message);
    } else {
      try {
        it->second->on_chunk(*chunk);
      } catch (const std::exception& e) {
        st = make_error(ErrorCode::internal, std::string("on_chunk threw: ") + e.what());
      } catch (...) {
        st = make_error(ErrorCode::internal, "on_chunk threw");
      }
    }
    if (st.ok()) return;
    std::unique_ptr<Call> done = std::move(it->second);
    pending_.erase(it);
    done->resolve(std::move(st));
  }

  void expire(Clock::time_point now) {
    while (!deadlines_.empty() && std::get<0>(deadlines_.top()) <= now) {
      auto [deadline, seq, id] = deadlines_.top();
      deadlines_.pop();
      auto it = pending_.find(id);
      if (it == pending_.end() || it->second->seq != seq) continue;  // already answered
      std::unique_ptr<Call> done = std::move(it->second);
      pending_.erase(it);
      done->resolve(make_error(ErrorCode::timeout,
                               done->op + ": no reply within the timeout (req_id " + std::to_string(id) + ")"));
    }
  }

  // Everything still in flight or still queued resolves now, so no future is left hanging.
  void shutdown() {
    for (auto& [id, call] : pending_) call->resolve(make_error(ErrorCode::unavailable, "client: closed"));
    pending_.clear();
    for (auto& call : take_queue())
      if (call->resolve) call->resolve(make_error(ErrorCode::unavailable, "client: closed"));
  }

  Client& client_;
  zmq::socket_t dealer_;  // owned by this thread while client_.io_idle_ is false
  bool stopping_ = false;
  uint64_t seq_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<Call>> pending_;
  using Deadline = std::tuple<Clock::time_point, uint64_t, uint64_t>;  // deadline, seq, req_id
  std::priority_queue<Deadline, std::vector<Deadline>, std::greater<>> deadlines_;
};

// The frames of a call: [op, body, bulk...]. False when the DEALER cannot take it now.
bool Client::send_call(zmq::socket_t& dealer, const Call& call) {
  if (!dealer.send(zmq::buffer(call.op), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return false;
  // The remaining parts of a multipart message are always accepted once the first one was.
  dealer.send(zmq::buffer(call.body), call.bulk.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore);
  for (size_t i = 0; i < call.bulk.size(); ++i)
    dealer.send(zmq::buffer(call.bulk[i]),
                i + 1 == call.bulk.size() ? zmq::send_flags::none : zmq::send_flags::sndmore);
  return true;
}

// ---- lifetime -----------------------------------------------------------------------------------

Client::Client(zmq::context_t* context, Options options)
    : owned_context_(context ? nullptr : std::make_unique<zmq::context_t>(1)),
      context_(context ? context : owned_context_.get()),
      options_(options),
      wake_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
      drive_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

Result<std::unique_ptr<Client>> Client::connect(const std::string& endpoint, zmq::context_t* context, Options options) {
  std::unique_ptr<Client> c(new Client(context, options));
  ZR_RETURN_IF_ERROR(c->start(endpoint));
  return c;
}

Status Client::start(const std::string& endpoint) {
  if (wake_fd_ < 0 || drive_fd_ < 0)
    return make_error(ErrorCode::unavailable, std::string("client: eventfd: ") + std::strerror(errno));
  std::promise<Status> ready;
  auto started = ready.get_future();
  io_thread_ = std::thread([this, endpoint, &ready] { IoLoop(*this).run(endpoint, ready); });
  Status st = started.get();
  if (!st.ok()) io_thread_.join();
  return st;
}

Client::~Client() {
  if (io_thread_.joinable()) {
    auto stop = std::make_unique<Call>();
    stop->stop = true;
    submit(std::move(stop));
    io_thread_.join();
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (drive_fd_ >= 0) ::close(drive_fd_);
}

void Client::submit(std::unique_ptr<Call> call) {
  std::lock_guard lock(queue_mu_);
  queue_.push_back(std::move(call));
  hop_trace::mark(hop_trace::Hop::client_queued);
  if (caller_driving_) return poke(drive_fd_);  // it hands the socket to the I/O thread
  io_idle_ = false;
  poke(wake_fd_);
}

// ---- blocking calls on the caller's thread ------------------------------------------------------

bool Client::take_socket() {
  std::lock_guard lock(queue_mu_);
  if (!io_idle_ || caller_driving_ || !queue_.empty()) return false;
  uint64_t stale = 0;  // pokes for an earlier driver, all before its release (under this lock)
  while (::read(drive_fd_, &stale, sizeof stale) < 0 && errno == EINTR) {}
  caller_driving_ = true;
  return true;
}

void Client::release_socket() {
  std::lock_guard lock(queue_mu_);
  caller_driving_ = false;
  if (queue_.empty()) return;
  io_idle_ = false;  // calls came in meanwhile: the I/O thread sends them
  poke(wake_fd_);
}

void Client::hand_over(std::unique_ptr<Call> call) {
  call->adopt = true;
  std::lock_guard lock(queue_mu_);
  queue_.push_front(std::move(call));  // before the calls that came in meanwhile, sent after it
  caller_driving_ = false;
  io_idle_ = false;
  poke(wake_fd_);
}

Result<Client::RawReply> Client::call_sync(std::unique_ptr<Call> call) {
  auto promise = std::make_shared<std::promise<Result<RawReply>>>();
  auto future = promise->get_future();
  call->resolve = [promise](Result<RawReply> r) { promise->set_value(std::move(r)); };
  if (!take_socket()) {
    submit(std::move(call));
    return future.get();
  }
  hop_trace::mark(hop_trace::Hop::client_queued);
  std::optional<Result<RawReply>> r = drive(*call);
  if (r) {
    release_socket();
    return std::move(*r);
  }
  hand_over(std::move(call));
  return future.get();
}

// The caller owns the socket: send, then read until this call's reply, its deadline, or another
// call wanting the socket (drive_fd_: nullopt, the caller hands over and waits like any call).
// Replies to nobody (late ones) are dropped as the I/O thread drops them.
std::optional<Result<Client::RawReply>> Client::drive(const Call& call) {
  hop_trace::mark(hop_trace::Hop::io_send);
  if (!send_call(*dealer_, call)) return make_error(ErrorCode::unavailable, "client: send queue full");
  hop_trace::mark(hop_trace::Hop::io_sent);
  for (;;) {
    if (auto r = read_reply(call.req_id)) return r;
    auto now = Clock::now();
    if (now >= call.deadline)
      return make_error(ErrorCode::timeout,
                        call.op + ": no reply within the timeout (req_id " + std::to_string(call.req_id) + ")");
    auto wait = call.deadline == Clock::time_point::max()
                    ? std::chrono::milliseconds(-1)
                    : std::chrono::ceil<std::chrono::milliseconds>(call.deadline - now);
    zmq::pollitem_t items[] = {{dealer_->handle(), 0, ZMQ_POLLIN, 0}, {nullptr, drive_fd_, ZMQ_POLLIN, 0}};
    poll_items(items, 2, wait);
    if ((items[1].revents & ZMQ_POLLIN) && !(items[0].revents & ZMQ_POLLIN)) return std::nullopt;
  }
}

// The reply to req_id if one is waiting on the socket; other frames are dropped.
std::optional<Result<Client::RawReply>> Client::read_reply(uint64_t req_id) {
  for (;;) {
    Frame f;
    Status err;
    if (!recv_frame(*dealer_, false, f, err, true)) return std::nullopt;
    hop_trace::mark(hop_trace::Hop::io_received);
    auto body = err.ok() ? wire::unpack_body(f.body) : Result<json>(err);
    auto id = body.ok() ? wire::req_id_from_json(*body) : Result<uint64_t>(body.status());
    if (!id.ok() || *id != req_id) {
      ++dropped_;
      continue;
    }
    if (f.op == "generate.chunk") continue;  // a blocking call asked for none
    return Result<RawReply>(raw_reply(f, std::move(body).value()));
  }
}

// ---- calls --------------------------------------------------------------------------------------

template <class T>
std::future<Result<T>> Client::call_typed(const std::string& op, std::string body, uint64_t req_id, Timeout timeout,
                                          std::function<Result<T>(const json&)> decode, ChunkCallback on_chunk) {
  auto promise = std::make_shared<std::promise<Result<T>>>();
  auto future = promise->get_future();
  auto call = std::make_unique<Call>();
  call->req_id = req_id;
  call->op = op;
  call->body = std::move(body);
  call->deadline = deadline_after(timeout);
  call->on_chunk = std::move(on_chunk);
  call->resolve = [promise, op, decode = std::move(decode)](Result<RawReply> r) {
    Result<T> result = typed_result<T>(op, std::move(r), decode);
    hop_trace::mark(hop_trace::Hop::io_resolved);
    promise->set_value(std::move(result));
  };
  submit(std::move(call));
  return future;
}

// A blocking call: on the caller's thread when the I/O thread is idle (call_sync).
template <class T>
Result<T> Client::call_wait(const std::string& op, std::string body, uint64_t req_id, Timeout timeout,
                            std::function<Result<T>(const json&)> decode) {
  auto call = std::make_unique<Call>();
  call->req_id = req_id;
  call->op = op;
  call->body = std::move(body);
  call->deadline = deadline_after(timeout);
  Result<T> result = typed_result<T>(op, call_sync(std::move(call)), decode);
  hop_trace::mark(hop_trace::Hop::io_resolved);
  return result;
}

std::future<Result<GenerateReply>> Client::generate_impl(std::vector<GenerateRequest> reqs, ChunkCallback on_chunk,
                                                         Timeout timeout) {
  if (on_chunk)
    for (auto& r : reqs) r.stream = true;
  GenerateCall call{next_req_id(), std::move(reqs)};
  return call_typed<GenerateReply>("generate", wire::encode(call, options_.encode), call.req_id, timeout,
                                   wire::generate_reply_from_json, std::move(on_chunk));
}

std::future<Result<GenerateReply>> Client::generate_async(const std::vector<GenerateRequest>& reqs, Timeout timeout) {
  return generate_impl(reqs, {}, timeout);
}

Result<GenerateReply> Client::generate(const std::vector<GenerateRequest>& reqs, Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  hop_trace::mark(hop_trace::Hop::client_call);
  GenerateCall call{next_req_id(), reqs};
  Result<GenerateReply> r = call_wait<GenerateReply>("generate", wire::encode(call, options_.encode), call.req_id,
                                                     timeout, wire::generate_reply_from_json);
  hop_trace::mark(hop_trace::Hop::client_returned);
  return r;
}

std::future<Result<GenerateReply>> Client::generate_stream_async(const std::vector<GenerateRequest>& reqs,
                                                                 ChunkCallback on_chunk, Timeout timeout) {
  if (!on_chunk) on_chunk = [](const StreamChunk&) {};
  return generate_impl(reqs, std::move(on_chunk), timeout);
}

Result<GenerateReply> Client::generate_stream(const std::vector<GenerateRequest>& reqs, ChunkCallback on_chunk,
                                              Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  return generate_stream_async(reqs, std::move(on_chunk), timeout).get();
}

std::future<Result<ScoreReply>> Client::score_async(const std::vector<ScoreRequest>& reqs, Timeout timeout) {
  ScoreCall call{next_req_id(), reqs};
  return call_typed<ScoreReply>("score", wire::encode(call, options_.encode), call.req_id, timeout,
                                wire::score_reply_from_json);
}

Result<ScoreReply> Client::score(const std::vector<ScoreRequest>& reqs, Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  ScoreCall call{next_req_id(), reqs};
  return call_wait<ScoreReply>("score", wire::encode(call, options_.encode), call.req_id, timeout,
                               wire::score_reply_from_json);
}

Result<AbortReply> Client::abort_call(AbortCall call, Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  call.req_id = next_req_id();
  return call_wait<AbortReply>("abort", wire::encode(call), call.req_id, timeout, wire::abort_reply_from_json);
}

Result<AbortReply> Client::abort(const std::string& rid, Timeout timeout) {
  return abort_call(AbortCall{0, rid, {}, false}, timeout);
}
Result<AbortReply> Client::abort_prefix(const std::string& rid_prefix, Timeout timeout) {
  return abort_call(AbortCall{0, {}, rid_prefix, false}, timeout);
}
Result<AbortReply> Client::abort_all(Timeout timeout) { return abort_call(AbortCall{0, {}, {}, true}, timeout); }

Result<LoadReply> Client::get_load(Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  uint64_t id = next_req_id();
  return call_wait<LoadReply>("get_load", wire::encode_req_id_only(id), id, timeout, wire::load_reply_from_json);
}

Result<HealthReply> Client::health(Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  uint64_t id = next_req_id();
  return call_wait<HealthReply>("health", wire::encode_req_id_only(id), id, timeout, wire::health_reply_from_json);
}

Result<ModelInfoReply> Client::get_model_info(Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  uint64_t id = next_req_id();
  return call_wait<ModelInfoReply>("get_model_info", wire::encode_req_id_only(id), id, timeout,
                                   wire::model_info_reply_from_json);
}

Result<std::vector<int>> Client::tokenize(const std::string& text, bool add_special_tokens, Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  TokenizeCall call{next_req_id(), text, add_special_tokens};
  auto r =
      call_wait<TokenizeReply>("tokenize", wire::encode(call), call.req_id, timeout, wire::tokenize_reply_from_json);
  if (!r.ok()) return r.status();
  return std::move(r->input_ids);
}

Result<std::string> Client::detokenize(const std::vector<int>& ids, bool skip_special_tokens, Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  DetokenizeCall call{next_req_id(), ids, skip_special_tokens};
  auto r = call_wait<DetokenizeReply>("detokenize", wire::encode(call, options_.encode), call.req_id, timeout,
                                      wire::detokenize_reply_from_json);
  if (!r.ok()) return r.status();
  return std::move(r->text);
}

Result<std::string> Client::open_session(Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  SessionCall call{next_req_id(), {}};
  auto r = call_wait<SimpleReply>("open_session", wire::encode(call), call.req_id, timeout,
                                  [](const json& j) { return wire::simple_reply_from_json("open_session", j); });
  if (!r.ok()) return r.status();
  return r->session_id;
}

Status Client::close_session(const std::string& session_id, Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  SessionCall call{next_req_id(), session_id};
  return call_wait<SimpleReply>("close_session", wire::encode(call), call.req_id, timeout,
                                [](const json& j) { return wire::simple_reply_from_json("close_session", j); })
      .status();
}

Result<int64_t> Client::flush_cache(Timeout timeout) {
  if (on_io_thread()) return deadlock_error();
  uint64_t id = next_req_id();
  auto r = call_wait<SimpleReply>("flush_cache", wire::encode_req_id_only(id), id, timeout,
                                  [](const json& j) { return wire::simple_reply_from_json("flush_cache", j); });
  if (!r.ok()) return r.status();
  return r->value;
}

std::future<Result<Client::RawReply>> Client::call_raw(std::string op, std::string body, std::vector<std::string> bulk,
                                                       uint64_t req_id, Timeout timeout) {
  auto promise = std::make_shared<std::promise<Result<RawReply>>>();
  auto future = promise->get_future();
  auto call = std::make_unique<Call>();
  call->req_id = req_id;
  call->op = std::move(op);
  call->body = std::move(body);
  call->bulk = std::move(bulk);
  call->deadline = deadline_after(timeout);
  call->resolve = [promise](Result<RawReply> r) { promise->set_value(std::move(r)); };
  submit(std::move(call));
  return future;
}

void Client::send_raw(std::string op, std::string body, std::vector<std::string> bulk) {
  auto call = std::make_unique<Call>();
  call->op = std::move(op);
  call->body = std::move(body);
  call->bulk = std::move(bulk);
  call->expect_reply = false;
  submit(std::move(call));
}

}  // namespace zr
