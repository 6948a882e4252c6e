#include "comm/shm_segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <utility>

#include "comm/host_pages.h"

namespace zr {

namespace {

std::string errno_text(int err) { return std::string(std::strerror(err)); }

std::string unique_name(std::string_view hint) {
  static std::atomic<uint64_t> counter{0};
  std::string clean;
  for (char c : hint) {
    if (clean.size() >= 32) break;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    clean.push_back(ok ? c : '_');
  }
  if (clean.empty()) clean = "seg";
  std::random_device rd;
  uint64_t rnd = (uint64_t{rd()} << 32) ^ rd();
  char buf[96];
  std::snprintf(buf, sizeof buf, "-%d-%llu-%016llx", static_cast<int>(::getpid()),
                static_cast<unsigned long long>(counter.fetch_add(1)), static_cast<unsigned long long>(rnd));
  return "/zr-" + clean + buf;
}

// Closes a file descriptor at scope exit (the mapping outlives it).
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

ShmSegment::ShmSegment(std::string name, void* addr, size_t size, bool owner, bool read_only)
    : name_(std::move(name)), addr_(addr), size_(size), owner_(owner), read_only_(read_only) {}

Result<ShmSegment> ShmSegment::create(std::string_view name_hint, size_t bytes) {
  if (bytes == 0) return make_error(ErrorCode::invalid_argument, "shm segment size must be > 0");
  std::string name = unique_name(name_hint);
  int fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(ErrorCode::io_error, "shm_open(" + name + "): " + errno_text(errno));
  FdCloser closer{fd};
  auto fail = [&](const char* what, int err) -> Status {
    ::shm_unlink(name.c_str());
    return make_error(ErrorCode::io_error, std::string(what) + " of shm segment " + name + " (" +
                                               std::to_string(bytes) + " bytes): " + errno_text(err));
  };
  // umask may have cleared bits of 0600 but never adds any: the mode is at most 0600.
  if (int err = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes)); err != 0) return fail("posix_fallocate", err);
  void* addr = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (addr == MAP_FAILED) return fail("mmap", errno);
  // advisory: ignored when shmem THP is off (ZR_NO_HUGEPAGES: 4 KiB pages wherever THP is on)
  ::madvise(addr, bytes, huge_pages_wanted() ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  return ShmSegment(std::move(name), addr, bytes, /*owner=*/true, /*read_only=*/false);
}

Result<ShmSegment> ShmSegment::open(const std::string& name, size_t bytes, bool read_only, bool populate) {
  int fd = ::shm_open(name.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    ErrorCode code = err == ENOENT   ? ErrorCode::not_found
                     : err == EACCES ? ErrorCode::unavailable
                                     : ErrorCode::io_error;
    return make_error(code, "shm_open(" + name + "): " + errno_text(err));
  }
  FdCloser closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return make_error(ErrorCode::io_error, "fstat(" + name + "): " + errno_text(errno));
  auto have = static_cast<size_t>(st.st_size);
  if (bytes == 0) bytes = have;
  if (bytes == 0 || have < bytes)
    return make_error(ErrorCode::io_error, "shm segment " + name + " holds " + std::to_string(have) +
                                               " bytes, expected at least " +
                                               std::to_string(std::max<size_t>(bytes, 1)));
  int prot = read_only ? PROT_READ : PROT_READ | PROT_WRITE;
  void* addr = ::mmap(nullptr, bytes, prot, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
  if (addr == MAP_FAILED) return make_error(ErrorCode::io_error, "mmap(" + name + "): " + errno_text(errno));
  return ShmSegment(name, addr, bytes, /*owner=*/false, read_only);
}

ShmSegment::ShmSegment(ShmSegment&& other) noexcept
    : name_(std::move(other.name_)),
      addr_(std::exchange(other.addr_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      owner_(std::exchange(other.owner_, false)),
      read_only_(other.read_only_),
      unlinked_(std::exchange(other.unlinked_, false)) {}

ShmSegment& ShmSegment::operator=(ShmSegment&& other) noexcept {
  if (this != &other) {
    release();
    name_ = std::move(other.name_);
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
    owner_ = std::exchange(other.owner_, false);
    read_only_ = other.read_only_;
    unlinked_ = std::exchange(other.unlinked_, false);
  }
  return *this;
}

ShmSegment::~ShmSegment() { release(); }

void ShmSegment::release() {
  if (addr_) ::munmap(addr_, size_);
  if (owner_ && !unlinked_ && !name_.empty()) ::shm_unlink(name_.c_str());
  addr_ = nullptr;
  size_ = 0;
  owner_ = false;
}

Status ShmSegment::unlink() {
  if (unlinked_ || name_.empty()) return Status::ok_status();
  if (::shm_unlink(name_.c_str()) != 0 && errno != ENOENT)
    return make_error(ErrorCode::io_error, "shm_unlink(" + name_ + "): " + errno_text(errno));
  unlinked_ = true;
  return Status::ok_status();
}

}  // namespace zr
