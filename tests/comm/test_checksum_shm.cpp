// checksum64 against an independent reference of the algorithm documented in comm/checksum.h,
// TransferVerifier, the streamed segment header (ShmStreamWriter/Reader), and ShmSegment (create /
// fork-open / mode / unlink / errors).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "comm/checksum.h"
#include "comm/shm_segment.h"
#include "comm/shm_stream.h"

namespace zr {
namespace {

// ---- reference: the header's text, transcribed as plainly as possible -------------------------

uint64_t ref_checksum64(const std::vector<uint8_t>& bytes) {
  const uint64_t P1 = 0x9E3779B97F4A7C15ull, P2 = 0xC2B2AE3D27D4EB4Full, P3 = 0x165667B19E3779F9ull;
  const uint64_t F1 = 0xFF51AFD7ED558CCDull, F2 = 0xC4CEB9FE1A85EC53ull;
  const uint64_t n = bytes.size();
  const uint64_t words = (n + 7) / 8;
  uint64_t s = 0;
  for (uint64_t i = 0; i < words; ++i) {
    uint64_t w = 0;
    for (uint64_t b = 0; b < 8; ++b) {  // little-endian, zero past the end
      uint64_t pos = 8 * i + b;
      uint64_t byte = pos < n ? bytes[pos] : 0;
      w |= byte << (8 * b);
    }
    uint64_t x = w ^ ((i + 1) * P1);
    x = x * P2;
    x = x ^ (x >> 32);
    x = x * P3;
    x = x ^ (x >> 29);
    s = s + x;
  }
  uint64_t h = s ^ ((n + 1) * P3);
  h = h ^ (h >> 33);
  h = h * F1;
  h = h ^ (h >> 33);
  h = h * F2;
  h = h ^ (h >> 33);
  return h;
}

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

uint64_t cks(const std::vector<uint8_t>& v) { return checksum64(v.data(), v.size()); }

// Pinned once from ref_checksum64 (and cross-checked with a pure-Python transcription of the
// header). Changing any of these changes the wire contract with trainers.
struct KnownVector {
  std::vector<uint8_t> input;
  uint64_t expected;
};

std::vector<KnownVector> known_vectors() {
  std::vector<uint8_t> seq32(32), seq1000(1000);
  for (size_t i = 0; i < seq32.size(); ++i) seq32[i] = static_cast<uint8_t>(i);
  for (size_t i = 0; i < seq1000.size(); ++i) seq1000[i] = static_cast<uint8_t>((i * 31 + 7) & 0xff);
  return {
      {bytes_of(""), 0xF490368ABA8BFEACull},
      {bytes_of("a"), 0xD36E5DBB75D0E9E6ull},
      {bytes_of("abc"), 0x01452FFFEFC42B01ull},
      {bytes_of("12345678"), 0x81A243167D1BF714ull},
      {bytes_of("123456789"), 0x3E6DB7F32E31894Full},
      {seq32, 0x655A9B598BC29AAEull},
      {seq1000, 0xC145F962DA9A72B2ull},
      {std::vector<uint8_t>(4096, 0), 0xCE8E3050506899A4ull},
  };
}

TEST(Checksum64, KnownVectors) {
  for (const auto& kv : known_vectors()) {
    SCOPED_TRACE("input length " + std::to_string(kv.input.size()));
    EXPECT_EQ(ref_checksum64(kv.input), kv.expected);
    EXPECT_EQ(cks(kv.input), kv.expected);
  }
}

TEST(Checksum64, MatchesReferenceOnEveryLengthAndAlignment) {
  auto data = random_bytes(600, 1);
  for (size_t misalign = 0; misalign < 8; ++misalign) {
    for (size_t n = 0; n + misalign <= 600; n += (n < 80 ? 1 : 37)) {
      std::vector<uint8_t> piece(data.begin() + misalign, data.begin() + misalign + n);
      ASSERT_EQ(checksum64(data.data() + misalign, n), ref_checksum64(piece)) << "n=" << n << " misalign=" << misalign;
    }
  }
}

TEST(Checksum64, SingleBitFlipAnywhereChangesIt) {
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{33}, size_t{4099}}) {
    auto data = random_bytes(n, n);
    const uint64_t base = cks(data);
    for (size_t bit = 0; bit < n * 8; ++bit) {
      data[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
      ASSERT_NE(cks(data), base) << "n=" << n << " bit=" << bit;
      data[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    }
  }
}

TEST(Checksum64, TwoBitFlipsInDifferentWordsChangeIt) {
  auto data = random_bytes(512, 9);
  const uint64_t base = cks(data);
  std::mt19937_64 rng(3);
  for (int t = 0; t < 20000; ++t) {
    size_t i = rng() % 64, j = rng() % 64, bit = rng() % 64;
    if (i == j) continue;
    auto v = data;
    v[i * 8 + bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));  // same bit of two words: the
    v[j * 8 + bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));  // hardest case for a sum
    ASSERT_NE(cks(v), base) << "words " << i << "," << j << " bit " << bit;
  }
}

