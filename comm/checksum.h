// checksum64: the integrity checksum of weight bytes (TensorMeta::checksum). Not cryptographic:
// it catches corruption and mix-ups (wrong tensor, truncated or shifted transfer), not attackers.
//
// Algorithm (normative; a trainer in Python reimplements it from this text). All arithmetic is on
// unsigned 64-bit integers modulo 2^64; ">>" is a logical shift.
//
//   P1 = 0x9E3779B97F4A7C15   P2 = 0xC2B2AE3D27D4EB4F   P3 = 0x165667B19E3779F9
//   F1 = 0xFF51AFD7ED558CCD   F2 = 0xC4CEB9FE1A85EC53
//
//   1. Split the n input bytes into W = ceil(n / 8) words: w[i] is bytes [8i, 8i+8) read as a
//      little-endian uint64. If n % 8 != 0 the last word is completed with zero bytes.
//   2. For every word:  x = w[i] XOR ((i + 1) * P1)
//                       x = x * P2;  x = x XOR (x >> 32);  x = x * P3;  x = x XOR (x >> 29)
//      and s = the sum of all these x (mod 2^64; s = 0 when n = 0).
//   3. h = s XOR ((n + 1) * P3), then the murmur3 finalizer:
//      h = h XOR (h >> 33); h = h * F1; h = h XOR (h >> 33); h = h * F2; h = h XOR (h >> 33).
//      checksum64 = h.
//
//   numpy:  w = np.frombuffer(data + b"\0" * (-n % 8), "<u8"); i = np.arange(1, w.size + 1, dtype=np.uint64)
//           x = (w ^ (i * P1)) * P2; x ^= x >> 32; x *= P3; x ^= x >> 29; s = int(x.sum(dtype=np.uint64))
//           (numpy uint64 array arithmetic wraps mod 2^64; do step 3 with Python ints & (2**64 - 1)).
//
// Known values (pinned in tests/comm/test_checksum_shm.cpp, cross-checked in pure Python):
//   ""  -> 0xF490368ABA8BFEAC    "abc" -> 0x01452FFFEFC42B01    "123456789" -> 0x3E6DB7F32E31894F
//
// Properties. Each word's term is a bijection of that word, so changing any one 8-byte word (any
// single bit flip, any byte) always changes the checksum; the position key (i + 1) * P1 makes
// moved or swapped words visible; the length enters step 3, so trailing zero bytes count. Terms
// are independent of each other, so the sum can be split anywhere on an 8-byte boundary, computed
// in pieces, in any order, on any thread, and added: checksum64_partial / checksum64_finish below,
// which checksum64_parallel and per-bucket verification use. Speed: the word loop vectorizes
// (AVX-512 ~40 GB/s on data in cache on one Zen 5 core, AVX2 ~15, scalar ~8); the kernel is
// compiled for several ISAs and picked at run time.
//
// Thread-safety: all functions are pure; TransferVerifier is not thread-safe (one per thread, or
// external locking).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "comm/status.h"
#include "comm/weight_transfer.h"

namespace zr {

// The checksum of n bytes at data (data may be null when n == 0).
uint64_t checksum64(const void* data, size_t n);

// The step-2 sum over one piece of a larger input: `data` holds bytes [byte_offset, byte_offset+n)
// of the whole. byte_offset must be a multiple of 8; only the piece that ends the input may have
// n % 8 != 0 (it is zero-padded). Pieces' partial sums add (mod 2^64) to the whole's sum.
uint64_t checksum64_partial(const void* data, size_t n, uint64_t byte_offset);

// Copies n bytes from src to dst (which must not overlap) and returns checksum64_partial of them,
// in one pass over the bytes.
uint64_t checksum64_copy_partial(void* dst, const void* src, size_t n, uint64_t byte_offset);

// Step 3: the checksum of an input of total_bytes bytes whose pieces' partial sums add up to sum.
uint64_t checksum64_finish(uint64_t sum, uint64_t total_bytes);

// checksum64 computed by `threads` threads (the caller's thread included); same value as
// checksum64. threads <= 1 or a small n runs on the calling thread only.
uint64_t checksum64_parallel(const void* data, size_t n, unsigned threads);

// Lays out tensors for a transfer as TensorMeta::offset documents: in list order, each tensor's
// offset the previous end rounded up to 64 bytes. Returns the total transfer size in bytes.
uint64_t assign_transfer_offsets(std::vector<TensorMeta>& tensors);

// Verifies a transfer's per-tensor checksums while it arrives in pieces (e.g. from
// MpiGroup::bcast_buckets' on_segment). Pieces must start on 8-byte boundaries of the transfer
// (buckets of a multiple of 64 bytes do) and may cut tensors anywhere; each byte is fed once.
class TransferVerifier {
 public:
  // Keeps its own copy of the metas; tensors must be sorted by offset and must not overlap.
  explicit TransferVerifier(std::vector<TensorMeta> tensors);

  // Bytes [offset, offset + len) of the transfer, found at `bytes` (bytes[0] is transfer byte
  // `offset`).
  void add(const void* bytes, uint64_t offset, uint64_t len);

  // ok when every tensor was fully fed and matches; else checksum_mismatch naming the first
  // tensor that differs (expected and actual values), or io_error naming one not fully received.
  Status verify() const;
  // The same against `expected` (one checksum per tensor, in the order given to the constructor)
  // instead of the metas' checksum fields: a broadcast's checksum trailer.
  Status verify(std::span<const uint64_t> expected) const;
  // checksum64 of every tensor so far, in that order (the root of a broadcast with a trailer: what
  // it sent, once every byte was fed).
  std::vector<uint64_t> checksums() const;

 private:
  std::vector<TensorMeta> tensors_;
  std::vector<uint64_t> sums_;      // partial sums per tensor
  std::vector<uint64_t> received_;  // bytes fed per tensor
};

}  // namespace zr
