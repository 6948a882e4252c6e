// MpiGroup collectives under mpirun (np = 2 and 4): endpoint exchange, split by role, barrier,
// allreduce, small broadcast, and bcast_buckets with per-bucket checksums.
#include <gtest/gtest.h>

#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "comm/checksum.h"
#include "tests/mpi/mpi_test_env.h"

namespace zr {
namespace {

using std::chrono::milliseconds;
using testing::world;

// Deterministic pseudo-random bytes (xorshift64*), fast enough for hundreds of MiB.
void fill_random(std::vector<char>& buf, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  size_t words = buf.size() / 8;
  for (size_t i = 0; i < words; ++i) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    uint64_t v = x * 0x2545F4914F6CDD1Dull;
    std::memcpy(buf.data() + 8 * i, &v, 8);
  }
  for (size_t i = words * 8; i < buf.size(); ++i) buf[i] = static_cast<char>(i * 13 + seed);
}

std::string endpoint_of(int rank) {
  return "role=" + std::string(rank == 0 ? "trainer" : "rollout") + " ep=tcp://10.0.0." + std::to_string(rank) + ":" +
         std::to_string(5555 + rank);
}

TEST(MpiGroup, WorldBasics) {
  EXPECT_TRUE(world().valid());
  EXPECT_GE(world().size(), 2);
  EXPECT_EQ(world().rank(), world().world_rank());
  EXPECT_GE(world().thread_level(), MpiGroup::ThreadLevel::serialized);
  EXPECT_FALSE(world().poisoned());
}

TEST(MpiGroup, AllgatherEndpoints) {
  auto all = world().allgather_strings(endpoint_of(world().rank()));
  ASSERT_TRUE(all.ok()) << all.status().to_string();
  ASSERT_EQ(static_cast<int>(all->size()), world().size());
  for (int r = 0; r < world().size(); ++r) EXPECT_EQ((*all)[static_cast<size_t>(r)], endpoint_of(r));
  // Empty and binary strings survive too.
  std::string mine = world().rank() % 2 ? std::string() : std::string("a\0b", 3);
  auto mixed = world().allgather_strings(mine);
  ASSERT_TRUE(mixed.ok());
  for (int r = 0; r < world().size(); ++r)
    EXPECT_EQ((*mixed)[static_cast<size_t>(r)], r % 2 ? std::string() : std::string("a\0b", 3));
}

TEST(MpiGroup, SplitByRole) {
  const int rank = world().rank(), size = world().size();
  const bool trainer = rank == 0;
  auto sub = world().split(trainer ? 0 : 1, rank);
  ASSERT_TRUE(sub.ok()) << sub.status().to_string();
  ASSERT_TRUE(sub->valid());
  EXPECT_EQ(sub->size(), trainer ? 1 : size - 1);
  EXPECT_EQ(sub->rank(), trainer ? 0 : rank - 1);
  EXPECT_EQ(sub->world_rank(), rank);
  // A collective inside the role group sees only its members, in key order.
  auto members = sub->allgather_strings(std::to_string(rank));
  ASSERT_TRUE(members.ok());
  for (int i = 0; i < sub->size(); ++i)
    EXPECT_EQ((*members)[static_cast<size_t>(i)], std::to_string(trainer ? 0 : i + 1));
  // Reversed keys reverse the order.
  auto reversed = world().split(0, size - rank);
  ASSERT_TRUE(reversed.ok());
  EXPECT_EQ(reversed->rank(), size - 1 - rank);
}

TEST(MpiGroup, SplitWithNoColorGivesAnInvalidGroup) {
  const bool out = world().rank() % 2 == 1;
  auto sub = world().split(out ? MpiGroup::kNoColor : 0, 0);
  ASSERT_TRUE(sub.ok());
  EXPECT_EQ(sub->valid(), !out);
  if (out) {
    EXPECT_EQ(sub->size(), 0);
    EXPECT_EQ(sub->barrier().code, ErrorCode::invalid_argument);
  } else {
    EXPECT_TRUE(sub->barrier().ok());
  }
}

TEST(MpiGroup, BarrierAndAllreduceSum) {
  ASSERT_TRUE(world().barrier().ok());
  const int size = world().size();
  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(world().rank() + 1) + 0.5f * static_cast<float>(i);
  ASSERT_TRUE(world().allreduce_sum(v.data(), v.size()).ok());
  const float ranks_sum = static_cast<float>(size * (size + 1) / 2);
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], ranks_sum + 0.5f * static_cast<float>(i) * size) << i;
}

