// The ZAP handler of one ZeroMQ context (RFC 27/ZAP, as czmq's zauth does it): a REP socket bound to
// inproc://zeromq.zap.01 on its own thread. libzmq asks it about every CURVE handshake on the
// context's server sockets; it admits a client key listed for the socket's ZAP domain and answers
// with the key's role as the user id ("trainer" or "client", comm/curve_keys.h), which libzmq then
// attaches to every message of that connection ("User-Id"). Any other key, or an unknown domain,
// is refused (status 400): the peer's handshake fails and it gets no answer at all.
//
// Ownership: made and owned by runtime::Context (one per context, since the ZAP endpoint is fixed);
// it must be destroyed before the zmq context, which it is (Context declares it after). Its socket
// lives on its own thread only. Thread-safety: allow() and denied() may be called from any thread
// (the allow-lists sit behind a mutex; this is infrastructure, not actor code).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "comm/curve_keys.h"
#include "comm/frame.h"

namespace zr {

class ZapHandler {
 public:
  static constexpr const char* kEndpoint = "inproc://zeromq.zap.01";

  explicit ZapHandler(zmq::context_t& ctx);  // binds kEndpoint and starts the thread
  ~ZapHandler();                             // stops and joins the thread
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  // Registers the allow-lists of one server socket under a fresh ZAP domain and returns it (the
  // socket sets it as ZMQ_ZAP_DOMAIN before bind).
  std::string allow(const CurveServerKeys& keys);
  uint64_t denied() const { return denied_.load(); }  // handshakes refused so far
  uint64_t admitted() const { return admitted_.load(); }

 private:
  using Key = std::array<uint8_t, 32>;
  void run();
  void answer(zmq::socket_t& rep);
  Role role_of(const std::string& domain, const std::string& key) const;

  zmq::context_t& ctx_;
  mutable std::mutex mu_;  // guards domains_ and next_domain_
  std::map<std::string, std::map<Key, Role>> domains_;
  uint64_t next_domain_ = 0;
  std::atomic<uint64_t> denied_{0}, admitted_{0};
  int stop_fd_ = -1;  // eventfd: the destructor wakes the thread
  std::thread thread_;
};

}  // namespace zr
