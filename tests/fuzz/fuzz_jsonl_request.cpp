// libFuzzer target: one line of the CLI's JSONL input (comm/json_codec.h), as `zrollout generate`,
// `score` and `client` read it. Any line gives a request or an error naming the field, never a
// crash or an exception out of the decoder.
#include <cstddef>
#include <cstdint>

#include "comm/json_codec.h"

using namespace zr;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  auto g = generate_request_from_json(j);
  auto s = score_request_from_json(j);
  if (!g.ok() && g.status().message.empty()) __builtin_trap();  // an error always says what is wrong
  if (!s.ok() && s.status().message.empty()) __builtin_trap();
  if (j.is_object() && j.contains("sampling_params")) (void)sampling_params_from_json(j["sampling_params"]);
  return 0;
}
