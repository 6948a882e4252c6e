#include "runtime/context.h"

namespace zr {

Context::Context(int io_threads) : ctx_(std::make_unique<zmq::context_t>(io_threads)) {}
Context::~Context() = default;

ZapHandler& Context::zap() {
  if (!zap_) zap_ = std::make_unique<ZapHandler>(*ctx_);
  return *zap_;
}
Context::Context(Context&&) noexcept = default;
Context& Context::operator=(Context&&) noexcept = default;

}  // namespace zr