TEST(MpiGroup, BcastSmall) {
  const int root = world().size() - 1;
  std::string meta = world().rank() == root ? std::string("{\"version\":7,\"tensors\":[\0]}", 26) : "stale";
  ASSERT_TRUE(world().bcast_small(meta, root).ok());
  EXPECT_EQ(meta, std::string("{\"version\":7,\"tensors\":[\0]}", 26));
  std::string empty = world().rank() == 0 ? "" : "not empty";
  ASSERT_TRUE(world().bcast_small(empty, 0).ok());
  EXPECT_EQ(empty, "");
  EXPECT_EQ(world().bcast_small(meta, world().size()).code, ErrorCode::invalid_argument);
}

// Root sends per-bucket checksums as metadata; every rank checks each bucket from the segments
// on_segment hands over (their `bytes`), and checks that `data` holds the same bytes by then.
void bucketed_roundtrip(size_t bytes, size_t bucket, int root, uint64_t seed) {
  const bool is_root = world().rank() == root;
  std::vector<char> buf(bytes, static_cast<char>(0x5A));
  if (is_root) fill_random(buf, seed);
  const size_t nbuckets = (bytes + bucket - 1) / bucket;
  std::string expected;  // nbuckets checksums, 8 bytes each
  if (is_root) {
    for (size_t k = 0; k < nbuckets; ++k) {
      uint64_t c = checksum64(buf.data() + k * bucket, std::min(bucket, bytes - k * bucket));
      expected.append(reinterpret_cast<const char*>(&c), 8);
    }
  }
  ASSERT_TRUE(world().bcast_small(expected, root).ok());
  ASSERT_EQ(expected.size(), nbuckets * 8);
  const size_t segment = std::min({bucket, size_t{2} << 20, (bytes + 63) / 64 * 64});  // bcast_buckets' segments
  std::vector<size_t> offsets;
  size_t bad = 0, not_in_data = 0;
  uint64_t sum = 0;  // of the current bucket, from its segments
  auto on_segment = [&](size_t off, size_t len, const void* at) {
    offsets.push_back(off);
    const size_t bucket_start = off / bucket * bucket, bucket_end = std::min(bytes, bucket_start + bucket);
    EXPECT_EQ(len, std::min(segment, bucket_end - off));
    if (std::memcmp(at, buf.data() + off, len) != 0) ++not_in_data;
    sum += checksum64_partial(at, len, off - bucket_start);
    if (off + len == bucket_end) {
      uint64_t want;
      std::memcpy(&want, expected.data() + 8 * (off / bucket), 8);
      if (checksum64_finish(sum, bucket_end - bucket_start) != want) ++bad;
      sum = 0;
    }
  };
  Status s = world().bcast_buckets(buf.data(), bytes, root, bucket, milliseconds(60000), on_segment);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(bad, 0u) << "buckets with a checksum mismatch on rank " << world().rank();
  EXPECT_EQ(not_in_data, 0u) << "segments whose bytes were not in data yet on rank " << world().rank();
  // Segments tile every bucket in order, none crossing a bucket's end.
  std::vector<size_t> want_offsets;
  for (size_t b = 0; b < bytes; b += bucket)
    for (size_t o = b; o < std::min(bytes, b + bucket); o += segment) want_offsets.push_back(o);
  EXPECT_EQ(offsets, want_offsets);
  // The whole transfer is identical everywhere.
  uint64_t total = checksum64_parallel(buf.data(), bytes, 2);
  auto all = world().allgather_strings(std::to_string(total));
  ASSERT_TRUE(all.ok());
  for (const auto& c : *all) EXPECT_EQ(c, (*all)[0]);
}