TEST(Checksum64, LengthSensitivity) {
  std::vector<uint8_t> zeros(1025, 0);
  std::set<uint64_t> seen;
  for (size_t n = 0; n <= 1024; ++n) EXPECT_TRUE(seen.insert(checksum64(zeros.data(), n)).second) << "n=" << n;
  auto data = random_bytes(100, 5);
  auto longer = data;
  longer.push_back(0);  // a trailing zero byte lands in the same zero-padded word
  EXPECT_NE(cks(data), cks(longer));
}

TEST(Checksum64, SwappedWordsChangeIt) {
  auto data = random_bytes(64, 11);
  auto swapped = data;
  std::swap_ranges(swapped.begin(), swapped.begin() + 8, swapped.begin() + 8);
  EXPECT_NE(cks(data), cks(swapped));
}

TEST(Checksum64, PartialSumsCombineInAnyOrder) {
  auto data = random_bytes(10007, 2);
  std::vector<size_t> cuts = {0, 8, 64, 4096, 4104, 9992, data.size()};
  uint64_t sum = 0;
  for (size_t k = cuts.size() - 1; k > 0; --k)  // back to front on purpose
    sum += checksum64_partial(data.data() + cuts[k - 1], cuts[k] - cuts[k - 1], cuts[k - 1]);
  EXPECT_EQ(checksum64_finish(sum, data.size()), cks(data));
}

TEST(Checksum64, ParallelEqualsSerial) {
  auto data = random_bytes((size_t{24} << 20) + 13, 4);
  const uint64_t serial = cks(data);
  for (unsigned t : {0u, 1u, 2u, 3u, 8u}) EXPECT_EQ(checksum64_parallel(data.data(), data.size(), t), serial) << t;
  EXPECT_EQ(checksum64_parallel(data.data(), 100, 4), checksum64(data.data(), 100));
}

TEST(Checksum64, CopyPartialCopiesAndSumsLikePartial) {
  auto data = random_bytes(20000, 9);
  for (size_t n : {size_t{0}, size_t{5}, size_t{8}, size_t{63}, size_t{4096}, size_t{19990}})
    for (size_t misalign : {size_t{0}, size_t{3}, size_t{8}}) {
      std::vector<uint8_t> dst(n + 16, 0xAB);
      const uint64_t off = 8 * misalign;  // the piece's place in a larger input
      uint64_t got = checksum64_copy_partial(dst.data() + misalign, data.data() + misalign, n, off);
      EXPECT_EQ(got, checksum64_partial(data.data() + misalign, n, off)) << "n=" << n << " misalign=" << misalign;
      EXPECT_TRUE(std::equal(data.begin() + misalign, data.begin() + misalign + n, dst.begin() + misalign));
      EXPECT_EQ(dst[misalign + n], 0xAB) << "wrote past the end, n=" << n;
    }
}

// ---- TransferVerifier -------------------------------------------------------------------------

struct Transfer {
  std::vector<TensorMeta> metas;
  std::vector<uint8_t> bytes;
};

Transfer make_transfer() {
  Transfer t;
  for (uint64_t nb : {uint64_t{1000}, uint64_t{3}, uint64_t{70000}, uint64_t{64}, uint64_t{12345}}) {
    TensorMeta m;
    m.name = "t" + std::to_string(t.metas.size());
    m.dtype = "F32";
    m.nbytes = nb;
    t.metas.push_back(m);
  }
  uint64_t total = assign_transfer_offsets(t.metas);
  t.bytes = random_bytes(total, 6);
  for (auto& m : t.metas) {
    EXPECT_EQ(m.offset % 64, 0u);
    m.checksum = checksum64(t.bytes.data() + m.offset, m.nbytes);
  }
  return t;
}

TEST(TransferVerifier, BucketsCuttingTensorsVerify) {
  Transfer t = make_transfer();
  for (size_t bucket : {size_t{64}, size_t{4096}, size_t{65536}, t.bytes.size()}) {
    TransferVerifier v(t.metas);
    for (size_t off = 0; off < t.bytes.size(); off += bucket) {
      // Each piece from its own buffer, as bcast_buckets' receive ring hands them over.
      std::vector<uint8_t> piece(t.bytes.begin() + off, t.bytes.begin() + std::min(off + bucket, t.bytes.size()));
      v.add(piece.data(), off, piece.size());
    }
    EXPECT_TRUE(v.verify().ok()) << bucket << ": " << v.verify().to_string();
  }
}

