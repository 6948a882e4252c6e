// The tensor-parallel forward without MPI: T ranks as T threads of this process, each with its
// shard of the weights and its own KV cache, meeting in an in-process TpComm. Checked against the
// shared models' reference.json (teacher-forced on the reference's greedy tokens, so every rank
// knows the next token without a broadcast): the argmax is the reference's token and the logprobs
// are within 1e-4 of it, for Qwen3 (q/k norms replicated, heads split) and the stories260K Llama.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <barrier>
#include <fstream>
#include <thread>

#include "model/block_allocator.h"
#include "model/kv_cache.h"
#include "model/sampler.h"
#include "model/transformer.h"
#include "tests/test_util.h"

namespace zr {
namespace {

// What the T rank threads share: each posts a pointer, all meet at the barrier, then read.
struct Meeting {
  explicit Meeting(int t) : size(t), sync(t), posted(static_cast<size_t>(t)) {}
  int size;
  std::barrier<> sync;
  std::vector<const float*> posted;
};

// TpComm over threads, with the contract of actors/tp_group.h: sums in rank order, identical bits on
// every rank; the leader receives the slices concatenated by rank.
class ThreadTpComm : public TpComm {
 public:
  ThreadTpComm(Meeting* m, int rank) : m_(m), rank_(rank) {}
  TpShard shard() const override { return {rank_, m_->size}; }
  void allreduce_sum(float* data, size_t n) override {
    m_->posted[static_cast<size_t>(rank_)] = data;
    m_->sync.arrive_and_wait();
    sum_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      float s = m_->posted[0][i];
      for (int r = 1; r < m_->size; ++r) s += m_->posted[static_cast<size_t>(r)][i];
      sum_[i] = s;
    }
    m_->sync.arrive_and_wait();  // every rank has read every rank's partials
    std::copy(sum_.begin(), sum_.end(), data);
  }
  void gather_to_leader(const float* local, std::span<const size_t> counts, float* out) override {
    m_->posted[static_cast<size_t>(rank_)] = local;
    m_->sync.arrive_and_wait();
    if (rank_ == 0)
      for (int r = 0; r < m_->size; ++r) out = std::copy_n(m_->posted[static_cast<size_t>(r)], counts[r], out);
    m_->sync.arrive_and_wait();
  }

 private:
  Meeting* m_;
  int rank_;
  std::vector<float> sum_;
};

struct Step {  // what rank 0 saw at one position
  int argmax = -1;
  float logprob = 0;  // of the reference token
};

// Rank `rank` of T: prefill the prompt, then feed the reference's greedy tokens one at a time.
// Rank 0 returns, per generated position, the argmax and the reference token's logprob.
std::vector<Step> run_rank(const ModelConfig& cfg, const std::string& dir, int rank, ThreadTpComm* comm,
                           const std::vector<int>& prompt, const std::vector<int>& greedy) {
  auto w = ModelWeights::load_dir(cfg, dir, comm->shard());
  ZR_CHECK_MSG(w.ok(), w.status().to_string());
  ThreadPool pool(1);
  KvCache kv(local_config(cfg, comm->shard()), 16, 4 << 20);
  BlockAllocator blocks(kv.num_blocks(), kv.block_size());
  Transformer tf(&*w, &kv, &pool, comm);
  std::vector<int> seq = prompt, table;
  std::vector<Step> out;
  SamplerScratch scratch;
  int pos = 0;
  for (size_t k = 0; k < greedy.size(); ++k) {
    const int n = static_cast<int>(seq.size()) - pos;
    ZR_CHECK(blocks.prepare_write(table, pos, pos + n));
    SeqChunk ch{seq.data() + pos, n, pos, &table, n - 1};
    std::vector<float> logits;
    tf.forward({&ch, 1}, logits);
    if (rank == 0) {
      const float* row = logits.data();
      const int am = static_cast<int>(std::max_element(row, row + cfg.vocab_size) - row);
      out.push_back({am, position_logprob(row, cfg.vocab_size, 1.0f, greedy[k], LogprobOptions{}, scratch).logprob});
    }
    pos = static_cast<int>(seq.size());
    seq.push_back(greedy[k]);
  }
  return out;
}

void check_tp_golden(const std::string& name, int T) {
  ZR_REQUIRE_SHARED_MODEL(dir, name);
  auto cfg = ModelConfig::from_dir(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  ASSERT_TRUE(check_tp(*cfg, T).ok());
  std::ifstream f(dir + "/reference.json");
  const auto ref = nlohmann::json::parse(f);
  int cases = 0;
  for (const auto& cs : ref["cases"]) {
    if (cs["kind"] != "greedy" || cases++ >= 3) continue;  // three cases keep it fast
    const std::vector<int> prompt = cs["prompt_ids"], greedy = cs["greedy_ids"];
    Meeting m(T);
    std::vector<ThreadTpComm> comms;
    comms.reserve(static_cast<size_t>(T));
    for (int r = 0; r < T; ++r) comms.emplace_back(&m, r);
    std::vector<Step> leader;
    std::vector<std::thread> ranks;
    for (int r = 1; r < T; ++r)
      ranks.emplace_back([&, r] { run_rank(*cfg, dir, r, &comms[static_cast<size_t>(r)], prompt, greedy); });
    leader = run_rank(*cfg, dir, 0, &comms[0], prompt, greedy);
    for (auto& t : ranks) t.join();
    ASSERT_EQ(leader.size(), greedy.size());
    for (size_t k = 0; k < greedy.size(); ++k) {
      EXPECT_EQ(leader[k].argmax, greedy[k]) << name << " T=" << T << " step " << k;
      EXPECT_NEAR(leader[k].logprob, cs["greedy_logprobs"][k].get<double>(), 1e-4) << name << " step " << k;
    }
  }
  EXPECT_GT(cases, 0);
}

TEST(TpForward, Qwen3TinyTwoRanksMatchesReference) { check_tp_golden("qwen3-tiny", 2); }
TEST(TpForward, Stories260KFourRanksMatchesReference) { check_tp_golden("stories260K", 4); }

}  // namespace
}  // namespace zr
