// A streamed ipc transfer: the trainer writes the tensors into a shared-memory segment while the
// engines already read and verify what is written, so an update costs about one copy instead of
// a copy followed by a verifying read (UpdateWeightsCall::shm_stream, docs/protocol.md).
//
// Segment layout (normative; a trainer in another language writes the same):
//   bytes [0, 8)             version: the version being written, little-endian uint64
//   bytes [8, 16)            written: how many bytes of the transfer are written (only grows)
//   bytes [64, 64 + 8 n)     checksums: checksum64 of tensor i (list order), valid once written
//                            has reached the tensor's end
//   bytes [shm_offset, ...)  the transfer (TensorMeta offsets count from here); shm_offset is a
//                            multiple of 64, at least 64 + 8 n (shm_stream_offset gives the
//                            next multiple of 4096); tensors listed in increasing offsets
// Ordering: the writer stores version (and written = 0) before it sends update_weights, stores a
// tensor's bytes and checksum before it raises written past the tensor's end, and raises written
// with release semantics; readers load written with acquire semantics.
//
// Thread-safety: one writer per segment; any number of readers, each with its own reader object.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "comm/status.h"
#include "comm/weight_transfer.h"

namespace zr {

// Where the transfer starts in a streamed segment carrying n tensors.
uint64_t shm_stream_offset(size_t num_tensors);

class ShmStreamWriter {
 public:
  // Starts a transfer of `version` in the segment at `segment` (written = 0, then version).
  ShmStreamWriter(void* segment, uint64_t shm_offset, int64_t version);
  // Copies tensor i (bytes at src, placed at m.offset of the transfer) and checksums it as it goes
  // (pieces small enough to stay in cache), raising `written` every few MiB; returns the checksum
  // stored in the header: `claimed` when given (a checksum the caller got elsewhere: readers then
  // verify the bytes against it, and refuse them if they differ), else the one computed.
  // Tensors are written in list order.
  uint64_t write(size_t i, const TensorMeta& m, const void* src, std::optional<uint64_t> claimed = {});
  // Tensor i is readable elsewhere (a pull from the caller's own tensors, comm/ipc_pull.h): stores
  // its checksum and raises `written` past its end, copying nothing. Tensors in list order.
  void mark(size_t i, const TensorMeta& m, uint64_t checksum);

 private:
  uint8_t* seg_;
  uint64_t offset_;
  uint64_t published_ = 0;
};

class ShmStreamReader {
 public:
  // stall: how long `written` may stay still before wait_for gives up.
  ShmStreamReader(const void* segment, int64_t version, std::chrono::milliseconds stall);
  // Returns once bytes [0, end) of the transfer are written. Errors: invalid_argument (the header
  // carries another version: the segment is not being written for this update), timeout ("the
  // trainer stopped writing at byte N": no progress for `stall`).
  Status wait_for(uint64_t end);
  // The writer's checksum of tensor i; call after wait_for(end of tensor i) returned ok.
  uint64_t checksum(size_t i) const;
  uint64_t written() const;

 private:
  const uint8_t* seg_;
  int64_t version_;
  std::chrono::milliseconds stall_;
  uint64_t seen_ = 0;
};

}  // namespace zr
