#include "runtime/zap_handler.h"

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <future>
#include <vector>

namespace zr {

namespace {

std::array<uint8_t, 32> decode_key(const std::string& z85) {
  std::array<uint8_t, 32> bin{};
  zmq_z85_decode(bin.data(), z85.c_str());  // keys were validated when they were read
  return bin;
}

}  // namespace

ZapHandler::ZapHandler(zmq::context_t& ctx) : ctx_(ctx) {
  stop_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ZR_CHECK_MSG(stop_fd_ >= 0, "zap handler: eventfd failed");
  // Bind before returning: a CURVE socket bound after this call must never find no handler (libzmq
  // would then let every key in).
  std::promise<void> bound;
  thread_ = std::thread([this, &bound] {
    zmq::socket_t rep(ctx_, zmq::socket_type::rep);
    rep.set(zmq::sockopt::linger, 0);
    rep.bind(kEndpoint);
    bound.set_value();
    for (;;) {
      zmq::pollitem_t items[] = {{rep.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, stop_fd_, ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, 2, std::chrono::milliseconds(-1));
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        break;  // ETERM: the context is going away
      }
      if (items[1].revents & ZMQ_POLLIN) break;
      if (items[0].revents & ZMQ_POLLIN) answer(rep);
    }
  });
  bound.get_future().wait();
}

ZapHandler::~ZapHandler() {
  const uint64_t one = 1;
  (void)!::write(stop_fd_, &one, sizeof one);
  thread_.join();
  ::close(stop_fd_);
}

std::string ZapHandler::allow(const CurveServerKeys& keys) {
  std::map<Key, Role> roles;
  for (const auto& k : keys.client_keys) roles[decode_key(k)] = Role::client;
  for (const auto& k : keys.trainer_keys) roles[decode_key(k)] = Role::trainer;  // both: trainer
  std::lock_guard lock(mu_);
  std::string domain = "zrollout." + std::to_string(next_domain_++);
  domains_[domain] = std::move(roles);
  return domain;
}

Role ZapHandler::role_of(const std::string& domain, const std::string& key) const {
  if (key.size() != 32) return Role::none;
  Key k{};
  std::copy(key.begin(), key.end(), k.begin());
  std::lock_guard lock(mu_);
  auto d = domains_.find(domain);
  if (d == domains_.end()) return Role::none;
  auto r = d->second.find(k);
  return r == d->second.end() ? Role::none : r->second;
}

// One request: [version, request_id, domain, address, routing id, mechanism, credentials...]; the
// reply: [version, request_id, status_code, status_text, user_id, metadata].
void ZapHandler::answer(zmq::socket_t& rep) {
  std::vector<zmq::message_t> req;
  for (;;) {
    zmq::message_t m;
    if (!rep.recv(m, zmq::recv_flags::dontwait)) return;
    const bool more = m.more();
    req.push_back(std::move(m));
    if (!more) break;
  }
  Role role = Role::none;
  if (req.size() >= 7 && req[0].to_string() == "1.0" && req[5].to_string() == "CURVE")
    role = role_of(req[2].to_string(), req[6].to_string());
  const bool ok = role != Role::none;
  (ok ? admitted_ : denied_).fetch_add(1);
  if (!ok)
    spdlog::warn("zap: refused a CURVE handshake from {} (key not in the allow-lists)",
                 req.size() > 3 ? req[3].to_string() : std::string("?"));
  const std::string request_id = req.size() > 1 ? req[1].to_string() : std::string();
  rep.send(zmq::str_buffer("1.0"), zmq::send_flags::sndmore);
  rep.send(zmq::buffer(request_id), zmq::send_flags::sndmore);
  rep.send(ok ? zmq::str_buffer("200") : zmq::str_buffer("400"), zmq::send_flags::sndmore);
  rep.send(ok ? zmq::str_buffer("OK") : zmq::str_buffer("key not allowed"), zmq::send_flags::sndmore);
  rep.send(zmq::buffer(std::string(ok ? role_name(role) : "")), zmq::send_flags::sndmore);
  rep.send(zmq::message_t(), zmq::send_flags::none);
}

}  // namespace zr
