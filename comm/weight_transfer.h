// Contracts of the weight-transfer layer (implemented in comm/mpi_group.*, comm/shm_segment.*,
// comm/checksum.*). Tensor bytes never travel inside msgpack: the update_weights message carries
// TensorMeta entries and the bytes come by MPI broadcast, a shared-memory segment, or files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace zr {

// One tensor of a weight update, as listed in update_weights.
struct TensorMeta {
  std::string name;   // Hugging Face name, e.g. "model.layers.0.mlp.up_proj.weight"
  std::string dtype;  // "F32" | "BF16" | "F16"
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
  uint64_t checksum = 0;  // checksum64 of the bytes
  uint64_t offset = 0;    // byte offset in the transfer (the concatenation, in list order,
                          // each tensor aligned to 64 bytes)
};

enum class WeightPath { broadcast, ipc, disk };
enum class InFlightPolicy { drain, abort, continue_, recompute };

}  // namespace zr
