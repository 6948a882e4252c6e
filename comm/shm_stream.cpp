#include "comm/shm_stream.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>

#include "comm/checksum.h"

namespace zr {

namespace {

constexpr uint64_t kVersionAt = 0, kWrittenAt = 8, kChecksumsAt = 64;
constexpr uint64_t kPiece = uint64_t{1} << 20;    // between two looks at the publish step
constexpr uint64_t kPublish = uint64_t{4} << 20;  // readers are told about progress this often

// The header word at byte `at`, accessed atomically (readers map the segment read-only and only load).
std::atomic_ref<uint64_t> word(const uint8_t* seg, uint64_t at) {
  return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(const_cast<uint8_t*>(seg) + at));
}

}  // namespace

uint64_t shm_stream_offset(size_t num_tensors) { return (kChecksumsAt + 8 * num_tensors + 4095) / 4096 * 4096; }

ShmStreamWriter::ShmStreamWriter(void* segment, uint64_t shm_offset, int64_t version)
    : seg_(static_cast<uint8_t*>(segment)), offset_(shm_offset) {
  word(seg_, kWrittenAt).store(0, std::memory_order_relaxed);
  word(seg_, kVersionAt).store(static_cast<uint64_t>(version), std::memory_order_release);
}

uint64_t ShmStreamWriter::write(size_t i, const TensorMeta& m, const void* src, std::optional<uint64_t> claimed) {
  const auto* from = static_cast<const uint8_t*>(src);
  uint8_t* to = seg_ + offset_ + m.offset;
  uint64_t sum = 0;
  for (uint64_t done = 0; done < m.nbytes;) {
    const uint64_t n = std::min(kPiece, m.nbytes - done);
    sum += checksum64_copy_partial(to + done, from + done, n, done);
    done += n;
    if (m.offset + done - published_ >= kPublish && done < m.nbytes) {
      published_ = m.offset + done;
      word(seg_, kWrittenAt).store(published_, std::memory_order_release);
    }
  }
  const uint64_t checksum = claimed ? *claimed : checksum64_finish(sum, m.nbytes);
  word(seg_, kChecksumsAt + 8 * i).store(checksum, std::memory_order_relaxed);
  published_ = m.offset + m.nbytes;
  word(seg_, kWrittenAt).store(published_, std::memory_order_release);
  return checksum;
}

void ShmStreamWriter::mark(size_t i, const TensorMeta& m, uint64_t checksum) {
  word(seg_, kChecksumsAt + 8 * i).store(checksum, std::memory_order_relaxed);
  published_ = m.offset + m.nbytes;
  word(seg_, kWrittenAt).store(published_, std::memory_order_release);
}

ShmStreamReader::ShmStreamReader(const void* segment, int64_t version, std::chrono::milliseconds stall)
    : seg_(static_cast<const uint8_t*>(segment)), version_(version), stall_(stall) {}

uint64_t ShmStreamReader::written() const { return word(seg_, kWrittenAt).load(std::memory_order_acquire); }

Status ShmStreamReader::wait_for(uint64_t end) {
  if (seen_ >= end) return {};
  auto last_progress = std::chrono::steady_clock::now();
  for (int spins = 0;; ++spins) {
    if (uint64_t v = word(seg_, kVersionAt).load(std::memory_order_acquire); v != static_cast<uint64_t>(version_))
      return make_error(ErrorCode::invalid_argument, "shm_stream: the segment is being written for version " +
                                                         std::to_string(v) + ", not " + std::to_string(version_));
    const uint64_t w = written();
    if (w >= end) {
      seen_ = w;
      return {};
    }
    auto now = std::chrono::steady_clock::now();
    if (w > seen_) {
      seen_ = w;
      last_progress = now;
    } else if (now - last_progress > stall_) {
      return make_error(ErrorCode::timeout, "shm_stream: the trainer stopped writing at byte " + std::to_string(w) +
                                                " (waiting for " + std::to_string(end) + "; no progress for " +
                                                std::to_string(stall_.count()) + " ms)");
    }
    // A few MiB arrive every few hundred microseconds: spin briefly, then sleep in short steps.
    if (spins < 64) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

uint64_t ShmStreamReader::checksum(size_t i) const {
  return word(seg_, kChecksumsAt + 8 * i).load(std::memory_order_relaxed);
}

}  // namespace zr
