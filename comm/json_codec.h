// JSON form of the wire structs (the CLI's JSONL files). Parsing is strict: wrong types, unknown
// fields and malformed values are errors that name the field ("sampling_params.top_k: expected an
// integer"). Floats are written with the shortest decimal that reads back as the same float32.
#pragma once

#include <nlohmann/json.hpp>

#include "comm/messages.h"
#include "comm/status.h"

namespace zr {

Result<GenerateRequest> generate_request_from_json(const nlohmann::json& j);
Result<ScoreRequest> score_request_from_json(const nlohmann::json& j);
Result<SamplingParams> sampling_params_from_json(const nlohmann::json& j);

nlohmann::json to_json(const SampleOutput& o);
nlohmann::json to_json(const ScoreOutput& o);
nlohmann::json error_to_json(const std::string& rid, const Status& st);

// The double whose shortest decimal form is the shortest one of f (so JSON output stays short and
// reads back as exactly f).
double json_float(float f);

}  // namespace zr
