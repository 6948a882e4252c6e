// MpiGroup::survivors under mpirun (np = 2 and 4): the last rank plays a dead one (it never enters
// anything); the others re-form the group without it and broadcast over it, and its absence does
// not stop them. Bad member lists are refused locally, before any MPI call.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "comm/checksum.h"
#include "tests/mpi/mpi_test_env.h"

namespace zr {
namespace {

using std::chrono::milliseconds;
using testing::world;

std::vector<int> all_but_last() {
  std::vector<int> r(static_cast<size_t>(world().size() - 1));
  std::iota(r.begin(), r.end(), 0);
  return r;
}

TEST(MpiSurvivors, GroupWithoutTheDeadRankBroadcastsAndIsKeptPerEpoch) {
  const int last = world().size() - 1;
  if (world().rank() != last) {
    const auto members = all_but_last();
    auto g = world().survivors(1, members, milliseconds(30000));
    ASSERT_TRUE(g.ok()) << g.status().to_string();
    EXPECT_EQ((*g)->size(), last);
    EXPECT_EQ((*g)->rank(), world().rank());  // members in the weight group's order
    EXPECT_EQ(world().survivors_epoch(), 1u);
    std::vector<char> buf((size_t{3} << 20) + 64);
    if (world().rank() == 0)
      for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<char>(i * 31 + 7);
    const uint64_t want = [&] {
      std::vector<char> ref(buf.size());
      for (size_t i = 0; i < ref.size(); ++i) ref[i] = static_cast<char>(i * 31 + 7);
      return checksum64(ref.data(), ref.size());
    }();
    Status st = (*g)->bcast_buckets(buf.data(), buf.size(), 0, size_t{1} << 20, milliseconds(30000));
    ASSERT_TRUE(st.ok()) << st.to_string();
    EXPECT_EQ(checksum64(buf.data(), buf.size()), want);
    // The same epoch again: the same group, no new creation.
    auto again = world().survivors(1, members, milliseconds(1000));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *g);
    // A new epoch over the same members re-forms it (the trainer does so after a failed publish).
    auto next = world().survivors(2, members, milliseconds(30000));
    ASSERT_TRUE(next.ok()) << next.status().to_string();
    EXPECT_EQ(world().survivors_epoch(), 2u);
    EXPECT_TRUE((*next)->barrier().ok());
    EXPECT_EQ(world().survivors(1, members, milliseconds(1000)).status().code, ErrorCode::invalid_argument);  // older
  }
  EXPECT_EQ(world().world_ranks_of({0, last, last + 1}), (std::vector<int>{0, last, -1}));
}

TEST(MpiSurvivors, BadMemberListsAreRefusedWithoutMpi) {
  const int me = world().rank();
  std::vector<int> without_me;
  for (int r = 0; r < world().size(); ++r)
    if (r != me) without_me.push_back(r);
  auto refused = [](const Result<MpiGroup*>& r, const std::string& field) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code, ErrorCode::invalid_argument) << r.status().to_string();
    EXPECT_NE(r.status().message.find(field), std::string::npos) << r.status().message;
  };
  refused(world().survivors(100, without_me, milliseconds(100)), "leave out this rank");
  refused(world().survivors(100, {me, me}, milliseconds(100)), "increasing");
  refused(world().survivors(100, {me, world().size()}, milliseconds(100)), "increasing");
  refused(world().survivors(0, {me}, milliseconds(100)), "group_epoch: 0 is the whole group");
  auto whole = world().survivors(0, {}, milliseconds(100));
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(*whole, &world());
  EXPECT_TRUE(world().barrier().ok());
}

}  // namespace
}  // namespace zr
