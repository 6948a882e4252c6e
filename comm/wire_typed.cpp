#include "comm/wire_typed.h"

#include "comm/wire_codec.h"
#include "comm/wire_weights.h"

namespace zr {

Result<ReqIdOnly> wire_decode(std::string_view body, std::string_view, WireTag<ReqIdOnly>) {
  auto id = wire::decode_req_id_only(body);
  if (!id.ok()) return id.status();
  return ReqIdOnly{*id};
}
Result<SessionCall> wire_decode(std::string_view body, std::string_view op, WireTag<SessionCall>) {
  return op == "close_session" ? wire::decode_close_session(body) : wire::decode_open_session(body);
}
Result<TokenizeCall> wire_decode(std::string_view body, std::string_view, WireTag<TokenizeCall>) {
  return wire::decode_tokenize(body);
}
Result<DetokenizeCall> wire_decode(std::string_view body, std::string_view, WireTag<DetokenizeCall>) {
  return wire::decode_detokenize(body);
}
Result<WeightsChecksumCall> wire_decode(std::string_view body, std::string_view, WireTag<WeightsChecksumCall>) {
  return wire::decode_weights_checksum(body);
}
Result<MemoryCall> wire_decode(std::string_view body, std::string_view, WireTag<MemoryCall>) {
  return wire::decode_memory(body);
}
Result<GenerateCall> wire_decode(std::string_view body, std::string_view, WireTag<GenerateCall>) {
  return wire::decode_generate(body);
}
Result<ScoreCall> wire_decode(std::string_view body, std::string_view, WireTag<ScoreCall>) {
  return wire::decode_score(body);
}
Result<AbortCall> wire_decode(std::string_view body, std::string_view, WireTag<AbortCall>) {
  return wire::decode_abort(body);
}
Result<UpdateWeightsCall> wire_decode(std::string_view body, std::string_view, WireTag<UpdateWeightsCall>) {
  return wire::decode_update_weights(body);
}

std::string wire_encode(const ReqIdOnly& r, std::string_view) { return wire::encode_req_id_only(r.req_id); }
std::string wire_encode(const SimpleReply& r, std::string_view op) { return wire::encode_simple_reply(op, r); }
std::string wire_encode(const LoadReply& r, std::string_view) { return wire::encode(r); }
std::string wire_encode(const HealthReply& r, std::string_view) { return wire::encode(r); }
std::string wire_encode(const ModelInfoReply& r, std::string_view) { return wire::encode(r); }
std::string wire_encode(const TokenizeReply& r, std::string_view) { return wire::encode(r); }
std::string wire_encode(const DetokenizeReply& r, std::string_view) { return wire::encode(r); }
std::string wire_encode(const WeightVersionReply& r, std::string_view) { return wire::encode(r); }
std::string wire_encode(const WeightsChecksumReply& r, std::string_view) { return wire::encode(r); }
std::string wire_encode(const MemoryReply& r, std::string_view) { return wire::encode(r); }

}  // namespace zr
