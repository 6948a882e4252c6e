// The worst case of bcast_buckets' deadline (np = 2): the root never calls at all. The receivers
// must get ErrorCode::timeout within the deadline, and every rank must still leave cleanly: the
// poisoned sub-group is dropped undrained (its communicator is leaked on purpose) and MPI is
// finalized. Its own binary, so a regression that hangs at exit hits this ctest's TIMEOUT only.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "tests/mpi/mpi_test_env.h"

namespace zr {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

TEST(MpiAbandoned, RootNeverCallsReceiversTimeOutAndAllRanksExit) {
  MpiGroup& world = testing::world();
  auto sub = world.split(0, world.rank());
  ASSERT_TRUE(sub.ok());
  if (sub->rank() != 0) {
    std::vector<char> buf(size_t{8} << 20);
    auto t0 = Clock::now();
    Status s = sub->bcast_buckets(buf.data(), buf.size(), 0, size_t{1} << 20, milliseconds(250));
    auto waited = std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count();
    EXPECT_EQ(s.code, ErrorCode::timeout) << s.to_string();
    EXPECT_NE(s.message.find("bucket 1/8 (1 MiB at offset 0) from rank 0 did not complete within 250 ms"),
              std::string::npos)
        << s.message;
    EXPECT_GE(waited, 250);
    EXPECT_LT(waited, 5250);
    EXPECT_TRUE(sub->poisoned());
    EXPECT_EQ(sub->drain(milliseconds(50)).code, ErrorCode::timeout);
    // buf must outlive the posted broadcasts: keep it until the process ends.
    static std::vector<char> keep_alive;
    keep_alive.swap(buf);
  }
  ASSERT_TRUE(world.barrier().ok());  // the world communicator is unaffected
}

}  // namespace
}  // namespace zr
