// The framing of every zrollout message: one ZeroMQ multipart message
//
//   [routing id]   only between a ROUTER socket and this code; never seen by DEALER peers
//   op             utf-8 message type, e.g. "generate", "abort", "reply"
//   body           one msgpack map (the fields of the message struct, comm/messages.h)
//   bulk*          zero or more raw frames (tensor bytes, ...), never inside msgpack
//
// This header is the one place that includes cppzmq for the rest of the code base.
// Ownership: Frame owns its bytes; bulk frames are zmq::message_t (zero-copy on send).
#pragma once

#include <zmq.hpp>

#include <string>
#include <vector>

#include "comm/status.h"

namespace zr {

struct Frame {
  std::string routing_id;  // set by recv on a ROUTER socket; required by send on a ROUTER socket
  std::string op;
  std::string body;  // msgpack bytes
  std::vector<zmq::message_t> bulk;
  // The ZAP user id of the connection it came in on: the CURVE role ("client" / "trainer",
  // comm/curve_keys.h); "" when the connection is not authenticated (no CURVE, or inproc).
  std::string user_id{};
};

// Receives one multipart message (non-blocking when dontwait). Returns false when nothing was
// available. A message with too few parts yields a Frame with op empty and `err` set
// (bad_message), so the caller can reply with an error instead of dropping the peer.
bool recv_frame(zmq::socket_t& sock, bool router, Frame& out, Status& err, bool dontwait = true);
// Sends one message; bulk frames are moved out (zero-copy).
void send_frame(zmq::socket_t& sock, bool router, Frame& f);

}  // namespace zr
