// The `pull` form of the ipc weight path: the trainer keeps the header of a streamed segment
// (comm/shm_stream.h: version, written, checksums) in its own private memory (a PullBuffer), and
// each engine on the same host copies the bytes straight into its own buffer with
// process_vm_readv, one copy, as Open MPI's single-copy (CMA) transport does: from where the
// caller holds each tensor (UpdateWeightsCall::pull_addrs; the trainer only checksums them
// meanwhile, so a first push faults no fresh transfer buffer), or from a transfer laid out after
// the header (a writer that gives no pull_addrs). No shared memory is involved, so no page of it is mapped in
// 4 KiB pages on hosts whose shmem THP is off (a fresh 4 KiB mapping costs ~1.5 us per page:
// ~25x one memcpy for the first push of 438 MB), and the engine serves from its own huge pages.
//
// Permissions: process_vm_readv needs ptrace access to the trainer (same user, and Yama's
// ptrace_scope 0, or the trainer allowing it: PullBuffer calls prctl(PR_SET_PTRACER, ANY) as Open
// MPI does); containers may forbid the call (seccomp). PullReader::probe tells; the trainer falls
// back to a shared-memory segment for an engine that refuses a pull.
//
// Ordering: as for a streamed segment; the reader reads the header, then (a separate system
// call) the bytes it covers.
// Thread-safety: a PullBuffer is written by one thread; a PullReader is used by one thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "comm/status.h"

namespace zr {

// A private, page-aligned, growing buffer that engines may read with process_vm_readv. Kept
// between publishes (its pages stay faulted in).
class PullBuffer {
 public:
  PullBuffer() = default;
  PullBuffer(const PullBuffer&) = delete;
  PullBuffer& operator=(const PullBuffer&) = delete;
  ~PullBuffer();
  // At least `bytes` bytes (contents undefined after growth). Errors: io_error (mmap failed).
  Status reserve(size_t bytes);
  uint8_t* data() { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class PullReader {
 public:
  // Reads the streamed transfer whose header is at `header` in process `pid`.
  PullReader(pid_t pid, uint64_t header, int64_t version, std::chrono::milliseconds stall);
  // Whether this process may read the trainer's memory: ok, or unsupported naming errno
  // (EPERM: no ptrace access; ENOSYS: not allowed here; ESRCH: no such process; or ZR_NO_IPC_PULL
  // set in this engine's environment, which turns pulls off).
  Status probe() const;
  // As ShmStreamReader::wait_for (invalid_argument: another version; timeout: no progress).
  Status wait_for(uint64_t end);
  // Copies n bytes at `remote` (an address in the trainer) to dst. Errors: io_error.
  Status read(void* dst, uint64_t remote, size_t n) const;
  // The writer's checksums of tensors [0, n); call after wait_for(end of the last) returned ok.
  Result<std::vector<uint64_t>> checksums(size_t n) const;

 private:
  pid_t pid_;
  uint64_t header_;
  int64_t version_;
  std::chrono::milliseconds stall_;
  uint64_t seen_ = 0;
};

}  // namespace zr