TEST(MpiGroup, BcastBuckets200MiBIn16MiBBuckets) { bucketed_roundtrip(size_t{200} << 20, size_t{16} << 20, 0, 1); }

TEST(MpiGroup, BcastBucketsOddSizesAndRootsThroughTheRingInPlaceAndMixed) {
  const int last = world().size() - 1;
  using Mode = MpiGroup::ReceiveMode;
  const Mode mixed = world().rank() % 2 ? Mode::ring : Mode::in_place;  // both kinds in one broadcast
  for (auto mode : {Mode::ring, Mode::in_place, mixed}) {
    SCOPED_TRACE(mode == Mode::ring ? "ring" : "in place");
    world().set_receive_mode(mode);
    bucketed_roundtrip((size_t{9} << 20) + 64, size_t{3} << 20, last, 5);  // 2 MiB + 1 MiB segments, ragged end
    bucketed_roundtrip(size_t{40} << 20, size_t{16} << 20, 0, 6);  // 8 segments per bucket: windows are segments
    bucketed_roundtrip((size_t{1} << 20) + 13, size_t{64} << 10, last, 2);  // ragged last bucket
    bucketed_roundtrip(1000, size_t{64} << 20, 1, 3);                       // one bucket, smaller
    bucketed_roundtrip(3 * 4096, 4096, 0, 4);                               // exact multiple
  }
  world().set_receive_mode(MpiGroup::ReceiveMode::automatic);
}

// last_bcast_phases() counts what the call did: 9 MiB + 64 B in 3 MiB buckets is 7 segments
// (2 + 1 MiB in each of 3 buckets, then 64 B); the caller's parts fit inside its total; a ring receiver says
// so, and its ring's pages are readable from smaps.
TEST(MpiGroup, BcastBucketsReportsItsPhases) {
  using Mode = MpiGroup::ReceiveMode;
  for (auto mode : {Mode::ring, Mode::in_place}) {
    world().set_receive_mode(mode);
    std::vector<char> buf((size_t{9} << 20) + 64, world().rank() == 0 ? 'x' : 0);
    int calls = 0;
    Status s = world().bcast_buckets(buf.data(), buf.size(), 0, size_t{3} << 20, milliseconds(30000),
                                     [&](size_t, size_t, const void*) { ++calls; });
    ASSERT_TRUE(s.ok()) << s.to_string();
    const auto& ph = world().last_bcast_phases();
    EXPECT_EQ(ph.segments, 7u);
    EXPECT_EQ(calls, 7);
    EXPECT_EQ(ph.ring, mode == Mode::ring && world().rank() != 0);
    EXPECT_GT(ph.total, 0.0);
    EXPECT_LE(ph.wait + ph.copy_out + ph.on_segment, ph.total + 1e-6);
    EXPECT_EQ(ph.copy_out > 0.0, ph.ring);
    if (ph.ring) {
      EXPECT_NE(world().receive_ring_pages().find("pages"), std::string::npos) << world().receive_ring_pages();
    }
    EXPECT_EQ(buf[buf.size() - 1], 'x');
  }
  world().set_receive_mode(MpiGroup::ReceiveMode::automatic);
}

TEST(MpiGroup, BcastBucketsZeroBytesCallsNothing) {
  int calls = 0;
  Status s = world().bcast_buckets(nullptr, 0, 0, MpiGroup::kDefaultBucketBytes, milliseconds(1000),
                                   [&](size_t, size_t, const void*) { ++calls; });
  EXPECT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(calls, 0);
}

