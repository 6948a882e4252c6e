#include "comm/frame.h"

namespace zr {

bool recv_frame(zmq::socket_t& sock, bool router, Frame& out, Status& err, bool dontwait) {
  out = Frame{};
  err = Status{};
  std::vector<zmq::message_t> parts;
  auto flags = dontwait ? zmq::recv_flags::dontwait : zmq::recv_flags::none;
  for (;;) {
    zmq::message_t m;
    auto r = sock.recv(m, parts.empty() ? flags : zmq::recv_flags::none);
    if (!r) return false;  // EAGAIN before the first part
    bool more = m.more();
    parts.push_back(std::move(m));
    if (!more) break;
  }
  size_t i = 0;
  // Every part that came off the wire carries the connection's metadata (a ROUTER's routing-id part
  // is made locally and has none); a connection without ZAP has no User-Id.
  if (const char* uid = zmq_msg_gets(parts.back().handle(), "User-Id")) out.user_id = uid;
  if (router) out.routing_id = parts[i++].to_string();
  if (parts.size() < i + 2) {
    err = make_error(ErrorCode::bad_message,
                     "frame: expected [op, body, bulk...] with " + std::to_string(parts.size() - i) + " part(s)");
    return true;
  }
  out.op = parts[i++].to_string();
  out.body = parts[i++].to_string();
  for (; i < parts.size(); ++i) out.bulk.push_back(std::move(parts[i]));
  return true;
}

void send_frame(zmq::socket_t& sock, bool router, Frame& f) {
  if (router) sock.send(zmq::buffer(f.routing_id), zmq::send_flags::sndmore);
  sock.send(zmq::buffer(f.op), zmq::send_flags::sndmore);
  sock.send(zmq::buffer(f.body), f.bulk.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore);
  for (size_t i = 0; i < f.bulk.size(); ++i)
    sock.send(f.bulk[i], i + 1 == f.bulk.size() ? zmq::send_flags::none : zmq::send_flags::sndmore);
  f.bulk.clear();
}

}  // namespace zr
