// The one ZeroMQ context of a process, passed explicitly to whoever makes sockets (no singleton).
//
// Ownership: Context owns the zmq context; moving a Context keeps the underlying context at the same
// address, so actors made from it stay valid. Every Actor (every socket) made from a Context must be
// destroyed before it: the context's destructor waits for all of its sockets to close.
// Thread-safety: the zmq context is thread-safe; sockets made from it are not (see actor.h).
#pragma once

#include <memory>

#include "comm/frame.h"
#include "runtime/zap_handler.h"

namespace zr {

class Context {
 public:
  explicit Context(int io_threads = 1);
  ~Context();
  Context(Context&&) noexcept;
  Context& operator=(Context&&) noexcept;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  zmq::context_t& zmq() { return *ctx_; }
  // The context's ZAP handler, started on first use (a CURVE server socket needs it before bind).
  // Not thread-safe: call it where actors are configured, before their threads start.
  ZapHandler& zap();

 private:
  std::unique_ptr<zmq::context_t> ctx_;
  std::unique_ptr<ZapHandler> zap_;  // declared after ctx_: stopped before the context ends
};

}  // namespace zr
