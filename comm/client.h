// C++ client of a zrollout server (docs/protocol.md): a DEALER socket connected to the server's
// ROUTER, msgpack bodies from comm/wire_codec.
//
// Threading (ZeroMQ guide): one thread at a time owns the DEALER socket, handed over under
// queue_mu_ (a full barrier, as ZeroMQ requires to move a socket between threads). Normally that
// is the internal I/O thread: a public method builds and encodes the request on the caller's
// thread, appends it to a command queue and wakes the I/O thread (eventfd polled next to the
// DEALER), and gets the result through a std::future. The I/O thread sends the calls in queue
// order (so calls made one after another by one thread reach the server in that order: an abort
// never overtakes the generate it aborts), matches replies to calls by req_id (each call gets a
// fresh one), runs stream callbacks, and resolves calls whose deadline passed with
// ErrorCode::timeout (a reply arriving later is dropped).
// A blocking call (not a stream) made while nothing is in flight or queued skips the I/O thread:
// the I/O thread has given the socket up (io_idle_), the caller sends and reads its reply itself,
// as a raw REQ socket would, saving two thread hand-offs per call. When another call comes in
// meanwhile, the caller hands the socket and its own pending call back to the I/O thread
// (drive_fd_ wakes it) and waits like any call, so blocking and async calls still mix freely.
//
// Thread-safety: every public method may be called from any number of threads at once, except the
// destructor, which must not race with other calls. Stream callbacks run on the I/O thread: they
// must be quick and must not call the blocking methods of this Client (those return
// invalid_argument there instead of deadlocking); the *_async methods are fine.
//
// Ownership: the Client owns its I/O thread and sockets. With a shared context the caller keeps
// the context alive longer than the Client; without one the Client owns a private context.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "comm/curve_keys.h"
#include "comm/frame.h"
#include "comm/messages.h"
#include "comm/status.h"
#include "comm/wire_codec.h"

namespace zr {

class Client {
 public:
  using Timeout = std::chrono::milliseconds;
  static constexpr Timeout kNoTimeout = Timeout::max();
  static constexpr Timeout kDefaultTimeout = std::chrono::minutes(10);
  using ChunkCallback = std::function<void(const StreamChunk&)>;

  struct Options {
    wire::EncodeOptions encode;  // e.g. ids_as_bin for long prompts
    // CURVE: the server's public key and this client's keypair (load_curve_client_keys reads
    // --curve-server / --curve-key). Disabled (empty) for a server without keys. A key the server
    // does not list gets no answer: calls end with `timeout`.
    CurveClientKeys curve;
  };
  // A reply as it came off the wire, for call_raw.
  struct RawReply {
    std::string op;
    std::string body;     // msgpack bytes
    nlohmann::json json;  // the body decoded
    std::vector<std::string> bulk;
  };
  struct Stats {
    uint64_t dropped_replies = 0;  // late (after timeout), unknown req_id or undecodable
  };

  // Connects to endpoint ("tcp://host:port", "ipc://path", "inproc://name"). `context` may be null
  // (the Client then owns one; inproc endpoints need the server's context instead).
  static Result<std::unique_ptr<Client>> connect(const std::string& endpoint, zmq::context_t* context = nullptr,
                                                 Options options = {});
  ~Client();  // resolves calls still in flight with ErrorCode::unavailable
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  Result<GenerateReply> generate(const std::vector<GenerateRequest>& reqs, Timeout timeout = kDefaultTimeout);
  std::future<Result<GenerateReply>> generate_async(const std::vector<GenerateRequest>& reqs,
                                                    Timeout timeout = kDefaultTimeout);
  // Sends the requests with stream: true; on_chunk gets every "generate.chunk" in arrival order (on
  // the I/O thread), then the call resolves with the final "generate.reply".
  Result<GenerateReply> generate_stream(const std::vector<GenerateRequest>& reqs, ChunkCallback on_chunk,
                                        Timeout timeout = kDefaultTimeout);
  std::future<Result<GenerateReply>> generate_stream_async(const std::vector<GenerateRequest>& reqs,
                                                           ChunkCallback on_chunk, Timeout timeout = kDefaultTimeout);

  Result<ScoreReply> score(const std::vector<ScoreRequest>& reqs, Timeout timeout = kDefaultTimeout);
  std::future<Result<ScoreReply>> score_async(const std::vector<ScoreRequest>& reqs, Timeout timeout = kDefaultTimeout);

  // Aborted requests still answer their own generate call (partial outputs, finish_reason abort).
  Result<AbortReply> abort(const std::string& rid, Timeout timeout = kDefaultTimeout);
  Result<AbortReply> abort_prefix(const std::string& rid_prefix, Timeout timeout = kDefaultTimeout);
  Result<AbortReply> abort_all(Timeout timeout = kDefaultTimeout);

