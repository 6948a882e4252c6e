// JSON form of the wire structs (the CLI's JSONL files). Parsing is strict: wrong types, unknown
// fields and malformed values are errors that name the field ("sampling_params.top_k: expected an
// integer"). Floats are written with the shortest decimal that reads back as the same float32.
#pragma once

#include <nlohmann/json.hpp>

#include "comm/messages.h"
#include "comm/status.h"

namespace zr {

// A request without `rid` (or with "") gets a fresh one (fresh_rid), as SGLang does: the server
// assigns it and echoes it in the outputs (meta_info.id), so it can still be aborted by it.
Result<GenerateRequest> generate_request_from_json(const nlohmann::json& j);
Result<ScoreRequest> score_request_from_json(const nlohmann::json& j);
// 32 hex digits from a per-thread generator seeded from std::random_device (SGLang: uuid4().hex);
// unique in practice, so a generated rid never collides with another request in flight.
std::string fresh_rid();
Result<SamplingParams> sampling_params_from_json(const nlohmann::json& j);

nlohmann::json to_json(const SampleOutput& o);
nlohmann::json to_json(const ScoreOutput& o);
nlohmann::json error_to_json(const std::string& rid, const Status& st);

// The double whose shortest decimal form is the shortest one of f (so JSON output stays short and
// reads back as exactly f).
double json_float(float f);

}  // namespace zr
