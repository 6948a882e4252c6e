// The wire codec by type, for typed actor handlers (Actor::on<Request, Reply>, runtime/actor.h):
// wire_decode(body, op, tag) and wire_encode(reply, op) overloads over the per-op functions of
// wire_codec.h and wire_weights.h, found by argument-dependent lookup. `op` is the request's op:
// a few structs serve several ops (SessionCall, SimpleReply) and their fields depend on it.
#pragma once

#include <string>
#include <string_view>

#include "comm/messages.h"
#include "comm/status.h"

namespace zr {

// A request whose body is {req_id} alone (get_load, health, get_model_info, flush_cache,
// get_weight_version, shutdown), and the reply of shutdown.
struct ReqIdOnly {
  uint64_t req_id = 0;
};

template <class T>
struct WireTag {};

Result<ReqIdOnly> wire_decode(std::string_view body, std::string_view op, WireTag<ReqIdOnly>);
Result<SessionCall> wire_decode(std::string_view body, std::string_view op, WireTag<SessionCall>);
Result<TokenizeCall> wire_decode(std::string_view body, std::string_view op, WireTag<TokenizeCall>);
Result<DetokenizeCall> wire_decode(std::string_view body, std::string_view op, WireTag<DetokenizeCall>);
Result<WeightsChecksumCall> wire_decode(std::string_view body, std::string_view op, WireTag<WeightsChecksumCall>);
Result<MemoryCall> wire_decode(std::string_view body, std::string_view op, WireTag<MemoryCall>);
Result<GenerateCall> wire_decode(std::string_view body, std::string_view op, WireTag<GenerateCall>);
Result<ScoreCall> wire_decode(std::string_view body, std::string_view op, WireTag<ScoreCall>);
Result<AbortCall> wire_decode(std::string_view body, std::string_view op, WireTag<AbortCall>);
Result<UpdateWeightsCall> wire_decode(std::string_view body, std::string_view op, WireTag<UpdateWeightsCall>);

std::string wire_encode(const ReqIdOnly& r, std::string_view op);
std::string wire_encode(const SimpleReply& r, std::string_view op);
std::string wire_encode(const LoadReply& r, std::string_view op);
std::string wire_encode(const HealthReply& r, std::string_view op);
std::string wire_encode(const ModelInfoReply& r, std::string_view op);
std::string wire_encode(const TokenizeReply& r, std::string_view op);
std::string wire_encode(const DetokenizeReply& r, std::string_view op);
std::string wire_encode(const WeightVersionReply& r, std::string_view op);
std::string wire_encode(const WeightsChecksumReply& r, std::string_view op);
std::string wire_encode(const MemoryReply& r, std::string_view op);

}  // namespace zr
