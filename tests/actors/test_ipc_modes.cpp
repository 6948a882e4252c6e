// The ipc path in each of its forms (pull, segment, 4 KiB pages) and the fallback order.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "actors/engine/weight_staging.h"
#include "tests/actors/weight_sync_fixture.h"

namespace zr {
namespace {

class IpcModes : public WeightSync {
 protected:
  void TearDown() override {
    ::unsetenv("ZR_NO_IPC_PULL");
    ::unsetenv("ZR_NO_HUGEPAGES");
  }
  // Three pushes (new buffers twice, then a reused one) in `mode`; each must serve the reference.
  void three_pushes(IpcMode mode, const std::string& want_mode) {
    serve();
    EXPECT_NE(served_greedy("before"), expected());
    PublishOptions po;
    po.ipc_mode = mode;
    for (int64_t v = 1; v <= 3; ++v) {
      auto res = trainer_->publish(real_, v, po);
      ASSERT_TRUE(res.ok()) << res.status().to_string();
      EXPECT_EQ(res->ipc_mode, want_mode);
      EXPECT_EQ(res->acks.at(0).version, v);
      EXPECT_GT(res->acks.at(0).zero_copy_tensors, 0);  // served in place from the transfer buffer
      EXPECT_EQ(served_greedy("v" + std::to_string(v)), expected()) << "version " << v;
    }
    actor_->stop();
  }
};

TEST_F(IpcModes, PullCommitsTheReference) { three_pushes(IpcMode::pull, "pull"); }
TEST_F(IpcModes, SegmentCommitsTheReference) { three_pushes(IpcMode::segment, "segment"); }

TEST_F(IpcModes, ForcedSmallPagesStillCommitTheReference) {
  ::setenv("ZR_NO_HUGEPAGES", "1", 1);
  three_pushes(IpcMode::pull, "pull");
}

TEST_F(IpcModes, AnEngineThatCannotPullGetsSegmentsFromThenOn) {
  ::setenv("ZR_NO_IPC_PULL", "1", 1);
  serve();
  PublishOptions po;
  po.ipc_mode = IpcMode::pull;
  auto first = trainer_->publish(real_, 1, po);
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  EXPECT_EQ(first->ipc_mode, "pull+segment");  // refused the pull, then got a segment
  EXPECT_EQ(served_greedy("first"), expected());
  auto second = trainer_->publish(real_, 2, po);
  ASSERT_TRUE(second.ok()) << second.status().to_string();
  EXPECT_EQ(second->ipc_mode, "segment");  // not asked to pull again
  EXPECT_EQ(*trainer_->weight_version(), 2);
  actor_->stop();
}

TEST_F(IpcModes, APulledTensorThatDiffersFromItsChecksumIsRefused) {
  serve();
  const auto before = served_greedy("before");
  auto ar = SafetensorsArchive::open_dir(real_);
  ASSERT_TRUE(ar.ok());
  std::vector<TensorRef> refs;
  for (const auto& [name, v] : ar->tensors())
    refs.push_back({name, dtype_name(v.dtype), v.shape, v.data, v.nbytes, {}});
  // Damaged before the publish: the last tensor, and a matmul weight whose bytes are packed as they
  // arrive (its pack, built before the mismatch shows, must not reach the serving weights).
  auto up = std::find_if(refs.begin(), refs.end(),
                         [](const TensorRef& r) { return r.name.find("up_proj") != std::string::npos; });
  ASSERT_NE(up, refs.end());
  for (TensorRef* r : {&refs.back(), &*up}) r->checksum = checksum64(r->data, r->nbytes) ^ 1;
  PublishOptions po;
  po.ipc_mode = IpcMode::pull;
  auto res = trainer_->publish(refs, 1, po);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code, ErrorCode::checksum_mismatch) << res.status().to_string();
  const std::string& msg = res.status().message;  // names the first damaged tensor in transfer order
  EXPECT_TRUE(msg.find(refs.back().name) != std::string::npos || msg.find(up->name) != std::string::npos) << msg;
  EXPECT_EQ(*trainer_->weight_version(), 0);
  EXPECT_EQ(served_greedy("after"), before);
  actor_->stop();
}

TEST_F(IpcModes, APullFromAProcessThatIsGoneIsRefusedAsUnsupported) {
  serve();
  std::vector<float> bytes(64, 1.0f);
  UpdateWeightsCall call;
  call.version = 1;
  call.path = WeightPath::ipc;
  call.tensors = {{"model.norm.weight", "F32", {64}, 256, checksum64(bytes.data(), 256), 0}};
  call.shm_bytes = 256;
  call.shm_offset = 4096;
  call.shm_stream = true;
  call.pull_pid = 0x3fffffff;  // above pid_max: no such process
  call.pull_addr = 4096;
  Status st = raw_update(call);
  EXPECT_EQ(st.code, ErrorCode::unsupported) << st.to_string();
  EXPECT_NE(st.message.find("ipc pull"), std::string::npos) << st.message;
  EXPECT_EQ(*trainer_->weight_version(), 0);
  actor_->stop();
}

// Pages of [p, p + bytes) resident in memory (mincore).
size_t resident_pages(const uint8_t* p, size_t bytes) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> in((bytes + page - 1) / page);
  if (::mincore(const_cast<uint8_t*>(p), bytes, in.data()) != 0) return 0;
  size_t n = 0;
  for (unsigned char c : in) n += c & 1;
  return n;
}

