// Wire codec of the weight operations (update_weights, get_weight_version, get_weights_checksum,
// release_memory, resume_memory), on the same strict field-named schema as comm/wire_codec.h.
#pragma once

#include <optional>
#include <string_view>

#include "comm/messages.h"
#include "comm/wire_codec.h"

namespace zr::wire {

std::optional<InFlightPolicy> in_flight_from_name(std::string_view s);
const char* in_flight_name(InFlightPolicy p);
std::optional<WeightPath> weight_path_from_name(std::string_view s);
const char* weight_path_name(WeightPath p);

Result<UpdateWeightsCall> decode_update_weights(std::string_view body);
Result<WeightsChecksumCall> decode_weights_checksum(std::string_view body);
Result<MemoryCall> decode_memory(std::string_view body);

std::string encode(const UpdateWeightsCall& c);
std::string encode(const WeightsChecksumCall& c);
std::string encode(const MemoryCall& c);
std::string encode(const UpdateWeightsReply& r);
std::string encode(const WeightVersionReply& r);
std::string encode(const WeightsChecksumReply& r);
std::string encode(const MemoryReply& r);

Result<UpdateWeightsReply> update_weights_reply_from_json(const json& j);
Result<WeightVersionReply> weight_version_reply_from_json(const json& j);
Result<WeightsChecksumReply> weights_checksum_reply_from_json(const json& j);
Result<MemoryReply> memory_reply_from_json(const json& j);

}  // namespace zr::wire
