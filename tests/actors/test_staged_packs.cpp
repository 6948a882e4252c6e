// Packs built while staging (model/weight_packs.h): a staged update's packs live beside the live
// ones until the commit swaps them in; a dropped update leaves the live packs alone; a steady
// state of pushes repacks into the pages of the packs two versions back.
#include <cstring>

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

}  // namespace
}  // namespace zr
