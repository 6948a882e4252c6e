// ShmSegment: a named POSIX shared-memory segment mapped into this process (the `ipc` weight path:
// the trainer writes a transfer into a segment it created, rollout processes on the same host open
// and map it by name, verify, and copy or adopt the bytes).
//
// Ownership: move-only RAII. The creator is the owner: its destructor unmaps and, unless unlink()
// was already called, unlinks the name. An opener's destructor only unmaps. A mapping stays valid
// after the name is unlinked (until every process unmaps it), so a creator may unlink as soon as
// every consumer has opened the segment: then nothing leaks even if a process crashes later.
//
// Security: segments are created O_EXCL with mode 0600 (owner only) under an unguessable name
// ("/zr-<hint>-<pid>-<counter>-<64 random bits>"), so a process of another user cannot open it
// and nobody can pre-create it.
//
// Memory: create() reserves the whole size up front (posix_fallocate: a full /dev/shm is a clean
// io_error, never a SIGBUS later), maps MAP_POPULATE (no page faults on the first write) and
// advises huge pages (used when /sys/kernel/mm/transparent_hugepage/shmem_enabled allows).
//
// Thread-safety: the object is not synchronized; the mapped bytes are plain shared memory (the
// processes agree on who writes when, e.g. by the update_weights message exchange).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "comm/status.h"

namespace zr {

class ShmSegment {
 public:
  // Creates and maps a new read-write segment of `bytes` (> 0) bytes, zero-filled. name_hint is
  // sanitized to [A-Za-z0-9_-] and cut to 32 characters. Errors: invalid_argument (bytes == 0),
  // io_error (shm_open / posix_fallocate / mmap failed, with errno text and the size).
  static Result<ShmSegment> create(std::string_view name_hint, size_t bytes);

  // Opens and maps an existing segment by the name() its creator reports. bytes == 0 maps the
  // whole segment; otherwise the segment must hold at least `bytes` bytes (io_error if smaller).
  // populate pre-faults the mapping (MAP_POPULATE): a slower open, a faster first read.
  // Errors: not_found (no such name), unavailable (permission denied), io_error (other).
  static Result<ShmSegment> open(const std::string& name, size_t bytes, bool read_only, bool populate = true);

  ShmSegment(ShmSegment&& other) noexcept;
  ShmSegment& operator=(ShmSegment&& other) noexcept;
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;
  ~ShmSegment();

  // Removes the name (openers that already mapped keep their mapping). Idempotent for the owner;
  // an opener may unlink too (e.g. to clean up after a crashed creator). ok if already gone.
  Status unlink();

  void* data() { return addr_; }
  const void* data() const { return addr_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }
  bool owner() const { return owner_; }
  bool read_only() const { return read_only_; }

 private:
  ShmSegment(std::string name, void* addr, size_t size, bool owner, bool read_only);
  void release();

  std::string name_;
  void* addr_ = nullptr;
  size_t size_ = 0;
  bool owner_ = false;
  bool read_only_ = false;
  bool unlinked_ = false;
};

}  // namespace zr
