#include "comm/ipc_pull.h"

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "comm/host_pages.h"

namespace zr {

namespace {

constexpr uint64_t kVersionAt = 0, kChecksumsAt = 64;  // comm/shm_stream.h

std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

}  // namespace

PullBuffer::~PullBuffer() {
  if (data_) ::munmap(data_, size_);
}

Status PullBuffer::reserve(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  if (bytes <= size_) return {};
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  // Over-map by one huge page to align the start on 2 MiB, so every page can be a huge one.
  void* raw = ::mmap(nullptr, rounded + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED)
    return make_error(ErrorCode::io_error,
                      "pull buffer: mmap of " + std::to_string(rounded) + " bytes: " + errno_text(errno));
  auto* p = static_cast<uint8_t*>(raw);
  const size_t lead = (kHuge - reinterpret_cast<uintptr_t>(p) % kHuge) % kHuge;
  if (lead) ::munmap(p, lead);
  if (kHuge - lead) ::munmap(p + lead + rounded, kHuge - lead);
  p += lead;
  (void)::madvise(p, rounded, huge_pages_wanted() ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  if (data_) ::munmap(data_, size_);
  data_ = p;
  size_ = rounded;
  // Engines of the same user read this buffer with process_vm_readv; under Yama ptrace_scope 1
  // that needs the trainer's consent (Open MPI's vader does the same). Harmless elsewhere.
#ifdef PR_SET_PTRACER
  (void)::prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
#endif
  return {};
}

PullReader::PullReader(pid_t pid, uint64_t header, int64_t version, std::chrono::milliseconds stall)
    : pid_(pid), header_(header), version_(version), stall_(stall) {}

Status PullReader::read(void* dst, uint64_t remote, size_t n) const {
  auto* d = static_cast<uint8_t*>(dst);
  while (n > 0) {  // process_vm_readv may stop short (e.g. at 2 GiB)
    iovec local{d, n}, from{reinterpret_cast<void*>(remote), n};
    const ssize_t got = ::process_vm_readv(pid_, &local, 1, &from, 1, 0);
    if (got <= 0)
      return make_error(ErrorCode::io_error, "ipc pull: process_vm_readv of " + std::to_string(n) + " bytes from pid " +
                                                 std::to_string(pid_) + ": " + errno_text(got < 0 ? errno : EIO));
    d += got;
    remote += static_cast<uint64_t>(got);
    n -= static_cast<size_t>(got);
  }
  return {};
}

Status PullReader::probe() const {
  if (std::getenv("ZR_NO_IPC_PULL"))
    return make_error(ErrorCode::unsupported, "ipc pull: disabled on this engine (ZR_NO_IPC_PULL is set)");
  uint64_t word = 0;
  iovec local{&word, sizeof word}, from{reinterpret_cast<void*>(header_), sizeof word};
  if (::process_vm_readv(pid_, &local, 1, &from, 1, 0) == static_cast<ssize_t>(sizeof word)) return {};
  return make_error(ErrorCode::unsupported, "ipc pull: process_vm_readv from the trainer (pid " + std::to_string(pid_) +
                                                ") is not allowed here: " + errno_text(errno));
}

Status PullReader::wait_for(uint64_t end) {
  if (seen_ >= end) return {};
  auto last_progress = std::chrono::steady_clock::now();
  for (int spins = 0;; ++spins) {
    uint64_t head[2] = {0, 0};  // version, written
    ZR_RETURN_IF_ERROR(read(head, header_ + kVersionAt, sizeof head));
    if (head[0] != static_cast<uint64_t>(version_))
      return make_error(ErrorCode::invalid_argument, "ipc pull: the trainer is writing version " +
                                                         std::to_string(head[0]) + ", not " + std::to_string(version_));
    if (head[1] >= end) {
      seen_ = head[1];
      return {};
    }
    auto now = std::chrono::steady_clock::now();
    if (head[1] > seen_) {
      seen_ = head[1];
      last_progress = now;
    } else if (now - last_progress > stall_) {
      return make_error(ErrorCode::timeout, "ipc pull: the trainer stopped writing at byte " + std::to_string(head[1]) +
                                                " (waiting for " + std::to_string(end) + "; no progress for " +
                                                std::to_string(stall_.count()) + " ms)");
    }
    if (spins < 64) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

Result<std::vector<uint64_t>> PullReader::checksums(size_t n) const {
  std::vector<uint64_t> sums(n);
  if (n) ZR_RETURN_IF_ERROR(read(sums.data(), header_ + kChecksumsAt, 8 * n));
  return sums;
}

}  // namespace zr
