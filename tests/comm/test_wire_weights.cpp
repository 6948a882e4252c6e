// Wire codec of the weight-update messages: the broadcast group's fields, the checksum trailer
// (broadcast only) and the ipc fields (segment offsets, the pull's addresses) round-trip and are
// checked, naming the field; the update and version replies carry the segments in use.
// (Split from test_wire_codec.cpp, which keeps the generate/score/reply codec and the fuzz pass.)
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

#include "comm/wire_codec.h"
#include "comm/wire_weights.h"

namespace zr {
namespace {

using namespace zr::wire;

TEST(WireCodec, UpdateWeightsBroadcastGroupFieldsRoundTripAndAreChecked) {
  UpdateWeightsCall c;
  c.version = 4;
  c.path = WeightPath::broadcast;
  c.tensors = {{"model.norm.weight", "F32", {64}, 256, 7, 0}};
  c.root = 0;
  c.group_epoch = 3;
  c.group_ranks = {0, 1, 2, 5, 6};
  auto back = decode_update_weights(encode(c));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->group_epoch, 3u);
  EXPECT_EQ(back->group_ranks, c.group_ranks);
  UpdateWeightsCall bad = c;
  bad.group_ranks.clear();  // an epoch past 0 names its members
  auto r = decode_update_weights(encode(bad));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message.find("group_ranks"), std::string::npos) << r.status().message;
  bad = c;
  bad.group_epoch = 0;  // epoch 0 is the whole group: no member list
  r = decode_update_weights(encode(bad));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message.find("group_ranks"), std::string::npos) << r.status().message;
  c.group_epoch = 0;
  c.group_ranks.clear();
  back = decode_update_weights(encode(c));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->group_epoch, 0u);
}

// checksum_trailer (broadcast only): round-trips, defaults to false, and is refused elsewhere.
TEST(WireCodec, UpdateWeightsChecksumTrailerIsBroadcastOnly) {
  UpdateWeightsCall c;
  c.version = 2;
  c.path = WeightPath::broadcast;
  c.tensors = {{"model.norm.weight", "F32", {64}, 256, 0, 0}};
  auto back = decode_update_weights(encode(c));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_FALSE(back->checksum_trailer);
  c.checksum_trailer = true;
  back = decode_update_weights(encode(c));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_TRUE(back->checksum_trailer);
  c.path = WeightPath::disk;
  c.disk_path = "/tmp/x";
  auto r = decode_update_weights(encode(c));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message.find("checksum_trailer"), std::string::npos) << r.status().message;
}

TEST(WireCodec, UpdateWeightsIpcFieldsAreChecked) {
  UpdateWeightsCall c;
  c.req_id = 3;
  c.version = 2;
  c.path = WeightPath::ipc;
  c.tensors = {{"model.norm.weight", "F32", {64}, 256, 7, 0}};
  c.shm_name = "/zr-x";
  c.shm_bytes = 8192;
  c.shm_offset = 4096;
  c.shm_stream = true;
  c.shm_keep = true;
  c.shm_pool = {"/zr-x", "/zr-y"};
  auto back = decode_update_weights(encode(c));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->shm_offset, 4096u);
  EXPECT_TRUE(back->shm_stream);
  EXPECT_TRUE(back->shm_keep);
  EXPECT_EQ(back->shm_pool, c.shm_pool);
  auto refused = [](UpdateWeightsCall bad, const std::string& field) {
    auto r = decode_update_weights(encode(bad));
    ASSERT_FALSE(r.ok()) << field;
    EXPECT_EQ(r.status().code, ErrorCode::invalid_argument) << r.status().to_string();
    EXPECT_NE(r.status().message.find(field), std::string::npos) << r.status().message;
  };
  UpdateWeightsCall bad = c;
  bad.shm_offset = 100;
  refused(bad, "shm_offset");                                    // not a multiple of 64
  bad.shm_offset = std::numeric_limits<uint64_t>::max() - 4095;  // a multiple of 64 that wraps
  refused(bad, "shm_offset");
  bad.shm_offset = 64;  // a streamed header needs 64 + 8 bytes for the one tensor
  refused(bad, "shm_offset");
  UpdateWeightsCall pull = c;  // a pull from the caller's tensors: one address per tensor
  pull.shm_name.clear();
  pull.pull_pid = 42;
  pull.pull_addr = 4096;
  pull.pull_addrs = {0x7f0000001000};
  auto pulled = decode_update_weights(encode(pull));
  ASSERT_TRUE(pulled.ok()) << pulled.status().to_string();
  EXPECT_EQ(pulled->pull_addrs, pull.pull_addrs);
  pull.pull_addrs = {1, 2};
  refused(pull, "pull_addrs");
  UpdateWeightsReply r{5, 2, 8192, 0.5, 0.25, 1, {"/zr-x"}};
  auto rj = unpack_body(encode(r));
  ASSERT_TRUE(rj.ok());
  auto rr = update_weights_reply_from_json(*rj);
  ASSERT_TRUE(rr.ok()) << rr.status().to_string();
  EXPECT_EQ(rr->shm_in_use, r.shm_in_use);
  WeightVersionReply v{6, 3, {"/zr-a", "/zr-b"}};
  auto vj = unpack_body(encode(v));
  ASSERT_TRUE(vj.ok());
  auto vr = weight_version_reply_from_json(*vj);
  ASSERT_TRUE(vr.ok()) << vr.status().to_string();
  EXPECT_EQ(vr->version, 3);
  EXPECT_EQ(vr->shm_in_use, v.shm_in_use);
}

}  // namespace
}  // namespace zr