TEST(MpiGroup, BcastBucketsRejectsBadArgumentsOnEveryRank) {
  std::vector<char> buf(4096);
  EXPECT_EQ(world().bcast_buckets(buf.data(), buf.size(), world().size(), 1024, milliseconds(100)).code,
            ErrorCode::invalid_argument);
  EXPECT_EQ(world().bcast_buckets(buf.data(), buf.size(), 0, 100, milliseconds(100)).code, ErrorCode::invalid_argument);
  EXPECT_EQ(world().bcast_buckets(buf.data(), buf.size(), 0, 1024, milliseconds(0)).code, ErrorCode::invalid_argument);
  EXPECT_FALSE(world().poisoned());
  EXPECT_TRUE(world().barrier().ok());
}

TEST(MpiGroup, OnBucketExceptionPropagatesAndPoisonsTheGroup) {
  auto sub = world().split(0, world().rank());
  ASSERT_TRUE(sub.ok());
  std::vector<char> buf(4 * 4096);
  // Every rank throws at segment 0 of 4: each posted 2 broadcasts (two buckets), matched everywhere.
  EXPECT_THROW(sub->bcast_buckets(buf.data(), buf.size(), 0, 4096, milliseconds(10000),
                                  [](size_t, size_t, const void*) { throw std::runtime_error("verify failed"); }),
               std::runtime_error);
  EXPECT_TRUE(sub->poisoned());
  EXPECT_TRUE(sub->drain(milliseconds(10000)).ok());
  Status again = sub->barrier();
  EXPECT_EQ(again.code, ErrorCode::unavailable);
  EXPECT_NE(again.message.find("on_segment threw"), std::string::npos) << again.message;
  EXPECT_TRUE(world().barrier().ok());
}

// ReceiveMode::pull on every rank: at np=2 on one host the receiver copies the bytes out of the
// root's buffer (process_vm_readv); the bytes, the on_segment cut and the trailer are as through
// the pipeline. Elsewhere (np=4 on 2 cores, or a root sending pieces) the pipeline runs.
TEST(MpiGroup, BcastBucketsPullEqualsThePipeline) {
  world().set_receive_mode(MpiGroup::ReceiveMode::pull);
  std::vector<char> src((size_t{5} << 20) + 24);
  fill_random(src, 7);
  for (size_t bucket : {size_t{4} << 20, size_t{64} << 10}) {
    std::vector<char> buf = world().rank() == 0 ? src : std::vector<char>(src.size(), 0);
    uint64_t trailer = world().rank() == 0 ? 0 : 1;
    size_t calls = 0, next = 0;
    bool in_order = true;
    Status s = world().bcast_buckets(
        buf.data(), buf.size(), 0, bucket, milliseconds(60000),
        [&](size_t off, size_t len, const void* at) {
          in_order = in_order && off == next && len <= (size_t{2} << 20) && std::memcmp(at, src.data() + off, len) == 0;
          next = off + len, ++calls;
          if (world().rank() == 0 && next == src.size()) trailer = 42;
        },
        std::as_writable_bytes(std::span(&trailer, 1)));
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_TRUE(in_order) << "bucket " << bucket;
    EXPECT_EQ(next, src.size());
    EXPECT_EQ(calls, world().last_bcast_phases().segments);
    EXPECT_EQ(trailer, 42u);
    EXPECT_TRUE(buf == src) << "bucket " << bucket << " on rank " << world().rank();
    // Two cores per receiver (mpirun --bind-to none: the host's cores): pulled, on every rank.
    const unsigned cores = std::thread::hardware_concurrency();
    EXPECT_EQ(world().last_bcast_phases().pull, cores >= 2 * static_cast<unsigned>(world().size() - 1));
  }
  EXPECT_FALSE(world().poisoned());
  world().set_receive_mode(MpiGroup::ReceiveMode::automatic);
  EXPECT_TRUE(world().barrier().ok());
}

