// Packs built while staging (model/weight_packs.h): a staged update's packs live beside the live
// ones until the commit swaps them in; a dropped update leaves the live packs alone; a steady
// state of pushes repacks into the pages of the packs two versions back.
#include <cstring>

#include "model/weight_packs.h"

#include "tests/actors/weight_sync_fixture.h"

namespace zr {
namespace {

using testing::expect_identical;
using testing::greedy_request;

std::vector<uint8_t> pack_bytes_of(const kernels::PackedMatrix& m) {
  const auto* p = static_cast<const uint8_t*>(m.storage.get());
  return std::vector<uint8_t>(p, p + m.bytes);
}

const void* pages_of(const Engine& eng, TensorRole role, int layer = -1) {
  auto m = eng.packs().find(role, layer);
  return m ? m->storage.get() : nullptr;
}

// The real weights staged from their folder with their packs, as an update's staging makes them.
StagedWeights stage_with_packs(Engine& eng, const std::string& dir, int64_t version) {
  auto staged = stage_from_disk(eng.weights(), dir, version);
  EXPECT_TRUE(staged.ok()) << staged.status().to_string();
  eng.build_packs(*staged);
  return std::move(staged).value();
}

TEST_F(WeightSync, AStagedThenDroppedUpdateLeavesTheLivePacksAndTheOutputs) {
  auto eng = testing::load_engine(mo_dir());
  const std::vector<int> prompt = ref_["prompt_ids"].get<std::vector<int>>();
  ASSERT_TRUE(eng->submit(greedy_request("before", prompt, 16)).ok());
  const auto before = testing::run_to_completion(*eng);
  const auto live = eng->packs().find(TensorRole::wq, 0);
  const auto live_head = eng->packs().find(TensorRole::lm_head);
  ASSERT_TRUE(live && live_head);
  const std::vector<uint8_t> wq_bytes = pack_bytes_of(*live), head_bytes = pack_bytes_of(*live_head);
  {
    StagedWeights staged = stage_with_packs(*eng, real_, 1);
    EXPECT_EQ(staged.packs.count(), eng->packs().count());  // every matmul weight changed
    auto staged_wq = staged.packs.find(TensorRole::wq, 0);
    ASSERT_TRUE(staged_wq);
    EXPECT_NE(staged_wq->storage.get(), live->storage.get());  // beside the live pack, not in it
    EXPECT_NE(pack_bytes_of(*staged_wq), wq_bytes);            // the real weights differ from the random ones
  }                                                            // dropped: never committed
  EXPECT_EQ(eng->packs().find(TensorRole::wq, 0), live);
  EXPECT_EQ(pack_bytes_of(*eng->packs().find(TensorRole::wq, 0)), wq_bytes);
  EXPECT_EQ(pack_bytes_of(*eng->packs().find(TensorRole::lm_head)), head_bytes);
  ASSERT_TRUE(eng->submit(greedy_request("after", prompt, 16)).ok());
  const auto after = testing::run_to_completion(*eng);
  expect_identical(before.samples.at("before")[0], after.samples.at("after")[0], "after a dropped stage");
}

// Requests decoding when a push commits under `continue`, then one submitted after the commit.
testing::RunResult continue_across_a_commit(Engine& eng, const std::string& real, bool staged_packs,
                                            const std::vector<int>& prompt, const void** committed_wq) {
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(eng.submit(greedy_request("run" + std::to_string(i), prompt, 12 + 4 * i)).ok());
  StepOutputs out;
  for (int i = 0; i < 5; ++i) eng.step(out);  // prefilled, a few tokens each
  StagedWeights staged =
      staged_packs ? stage_with_packs(eng, real, 1) : std::move(stage_from_disk(eng.weights(), real, 1)).value();
  auto wq = staged.packs.find(TensorRole::wq, 0);
  EXPECT_TRUE(eng.request_update(std::move(staged), {InFlightPolicy::continue_, false}, out).ok());
  EXPECT_EQ(eng.weight_version(), 1);  // committed at once: nothing blocks a continue
  if (committed_wq) *committed_wq = wq ? wq->storage.get() : nullptr;
  EXPECT_TRUE(eng.submit(greedy_request("late", prompt, 16)).ok());
  testing::RunResult r = testing::run_to_completion(eng);
  for (auto& o : out.finished) r.samples[o.rid].push_back(o);
  return r;
}

TEST_F(WeightSync, ACommitOfStagedPacksUnderContinueComputesAsAFreshEngineOnTheNewWeights) {
  const std::vector<int> prompt = ref_["prompt_ids"].get<std::vector<int>>();
  auto swapped = testing::load_engine(mo_dir());
  const void* staged_wq = nullptr;
  const auto a = continue_across_a_commit(*swapped, real_, /*staged_packs=*/true, prompt, &staged_wq);
  ASSERT_NE(staged_wq, nullptr);
  EXPECT_EQ(pages_of(*swapped, TensorRole::wq, 0), staged_wq);  // the commit swapped the staged pack in
  // The same run with the packs made inside the commit (the path before staged packs): same bits.
  auto packed_at_commit = testing::load_engine(mo_dir());
  const auto b = continue_across_a_commit(*packed_at_commit, real_, /*staged_packs=*/false, prompt, nullptr);
  for (const std::string rid : {"run0", "run1", "run2", "late"}) {
    ASSERT_EQ(a.samples.count(rid), 1u) << rid;
    const auto& spans = a.samples.at(rid)[0].meta_info.weight_version_spans;
    ASSERT_FALSE(spans.empty());
    EXPECT_EQ(spans.back().version, 1) << rid;
    expect_identical(a.samples.at(rid)[0], b.samples.at(rid)[0], rid + ": staged packs vs packed at commit");
  }
  // A request after the commit equals a fresh engine loaded with the new weights.
  auto fresh = testing::load_engine(real_);
  ASSERT_TRUE(fresh->submit(greedy_request("late", prompt, 16)).ok());
  const auto f = testing::run_to_completion(*fresh);
  expect_identical(a.samples.at("late")[0], f.samples.at("late")[0], "late vs a fresh engine on the new weights");
  std::vector<int> reference = expected();
  reference.resize(16);
  EXPECT_EQ(a.samples.at("late")[0].output_ids, reference);  // and the reference
}

TEST_F(WeightSync, StagedPacksReuseThePagesOfThePacksTwoVersionsBack) {
  auto eng = testing::load_engine(mo_dir());
  std::vector<const void*> wq{pages_of(*eng, TensorRole::wq, 0)}, head{pages_of(*eng, TensorRole::lm_head)};
  const size_t live_bytes = eng->packs().bytes();
  for (int64_t v = 1; v <= 4; ++v) {
    StepOutputs out;
    ASSERT_TRUE(eng->request_update(stage_with_packs(*eng, v % 2 ? real_ : mo_dir(), v), {}, out).ok());
    ASSERT_EQ(eng->weight_version(), v);
    wq.push_back(pages_of(*eng, TensorRole::wq, 0));
    head.push_back(pages_of(*eng, TensorRole::lm_head));
  }
  EXPECT_NE(wq[0], wq[1]);
  EXPECT_NE(head[0], head[1]);
  for (size_t v = 2; v < wq.size(); ++v) {  // two buffers, alternating
    EXPECT_EQ(wq[v], wq[v - 2]) << "version " << v;
    EXPECT_EQ(head[v], head[v - 2]) << "version " << v;
  }
  EXPECT_EQ(eng->packs().bytes(), live_bytes);
  // The outputs are the last version's (the random weights again, v4): as before any push.
  auto fresh = testing::load_engine(mo_dir());
  const std::vector<int> prompt = ref_["prompt_ids"].get<std::vector<int>>();
  for (Engine* e : {eng.get(), fresh.get()}) ASSERT_TRUE(e->submit(greedy_request("g", prompt, 8)).ok());
  const auto a = testing::run_to_completion(*eng), b = testing::run_to_completion(*fresh);
  expect_identical(a.samples.at("g")[0], b.samples.at("g")[0], "after four pushes");
  // release_memory drops the live packs and the retired ones: both copies.
  const size_t weight_bytes = eng->weights().total_bytes();
  auto released = eng->release_memory(/*weights=*/true, /*kv_cache=*/false);
  ASSERT_TRUE(released.ok());
  EXPECT_EQ(*released, weight_bytes + 2 * live_bytes);
  EXPECT_EQ(eng->packs().count(), 0);
}

// The packs a StreamingPacker built, taken by WeightPacks::stage for a version serving `bytes` as
// tensor `name` (as staging takes them once the bytes are verified).
WeightPacks take_streamed(const ModelWeights& current, const std::string& name, const uint8_t* bytes,
                          std::shared_ptr<PackPool> pool, StreamingPacker* packer) {
  Weight w = *current.find(name);
  w.data = bytes;
  w.owner = nullptr;
  ModelWeights next = current;
  EXPECT_TRUE(next.replace({{name, w}}).ok());
  return PackStager{kernels::Compute::f32, std::move(pool), 1}(current, next, packer);
}

TEST_F(WeightSync, AStreamedGroupIsPackedOnlyOnceEveryRowOfItArrived) {
  auto eng = testing::load_engine(mo_dir());
  const ModelWeights& current = eng->weights();
  const std::string name = "model.layers.0.mlp.up_proj.weight";
  const Weight& cur = *current.find(name);
  const int N = static_cast<int>(cur.shape[0]), K = static_cast<int>(cur.shape[1]);
  ASSERT_GT(N, 2 * kernels::kGroup);  // three groups or more
  const size_t row = static_cast<size_t>(K) * dtype_size(cur.dtype), total = row * static_cast<size_t>(N);
  auto ar = SafetensorsArchive::open_dir(real_);
  ASSERT_TRUE(ar.ok());
  const TensorView* real = ar->find(name);
  ASSERT_TRUE(real && real->dtype == cur.dtype && real->nbytes == total);
  const auto* src = static_cast<const uint8_t*>(real->data);
  // Rows that have not arrived hold NaNs: a group packed early would carry them into its pack.
  std::vector<uint8_t> buf(total, 0xFF);
  auto pool = std::make_shared<PackPool>();
  StreamingPacker packer(current, kernels::Compute::f32, pool, {{name, cur.dtype, cur.shape, 0}});
  ASSERT_TRUE(packer.packs(0));
  EXPECT_EQ(packer.piece_bytes(0, 1), row * kernels::kGroup);  // at least one whole group
  auto arrive = [&](size_t lo, size_t hi) {
    std::memcpy(buf.data() + lo, src + lo, hi - lo);
    packer.arrived(0, buf.data(), lo, hi);
  };
  arrive(0, (kernels::kGroup + 2) * row + row / 2);  // group 0 and part of group 1, a row cut in two
  EXPECT_EQ(packer.groups_packed(0), 1);
  arrive((kernels::kGroup + 2) * row + row / 2, 2 * kernels::kGroup * row - 4);  // one element short
  EXPECT_EQ(packer.groups_packed(0), 1);
  arrive(2 * kernels::kGroup * row - 4, total - 8);
  EXPECT_EQ(packer.groups_packed(0), (N - 1) / kernels::kGroup);  // the last row is still missing
  arrive(total - 8, total);
  ASSERT_EQ(packer.groups_packed(0), (N + kernels::kGroup - 1) / kernels::kGroup);
  WeightPacks staged = take_streamed(current, name, buf.data(), pool, &packer);
  EXPECT_FALSE(packer.packs(0));  // stage took the streamed pack rather than packing again
  auto got = staged.find(TensorRole::w_up, 0);
  ASSERT_TRUE(got);
  auto want = kernels::pack(src, cur.dtype, N, K, kernels::Compute::f32);
  EXPECT_EQ(pack_bytes_of(*got), pack_bytes_of(*want));
}

TEST_F(WeightSync, AStreamedTensorFedOutOfOrderOrDroppedLeavesNoPackOfIt) {
  auto eng = testing::load_engine(mo_dir());
  const ModelWeights& current = eng->weights();
  const std::string name = "model.layers.0.mlp.down_proj.weight";
  const Weight& cur = *current.find(name);
  const int N = static_cast<int>(cur.shape[0]), K = static_cast<int>(cur.shape[1]);
  const size_t total = cur.nbytes(), row = static_cast<size_t>(K) * dtype_size(cur.dtype);
  auto ar = SafetensorsArchive::open_dir(real_);
  ASSERT_TRUE(ar.ok());
  const auto* src = static_cast<const uint8_t*>(ar->find(name)->data);
  std::vector<uint8_t> buf(src, src + total);
  auto pool = std::make_shared<PackPool>();
  {  // out of order: the rows after a gap are not packed; stage packs the whole tensor itself
    StreamingPacker packer(current, kernels::Compute::f32, pool, {{name, cur.dtype, cur.shape, 0}});
    packer.arrived(0, buf.data(), row * kernels::kGroup, total);
    EXPECT_EQ(packer.groups_packed(0), 0);
    packer.arrived(0, buf.data(), 0, row * kernels::kGroup);
    EXPECT_EQ(packer.groups_packed(0), 0);
    WeightPacks staged = take_streamed(current, name, buf.data(), pool, &packer);
    auto want = kernels::pack(src, cur.dtype, N, K, kernels::Compute::f32);
    EXPECT_EQ(pack_bytes_of(*staged.find(TensorRole::w_down, 0)), pack_bytes_of(*want));
  }
  auto retired = std::make_shared<PackPool>();
  {  // fully packed, then the update fails before staging: its pack goes back to the pool
    StreamingPacker packer(current, kernels::Compute::f32, retired, {{name, cur.dtype, cur.shape, 0}});
    packer.arrived_transfer(buf.data(), 0, total);
    EXPECT_EQ(packer.groups_packed(0), (N + kernels::kGroup - 1) / kernels::kGroup);
    EXPECT_EQ(retired->bytes(), 0u);
  }
  EXPECT_GT(retired->bytes(), 0u);
  // A tensor the engine does not pack (a norm) or converts is not packed as it arrives.
  StreamingPacker norms(current, kernels::Compute::f32, pool,
                        {{"model.norm.weight", DType::f32, current.find("model.norm.weight")->shape, 0}});
  EXPECT_FALSE(norms.packs(0));
}

}  // namespace
}  // namespace zr
