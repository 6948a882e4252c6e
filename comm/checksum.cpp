#include "comm/checksum.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>
#include <thread>

namespace zr {

namespace {

constexpr uint64_t kP1 = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kP3 = 0x165667B19E3779F9ull;
constexpr uint64_t kF1 = 0xFF51AFD7ED558CCDull;
constexpr uint64_t kF2 = 0xC4CEB9FE1A85EC53ull;

inline uint64_t load_le64(const unsigned char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  if constexpr (std::endian::native == std::endian::big) w = __builtin_bswap64(w);
  return w;
}

// One copy of a function per ISA, picked at load time by an ifunc resolver. Not under TSan: the
// resolver runs while the dynamic linker relocates the binary, before TSan's runtime is up, and its
// instrumented entry crashed every binary linking this file at load (test_checksum_shm, TSan run).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define ZR_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define ZR_ISA_CLONES
#endif

inline uint64_t word_term(uint64_t w, uint64_t key) {
  uint64_t x = (w ^ key) * kP2;
  x ^= x >> 32;
  x *= kP3;
  return x ^ (x >> 29);
}

// Sum of the terms of nw whole words at p, the first being word number first_index of the input.
// One simple loop: the compiler vectorizes it (this file is built with -O3), once per ISA below.
ZR_ISA_CLONES
uint64_t sum_words(const unsigned char* p, size_t nw, uint64_t first_index) {
  uint64_t key = (first_index + 1) * kP1;
  uint64_t s = 0;
  for (size_t i = 0; i < nw; ++i) {
    s += word_term(load_le64(p + 8 * i), key);
    key += kP1;
  }
  return s;
}

// The term of word number `index` when only its first `rest` (< 8) bytes exist: zero-padded.
uint64_t tail_term(const unsigned char* p, size_t rest, uint64_t index) {
  unsigned char tail[8] = {};
  std::memcpy(tail, p, rest);
  return word_term(load_le64(tail), (index + 1) * kP1);
}

// sum_words over the words at src, each also stored to dst (one pass: the bytes are checksummed
// from the registers they were copied through).
ZR_ISA_CLONES
uint64_t copy_sum_words(unsigned char* __restrict dst, const unsigned char* __restrict src, size_t nw,
                        uint64_t first_index) {
  uint64_t key = (first_index + 1) * kP1;
  uint64_t s = 0;
  for (size_t i = 0; i < nw; ++i) {
    uint64_t w;
    std::memcpy(&w, src + 8 * i, 8);
    std::memcpy(dst + 8 * i, &w, 8);
    if constexpr (std::endian::native == std::endian::big) w = __builtin_bswap64(w);
    s += word_term(w, key);
    key += kP1;
  }
  return s;
}

}  // namespace

uint64_t checksum64_copy_partial(void* dst, const void* src, size_t n, uint64_t byte_offset) {
  ZR_CHECK_MSG(byte_offset % 8 == 0,
               "checksum64_copy_partial: byte_offset " + std::to_string(byte_offset) + " is not a multiple of 8");
  auto* d = static_cast<unsigned char*>(dst);
  const auto* p = static_cast<const unsigned char*>(src);
  size_t whole = n / 8;
  uint64_t first = byte_offset / 8;
  uint64_t s = whole ? copy_sum_words(d, p, whole, first) : 0;
  if (size_t rest = n % 8) {
    std::memcpy(d + whole * 8, p + whole * 8, rest);
    s += tail_term(p + whole * 8, rest, first + whole);
  }
  return s;
}

uint64_t checksum64_partial(const void* data, size_t n, uint64_t byte_offset) {
  ZR_CHECK_MSG(byte_offset % 8 == 0,
               "checksum64_partial: byte_offset " + std::to_string(byte_offset) + " is not a multiple of 8");
  const auto* p = static_cast<const unsigned char*>(data);
  size_t whole = n / 8;
  uint64_t first = byte_offset / 8;
  uint64_t s = whole ? sum_words(p, whole, first) : 0;
  if (size_t rest = n % 8) s += tail_term(p + whole * 8, rest, first + whole);
  return s;
}

uint64_t checksum64_finish(uint64_t sum, uint64_t total_bytes) {
  uint64_t h = sum ^ ((total_bytes + 1) * kP3);
  h ^= h >> 33;
  h *= kF1;
  h ^= h >> 33;
  h *= kF2;
  h ^= h >> 33;
  return h;
}

uint64_t checksum64(const void* data, size_t n) { return checksum64_finish(checksum64_partial(data, n, 0), n); }

uint64_t checksum64_parallel(const void* data, size_t n, unsigned threads) {
  constexpr size_t kMinPerThread = size_t{4} << 20;  // below this a thread costs more than it saves
  size_t max_threads = std::max<size_t>(1, n / kMinPerThread);
  size_t t = std::min<size_t>(std::max(threads, 1u), max_threads);
  if (t == 1) return checksum64(data, n);
  const auto* p = static_cast<const unsigned char*>(data);
  size_t chunk = (n / t + 63) & ~size_t{63};  // pieces start on 8-byte (here 64-byte) boundaries
  std::vector<uint64_t> sums(t, 0);
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  for (size_t k = 1; k < t; ++k) {
    size_t off = std::min(n, k * chunk), len = std::min(n, off + chunk) - off;
    if (k == t - 1) len = n - off;
    pool.emplace_back([&sums, p, k, off, len] { sums[k] = checksum64_partial(p + off, len, off); });
  }
  sums[0] = checksum64_partial(p, std::min(n, chunk), 0);
  for (auto& th : pool) th.join();
  uint64_t s = 0;
  for (uint64_t v : sums) s += v;
  return checksum64_finish(s, n);
}

uint64_t assign_transfer_offsets(std::vector<TensorMeta>& tensors) {
  uint64_t end = 0;
  for (auto& t : tensors) {
    t.offset = (end + 63) & ~uint64_t{63};
    end = t.offset + t.nbytes;
  }
  return end;
}

TransferVerifier::TransferVerifier(std::vector<TensorMeta> tensors)
    : tensors_(std::move(tensors)), sums_(tensors_.size(), 0), received_(tensors_.size(), 0) {
  for (size_t i = 1; i < tensors_.size(); ++i)
    ZR_CHECK_MSG(tensors_[i].offset >= tensors_[i - 1].offset + tensors_[i - 1].nbytes,
                 "TransferVerifier: tensors unsorted or overlapping at " + tensors_[i].name);
}

void TransferVerifier::add(const void* bytes, uint64_t offset, uint64_t len) {
  const auto* b = static_cast<const unsigned char*>(bytes);
  uint64_t end = offset + len;
  // First tensor whose end is past offset.
  auto it = std::partition_point(tensors_.begin(), tensors_.end(),
                                 [offset](const TensorMeta& t) { return t.offset + t.nbytes <= offset; });
  for (size_t i = static_cast<size_t>(it - tensors_.begin()); i < tensors_.size(); ++i) {
    const TensorMeta& t = tensors_[i];
    if (t.offset >= end) break;
    uint64_t lo = std::max(offset, t.offset), hi = std::min(end, t.offset + t.nbytes);
    sums_[i] += checksum64_partial(b + (lo - offset), hi - lo, lo - t.offset);
    received_[i] += hi - lo;
  }
}

Status TransferVerifier::verify() const {
  std::vector<uint64_t> expected;
  for (const TensorMeta& t : tensors_) expected.push_back(t.checksum);
  return verify(expected);
}

std::vector<uint64_t> TransferVerifier::checksums() const {
  std::vector<uint64_t> out;
  for (size_t i = 0; i < tensors_.size(); ++i) out.push_back(checksum64_finish(sums_[i], tensors_[i].nbytes));
  return out;
}

Status TransferVerifier::verify(std::span<const uint64_t> expected) const {
  if (expected.size() != tensors_.size())
    return make_error(ErrorCode::invalid_argument, "checksums: " + std::to_string(expected.size()) + " for " +
                                                       std::to_string(tensors_.size()) + " tensors");
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const TensorMeta& t = tensors_[i];
    if (received_[i] != t.nbytes)
      return make_error(ErrorCode::io_error, "tensor " + t.name + ": received " + std::to_string(received_[i]) +
                                                 " of " + std::to_string(t.nbytes) + " bytes");
    uint64_t got = checksum64_finish(sums_[i], t.nbytes);
    if (got != expected[i]) {
      char buf[96];
      std::snprintf(buf, sizeof buf, ": checksum 0x%016llx, expected 0x%016llx", static_cast<unsigned long long>(got),
                    static_cast<unsigned long long>(expected[i]));
      return make_error(ErrorCode::checksum_mismatch, "tensor " + t.name + buf);
    }
  }
  return Status::ok_status();
}

}  // namespace zr