TEST(TransferVerifier, CorruptByteNamesTheTensor) {
  Transfer t = make_transfer();
  t.bytes[t.metas[2].offset + 777] ^= 0x10;
  TransferVerifier v(t.metas);
  v.add(t.bytes.data(), 0, t.bytes.size());
  Status s = v.verify();
  EXPECT_EQ(s.code, ErrorCode::checksum_mismatch);
  EXPECT_NE(s.message.find("tensor t2"), std::string::npos) << s.message;
}

TEST(TransferVerifier, MissingBytesAreAnIoError) {
  Transfer t = make_transfer();
  TransferVerifier v(t.metas);
  v.add(t.bytes.data(), 0, 4096);
  Status s = v.verify();
  EXPECT_EQ(s.code, ErrorCode::io_error);
  EXPECT_NE(s.message.find("tensor t2"), std::string::npos) << s.message;
}

// ---- ShmStream --------------------------------------------------------------------------------

TEST(ShmStream, ReaderFollowsAWriterAndSeesItsChecksums) {
  Transfer t = make_transfer();
  const uint64_t at = shm_stream_offset(t.metas.size());
  EXPECT_EQ(at % 4096, 0u);
  EXPECT_GE(at, 64 + 8 * t.metas.size());
  std::vector<uint64_t> seg((at + t.bytes.size()) / 8 + 1, 0);
  ShmStreamWriter w(seg.data(), at, 7);
  std::thread writer([&] {
    for (size_t i = 0; i < t.metas.size(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      EXPECT_EQ(w.write(i, t.metas[i], t.bytes.data() + t.metas[i].offset), t.metas[i].checksum);
    }
  });
  ShmStreamReader r(seg.data(), 7, std::chrono::seconds(10));
  const auto* base = reinterpret_cast<const uint8_t*>(seg.data()) + at;
  for (size_t i = 0; i < t.metas.size(); ++i) {
    const TensorMeta& m = t.metas[i];
    ASSERT_TRUE(r.wait_for(m.offset + m.nbytes).ok());
    EXPECT_GE(r.written(), m.offset + m.nbytes);
    EXPECT_EQ(r.checksum(i), m.checksum) << i;
    EXPECT_EQ(checksum64(base + m.offset, m.nbytes), m.checksum) << i;  // the bytes are there
  }
  writer.join();
}

TEST(ShmStream, MarkedTensorsCarryTheirChecksumsWithoutBytes) {
  Transfer t = make_transfer();
  const uint64_t at = shm_stream_offset(t.metas.size());
  std::vector<uint64_t> header(at / 8, 0);  // the header only: the bytes are elsewhere (a pull)
  ShmStreamWriter w(header.data(), at, 9);
  ShmStreamReader r(header.data(), 9, std::chrono::milliseconds(50));
  const TensorMeta& first = t.metas[0];
  EXPECT_EQ(r.wait_for(first.offset + first.nbytes).code, ErrorCode::timeout);  // nothing marked yet
  for (size_t i = 0; i < t.metas.size(); ++i) w.mark(i, t.metas[i], t.metas[i].checksum);
  const TensorMeta& last = t.metas.back();
  ASSERT_TRUE(r.wait_for(last.offset + last.nbytes).ok());
  for (size_t i = 0; i < t.metas.size(); ++i) EXPECT_EQ(r.checksum(i), t.metas[i].checksum) << i;
}

TEST(ShmStream, AStalledWriterOrAnotherVersionIsAnError) {
  Transfer t = make_transfer();
  const uint64_t at = shm_stream_offset(t.metas.size());
  std::vector<uint64_t> seg((at + t.bytes.size()) / 8 + 1, 0);
  ShmStreamWriter w(seg.data(), at, 3);
  w.write(0, t.metas[0], t.bytes.data());
  ShmStreamReader stalled(seg.data(), 3, std::chrono::milliseconds(50));
  EXPECT_TRUE(stalled.wait_for(t.metas[0].nbytes).ok());
  Status st = stalled.wait_for(t.metas[1].offset + t.metas[1].nbytes);
  EXPECT_EQ(st.code, ErrorCode::timeout) << st.to_string();
  EXPECT_NE(st.message.find("stopped writing at byte " + std::to_string(t.metas[0].nbytes)), std::string::npos)
      << st.message;
  ShmStreamReader other(seg.data(), 4, std::chrono::seconds(10));
  st = other.wait_for(1);
  EXPECT_EQ(st.code, ErrorCode::invalid_argument) << st.to_string();
  EXPECT_NE(st.message.find("version 3"), std::string::npos) << st.message;
}

// ---- ShmSegment -------------------------------------------------------------------------------

TEST(ShmSegment, ForkedChildOpensAndReadsTheSameBytes) {
  const size_t n = (size_t{8} << 20) + 5;
  auto seg = ShmSegment::create("test-fork", n);
  ASSERT_TRUE(seg.ok()) << seg.status().to_string();
  auto data = random_bytes(n, 7);
  std::memcpy(seg->data(), data.data(), n);
  const uint64_t expected = cks(data);
  const std::string name = seg->name();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // child: only async-signal-safe-ish work, then _exit
    auto r = ShmSegment::open(name, n, /*read_only=*/true);
    int code = !r.ok() ? 2 : (checksum64(r->data(), r->size()) == expected && r->size() == n ? 0 : 3);
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: open failed, 3: bytes differ";
}

TEST(ShmSegment, ModeIsOwnerOnly) {
  auto seg = ShmSegment::create("test-mode", 4096);
  ASSERT_TRUE(seg.ok()) << seg.status().to_string();
  int fd = ::shm_open(seg->name().c_str(), O_RDONLY, 0);
  ASSERT_GE(fd, 0);
  struct stat st {};
  ASSERT_EQ(::fstat(fd, &st), 0);
  ::close(fd);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(static_cast<size_t>(st.st_size), 4096u);
}

TEST(ShmSegment, UnlinkedAfterDestructor) {
  std::string name;
  {
    auto seg = ShmSegment::create("test-dtor", 4096);
    ASSERT_TRUE(seg.ok());
    name = seg->name();
    EXPECT_TRUE(ShmSegment::open(name, 4096, true).ok());
  }
  auto again = ShmSegment::open(name, 4096, true);
  EXPECT_EQ(again.status().code, ErrorCode::not_found) << again.status().to_string();
}

TEST(ShmSegment, OpenMissingNameIsNotFound) {
  auto r = ShmSegment::open("/zr-does-not-exist-0", 16, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code, ErrorCode::not_found);
  EXPECT_NE(r.status().message.find("/zr-does-not-exist-0"), std::string::npos);
}

TEST(ShmSegment, OpenLargerThanSegmentIsIoError) {
  auto seg = ShmSegment::create("test-small", 4096);
  ASSERT_TRUE(seg.ok());
  auto r = ShmSegment::open(seg->name(), 8192, true);
  EXPECT_EQ(r.status().code, ErrorCode::io_error);
  auto whole = ShmSegment::open(seg->name(), 0, true);  // 0: map all of it
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->size(), 4096u);
}