// The root sends from scattered pieces (bcast_buckets_from), the others receive one buffer with
// bcast_buckets: the buffer must equal the pieces laid end to end, padding as zeros, and the
// trailer the root filled from what its on_segment saw must reach every rank. The sizes put
// segments inside one piece (sent in place), across pieces and across padding (assembled), with
// empty pieces and a ragged end, through the ring and in place.
TEST(MpiGroup, BcastBucketsFromPiecesEqualsOneBuffer) {
  const int root = world().size() - 1;
  const std::vector<size_t> sizes = {(size_t{5} << 20) + 40, 0,        24, size_t{3} << 20, 0,
                                     (size_t{1} << 20) + 8,  4096 + 8, 7};
  std::vector<std::vector<char>> data(sizes.size());
  std::vector<MpiGroup::RootPiece> pieces;
  std::vector<char> expected;
  for (size_t i = 0; i < sizes.size(); ++i) {
    data[i].resize(sizes[i]);
    fill_random(data[i], 100 + i);
    const bool padding = i == 2 || i == 6;  // null pieces: zeros
    pieces.push_back({padding ? nullptr : data[i].data(), sizes[i]});
    if (padding) expected.insert(expected.end(), sizes[i], char{0});
    else expected.insert(expected.end(), data[i].begin(), data[i].end());
  }
  using Mode = MpiGroup::ReceiveMode;
  const unsigned cores = std::thread::hardware_concurrency();
  for (auto mode : {Mode::ring, Mode::in_place, Mode::pull}) {
    SCOPED_TRACE(mode == Mode::ring ? "ring" : mode == Mode::pull ? "pull" : "in place");
    world().set_receive_mode(mode);
    for (size_t bucket : {size_t{4} << 20, size_t{64} << 10}) {
      std::vector<char> got(expected.size(), char{1});
      // The root's on_segment sees each segment where it was sent from; its last call fills the
      // trailer (checksum64 of what it saw, then the number of calls), which follows the bytes.
      uint64_t trailer[2] = {0, 0};
      std::vector<char> seen(expected.size(), char{1});
      uint64_t calls = 0;
      auto on_root_segment = [&](size_t off, size_t len, const void* at) {
        std::memcpy(seen.data() + off, at, len);
        if (++calls, off + len == seen.size()) trailer[0] = checksum64(seen.data(), seen.size()), trailer[1] = calls;
      };
      Status s = world().rank() == root
                     ? world().bcast_buckets_from(pieces, root, bucket, milliseconds(60000), on_root_segment,
                                                  std::as_writable_bytes(std::span(trailer)))
                     : world().bcast_buckets(got.data(), got.size(), root, bucket, milliseconds(60000), {},
                                             std::as_writable_bytes(std::span(trailer)));
      ASSERT_TRUE(s.ok()) << s.to_string();
      EXPECT_EQ(trailer[0], checksum64(expected.data(), expected.size())) << "bucket " << bucket;
      EXPECT_EQ(trailer[1], world().last_bcast_phases().segments) << "bucket " << bucket;
      if (world().rank() != root) {
        EXPECT_TRUE(got == expected) << "bucket " << bucket << " on rank " << world().rank();
      } else {
        EXPECT_TRUE(seen == expected) << "bucket " << bucket << ": the root's on_segment";
      }
      // pull: the receivers read the root's pieces where they lie (two cores per receiver).
      EXPECT_EQ(world().last_bcast_phases().pull,
                mode == Mode::pull && cores >= 2 * static_cast<unsigned>(world().size() - 1));
    }
  }
  world().set_receive_mode(Mode::automatic);
  // Only the root may send from pieces; the others are refused before any collective starts.
  if (world().rank() != root) {
    EXPECT_EQ(world().bcast_buckets_from(pieces, root).code, ErrorCode::invalid_argument);
  }
  EXPECT_FALSE(world().poisoned());
  EXPECT_TRUE(world().barrier().ok());
}

}  // namespace
}  // namespace zr