TEST(StagingPoolPrepare, PreparedBuffersAreBackedBeforeTheFirstUpdateTakesThem) {
  const size_t bytes = size_t{8} << 20, pages = bytes / static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  StagingPool pool;
  pool.prepare(bytes, 2);
  EXPECT_GT(pool.wait_prepared(), 0.0);
  auto a = pool.get(bytes, /*prefault=*/false);
  auto b = pool.get(bytes, /*prefault=*/false);  // `a` is held: the second prepared one
  ASSERT_TRUE(a && b);
  EXPECT_NE(a.get(), b.get());
  EXPECT_EQ(resident_pages(a.get(), bytes), pages);
  EXPECT_EQ(resident_pages(b.get(), bytes), pages);
  StagingPool cold;  // without prepare, a pull's buffer is faulted in by its first writer
  auto c = cold.get(bytes, /*prefault=*/false);
  ASSERT_TRUE(c);
  EXPECT_EQ(resident_pages(c.get(), bytes), 0u);
}

TEST(StagingPoolPrepare, ARefillAfterACommitBacksTheNextBuffer) {
  const size_t bytes = size_t{8} << 20, pages = bytes / static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  StagingPool pool;
  bool also_ran = false;
  pool.prepare(bytes, 1, [&] { also_ran = true; });  // the engine prefaults its first packs here
  pool.wait_prepared();
  EXPECT_TRUE(also_ran);
  auto a = pool.get(bytes, /*prefault=*/false);  // the first update's buffer, then served
  pool.refill(bytes);
  EXPECT_GT(pool.wait_prepared(), 0.0);
  auto b = pool.get(bytes, /*prefault=*/false);
  ASSERT_TRUE(a && b);
  EXPECT_NE(a.get(), b.get());
  EXPECT_EQ(resident_pages(b.get(), bytes), pages);  // backed by the refill, not by the update
}

TEST(StagingPoolPrepare, TurnedOffByTheEnvironment) {
  ::setenv("ZR_NO_STAGING_PREFAULT", "1", 1);
  StagingPool pool;
  pool.prepare(size_t{4} << 20, 2);
  EXPECT_EQ(pool.wait_prepared(), 0.0);
  auto a = pool.get(size_t{4} << 20, /*prefault=*/false);
  ::unsetenv("ZR_NO_STAGING_PREFAULT");
  ASSERT_TRUE(a);
  EXPECT_EQ(resident_pages(a.get(), size_t{4} << 20), 0u);
}

}  // namespace
}  // namespace zr
