// libFuzzer target: the safetensors header parser (model/safetensors.h) over a whole file's bytes.
// A parsed archive's every view lies inside the input (ASan checks the first and last byte).
#include <cstddef>
#include <cstdint>

#include "model/safetensors.h"

using namespace zr;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto ar = SafetensorsArchive::parse_bytes(data, size);
  if (!ar.ok()) return 0;
  volatile uint8_t sink = 0;
  for (const auto& [name, v] : ar->tensors()) {
    if (v.nbytes == 0) continue;
    const auto* p = static_cast<const uint8_t*>(v.data);
    if (p < data || p + v.nbytes > data + size) __builtin_trap();
    sink = sink ^ p[0] ^ p[v.nbytes - 1];
  }
  return 0;
}