  Result<LoadReply> get_load(Timeout timeout = kDefaultTimeout);
  Result<HealthReply> health(Timeout timeout = kDefaultTimeout);
  Result<ModelInfoReply> get_model_info(Timeout timeout = kDefaultTimeout);
  // The ids a text prompt becomes, and the text ids decode to, on the server's tokenizer.
  Result<std::vector<int>> tokenize(const std::string& text, bool add_special_tokens = true,
                                    Timeout timeout = kDefaultTimeout);
  Result<std::string> detokenize(const std::vector<int>& ids, bool skip_special_tokens = true,
                                 Timeout timeout = kDefaultTimeout);
  Result<std::string> open_session(Timeout timeout = kDefaultTimeout);  // the new session's id
  Status close_session(const std::string& session_id, Timeout timeout = kDefaultTimeout);
  Result<int64_t> flush_cache(Timeout timeout = kDefaultTimeout);  // freed blocks

  // Raw access for tests and fuzzing. call_raw sends `body` untouched and resolves with the first
  // reply whose req_id is `req_id` (for a body the server cannot read, that is req_id 0) other than
  // "generate.chunk"; an "error" reply resolves as a RawReply too, not as a Status. A req_id already
  // in flight is refused. send_raw sends and forgets: replies to it count as dropped.
  std::future<Result<RawReply>> call_raw(std::string op, std::string body, std::vector<std::string> bulk,
                                         uint64_t req_id, Timeout timeout = kDefaultTimeout);
  void send_raw(std::string op, std::string body, std::vector<std::string> bulk = {});
  uint64_t next_req_id() { return next_req_id_.fetch_add(1); }  // fresh and unique per Client
  Stats stats() const { return Stats{dropped_.load()}; }

 private:
  struct Call;   // a request on its way through the I/O thread (client.cpp)
  class IoLoop;  // runs on io_thread_, owns the socket while !io_idle_ (client.cpp)

  Client(zmq::context_t* context, Options options);
  Status start(const std::string& endpoint);
  void submit(std::unique_ptr<Call> call);  // any thread; in order per calling thread
  static bool send_call(zmq::socket_t& dealer, const Call& call);
  // Blocking calls: on the caller's thread when the I/O thread is idle, else through it.
  Result<RawReply> call_sync(std::unique_ptr<Call> call);
  bool take_socket();                                       // true: this thread now drives the socket
  void release_socket();                                    // after the reply came (or failed)
  void hand_over(std::unique_ptr<Call> call);               // the I/O thread takes the socket and this call
  std::optional<Result<RawReply>> drive(const Call& call);  // nullopt: another call wants the socket
  std::optional<Result<RawReply>> read_reply(uint64_t req_id);
  template <class T>
  Result<T> call_wait(const std::string& op, std::string body, uint64_t req_id, Timeout timeout,
                      std::function<Result<T>(const nlohmann::json&)> decode);
  bool on_io_thread() const { return std::this_thread::get_id() == io_thread_id_; }
  template <class T>
  std::future<Result<T>> call_typed(const std::string& op, std::string body, uint64_t req_id, Timeout timeout,
                                    std::function<Result<T>(const nlohmann::json&)> decode,
                                    ChunkCallback on_chunk = {});
  Result<AbortReply> abort_call(AbortCall call, Timeout timeout);
  std::future<Result<GenerateReply>> generate_impl(std::vector<GenerateRequest> reqs, ChunkCallback on_chunk,
                                                   Timeout timeout);

  std::unique_ptr<zmq::context_t> owned_context_;  // declared first: destroyed after the sockets
  zmq::context_t* context_;
  Options options_;
  std::mutex queue_mu_;                      // guards queue_ only (a plain container; no socket behind a mutex)
  std::deque<std::unique_ptr<Call>> queue_;  // calls not yet taken by the I/O thread
  int wake_fd_ = -1;                         // eventfd: submit() -> I/O thread
  int drive_fd_ = -1;                        // eventfd: submit() -> a caller driving the socket
  bool io_idle_ = false;                     // guarded by queue_mu_: the I/O thread gave the socket up
  bool caller_driving_ = false;              // guarded by queue_mu_: a blocking call holds the socket
  zmq::socket_t* dealer_ = nullptr;          // the I/O thread's DEALER (set before connect() returns)
  std::atomic<uint64_t> next_req_id_{1};
  std::atomic<uint64_t> dropped_{0};
  std::thread io_thread_;
  std::thread::id io_thread_id_;  // written by the I/O thread before connect() returns
};

}  // namespace zr