TEST(ShmSegment, ZeroSizeIsInvalid) {
  EXPECT_EQ(ShmSegment::create("x", 0).status().code, ErrorCode::invalid_argument);
}

TEST(ShmSegment, MappingOutlivesUnlink) {
  auto seg = ShmSegment::create("test-unlink", 4096);
  ASSERT_TRUE(seg.ok());
  auto reader = ShmSegment::open(seg->name(), 4096, true);
  ASSERT_TRUE(reader.ok());
  ASSERT_TRUE(seg->unlink().ok());
  EXPECT_TRUE(seg->unlink().ok());  // idempotent
  static_cast<char*>(seg->data())[100] = 42;
  EXPECT_EQ(static_cast<const char*>(reader->data())[100], 42);
  EXPECT_EQ(ShmSegment::open(seg->name(), 4096, true).status().code, ErrorCode::not_found);
}

TEST(ShmSegment, MoveTransfersOwnershipAndNamesAreUnique) {
  std::set<std::string> names;
  std::vector<ShmSegment> segs;
  for (int i = 0; i < 8; ++i) {
    auto seg = ShmSegment::create("bad/hint with spaces", 64);
    ASSERT_TRUE(seg.ok());
    EXPECT_EQ(seg->name().rfind("/zr-bad_hint_with_spaces-", 0), 0u) << seg->name();
    EXPECT_TRUE(names.insert(seg->name()).second);
    segs.push_back(std::move(seg.value()));
  }
  ShmSegment moved = std::move(segs[0]);
  EXPECT_EQ(segs[0].data(), nullptr);
  EXPECT_TRUE(moved.owner());
  std::string name = moved.name();
  segs.clear();  // moved-from segs[0] must not unlink the name
  EXPECT_TRUE(ShmSegment::open(name, 64, true).ok());
}

}  // namespace
}  // namespace zr
