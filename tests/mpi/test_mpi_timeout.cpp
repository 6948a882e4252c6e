// bcast_buckets deadlines under mpirun (np = 2 and 3). MPI cannot cancel a collective, so each
// test runs on its own sub-group, lets one side time out, then has the late side call after all
// so the timed-out side can drain() its posted broadcasts and every rank leaves cleanly.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "tests/mpi/mpi_test_env.h"

namespace zr {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using testing::world;

constexpr size_t kBucket = size_t{1} << 20;  // above the shared-memory eager limit: needs the peer
constexpr size_t kBytes = 2 * kBucket;       // two buckets: a timed-out rank has posted both
constexpr milliseconds kDeadline{300};
constexpr milliseconds kGenerous{20000};

std::vector<char> pattern(size_t bytes = kBytes) {
  std::vector<char> v(bytes);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<char>(i * 7 + 1);
  return v;
}

// The side that waits in vain: times out within the deadline with a named diagnostic.
void expect_timeout(MpiGroup& g, std::vector<char>& buf, int root, size_t bucket = kBucket,
                    const std::string& first = "bucket 1/2 (1 MiB at offset 0)") {
  int calls = 0;
  auto t0 = Clock::now();
  Status s =
      g.bcast_buckets(buf.data(), buf.size(), root, bucket, kDeadline, [&](size_t, size_t, const void*) { ++calls; });
  auto waited = std::chrono::duration_cast<milliseconds>(Clock::now() - t0);
  EXPECT_EQ(s.code, ErrorCode::timeout) << s.to_string();
  EXPECT_GE(waited.count(), kDeadline.count());
  EXPECT_LT(waited.count(), kDeadline.count() + 5000) << "deadline overshot";
  const std::string want =
      "broadcast of " + first + " from rank " + std::to_string(root) + " did not complete within 300 ms";
  EXPECT_EQ(s.message, want);
  EXPECT_EQ(calls, 0);
  EXPECT_TRUE(g.poisoned());
  EXPECT_EQ(g.barrier().code, ErrorCode::unavailable);  // refuses without touching MPI
}

// bucket 1 MiB: 2 buckets of one segment; bucket 4 MiB: 2 buckets of two 2 MiB segments. Either
// way the transfer is one window (4 segments at most), so the late root's own call completes.
void receivers_time_out_then_drain(MpiGroup::ReceiveMode mode, size_t bucket, const std::string& first) {
  auto sub = world().split(0, world().rank());
  ASSERT_TRUE(sub.ok());
  sub->set_receive_mode(mode);
  const bool root = sub->rank() == 0;
  const size_t bytes = 2 * bucket;
  std::vector<char> buf = root ? pattern(bytes) : std::vector<char>(bytes, 0);
  if (!root) expect_timeout(*sub, buf, 0, bucket, first);
  ASSERT_TRUE(world().barrier().ok());  // every receiver has timed out
  if (root) {
    Status s = sub->bcast_buckets(buf.data(), buf.size(), 0, bucket, kGenerous);
    EXPECT_TRUE(s.ok()) << s.to_string();
  } else {
    Status d = sub->drain(kGenerous);
    EXPECT_TRUE(d.ok()) << d.to_string();
    if (mode == MpiGroup::ReceiveMode::in_place)
      EXPECT_TRUE(buf == pattern(bytes)) << "the late broadcast landed in the buffer";
    else  // it landed in the group's ring: buf is no longer MPI's once bcast_buckets returned
      EXPECT_TRUE(buf == std::vector<char>(bytes, 0)) << "a broadcast wrote into buf after bcast_buckets returned";
    EXPECT_TRUE(sub->poisoned());  // still: out of step as far as this rank can know
  }
  ASSERT_TRUE(world().barrier().ok());
}

TEST(MpiTimeout, ReceiversTimeOutWhenTheRootIsLateThenDrainInPlace) {
  receivers_time_out_then_drain(MpiGroup::ReceiveMode::in_place, kBucket, "bucket 1/2 (1 MiB at offset 0)");
  receivers_time_out_then_drain(MpiGroup::ReceiveMode::in_place, 4 * kBucket,
                                "bucket 1/2, segment 1/2 (2 MiB at offset 0)");
}

TEST(MpiTimeout, ReceiversTimeOutWhenTheRootIsLateThenDrainThroughTheRing) {
  receivers_time_out_then_drain(MpiGroup::ReceiveMode::ring, kBucket, "bucket 1/2 (1 MiB at offset 0)");
  receivers_time_out_then_drain(MpiGroup::ReceiveMode::ring, 4 * kBucket,
                                "bucket 1/2, segment 1/2 (2 MiB at offset 0)");
}

TEST(MpiTimeout, RootTimesOutWhenReceiversAreLateThenDrains) {
  auto sub = world().split(0, world().rank());
  ASSERT_TRUE(sub.ok());
  sub->set_receive_mode(MpiGroup::ReceiveMode::pipeline);  // a late peer completes the pipeline only
  const bool root = sub->rank() == 0;
  std::vector<char> buf = root ? pattern() : std::vector<char>(kBytes, 0);
  if (root) expect_timeout(*sub, buf, 0);
  ASSERT_TRUE(world().barrier().ok());
  if (root) {
    Status d = sub->drain(kGenerous);
    EXPECT_TRUE(d.ok()) << d.to_string();
  } else {
    Status s = sub->bcast_buckets(buf.data(), buf.size(), 0, kBucket, kGenerous);
    EXPECT_TRUE(s.ok()) << s.to_string();
    EXPECT_TRUE(buf == pattern());
  }
  ASSERT_TRUE(world().barrier().ok());
}

TEST(MpiTimeout, DrainItselfHasADeadline) {
  auto sub = world().split(0, world().rank());
  ASSERT_TRUE(sub.ok());
  sub->set_receive_mode(MpiGroup::ReceiveMode::pipeline);
  const bool root = sub->rank() == 0;
  std::vector<char> buf = root ? pattern() : std::vector<char>(kBytes, 0);
  if (!root) {
    expect_timeout(*sub, buf, 0);
    auto t0 = Clock::now();
    Status d = sub->drain(milliseconds(200));  // root still absent
    EXPECT_EQ(d.code, ErrorCode::timeout) << d.to_string();
    EXPECT_LT(std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count(), 5000);
  }
  ASSERT_TRUE(world().barrier().ok());
  if (root) EXPECT_TRUE(sub->bcast_buckets(buf.data(), buf.size(), 0, kBucket, kGenerous).ok());
  else EXPECT_TRUE(sub->drain(kGenerous).ok());
  ASSERT_TRUE(world().barrier().ok());
}

// The pull form (automatic on one host, pull forced here so np=3 on 2 cores agrees too): while
// the ranks agree on it, a late root makes its receivers time out naming the first bucket, as the
// pipeline does; they drain what they posted (the agreement's buffers are the group's, not a stack
// frame's) once the root comes. The late root cannot complete a pull its receivers left: it times
// out too, naming the same bucket, instead of hanging.
TEST(MpiTimeout, PullReceiversTimeOutWhenTheRootIsLateAndTheLateRootTimesOutToo) {
  auto sub = world().split(0, world().rank());
  ASSERT_TRUE(sub.ok());
  sub->set_receive_mode(MpiGroup::ReceiveMode::automatic);  // kBytes is 2 MiB: pulled where it can be
  const bool root = sub->rank() == 0;
  std::vector<char> buf = root ? pattern() : std::vector<char>(kBytes, 0);
  if (!root) expect_timeout(*sub, buf, 0);
  ASSERT_TRUE(world().barrier().ok());  // every receiver has timed out
  if (root) {
    expect_timeout(*sub, buf, 0);
  } else {
    Status d = sub->drain(kGenerous);
    EXPECT_TRUE(d.ok()) << d.to_string();
    EXPECT_TRUE(buf == std::vector<char>(kBytes, 0)) << "nothing was pulled after the receivers gave up";
  }
  ASSERT_TRUE(world().barrier().ok());
}

}  // namespace
}  // namespace zr
