// Golden tests of the forward pass and the invariant kernels against the shared reference models.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <tuple>
#include <utility>

#include "model/block_allocator.h"
#include "model/kernels.h"
#include "model/kv_cache.h"
#include "model/safetensors.h"
#include "model/sampler.h"
#include "model/transformer.h"
#include "tests/test_util.h"

namespace zr {
namespace {

// Pages of [p, p + bytes) the kernel has resident (mincore), p page-aligned.
size_t resident_pages(const void* p, size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> v((bytes + page - 1) / page);
  EXPECT_EQ(mincore(const_cast<void*>(p), bytes, v.data()), 0);
  return static_cast<size_t>(std::count_if(v.begin(), v.end(), [](unsigned char b) { return b & 1; }));
}

TEST(KvCache, PrefaultMakesEveryPageResidentAndKeepsContents) {
  ModelConfig c;
  c.num_layers = 3;
  c.hidden_size = 64;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  KvCache kv(c, 16, 4 << 20);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t pages = kv.bytes() / page;
  ASSERT_GT(pages, 100u);
  // Lazily mapped: only what is written is resident.
  float* k = kv.keys(1, 3);
  float* v = kv.values(2, kv.num_blocks() - 1);
  k[5] = 1.25f;
  v[7] = -3.5f;
  EXPECT_LT(resident_pages(kv.keys(0, 0), kv.bytes()), pages / 2);
  EXPECT_EQ(kv.prefault(), kv.bytes());
  EXPECT_EQ(resident_pages(kv.keys(0, 0), kv.bytes()), pages);
  EXPECT_EQ(k[5], 1.25f);
  EXPECT_EQ(v[7], -3.5f);
  // After release_pages the pool reads zeros and a prefault brings every page back.
  EXPECT_EQ(kv.release_pages(), kv.bytes());
  EXPECT_EQ(k[5], 0.0f);
  kv.prefault();
  EXPECT_EQ(resident_pages(kv.keys(0, 0), kv.bytes()), pages);
}

nlohmann::json load_reference(const std::string& dir) {
  std::ifstream f(dir + "/reference.json");
  return nlohmann::json::parse(f);
}

// Greedy decode with the plain forward: prefill the prompt in one chunk, then one token per step.
struct Decoded {
  std::vector<int> ids;
  std::vector<float> logprobs;
  std::vector<std::vector<std::pair<int, float>>> top5;
  std::vector<float> prompt_logprobs;  // positions 1..
};

Decoded greedy_decode(const ModelWeights& w, const std::vector<int>& prompt, int steps, int threads) {
  const ModelConfig& c = w.config();
  ThreadPool pool(threads);
  KvCache kv(c, 16, 8 << 20);
  BlockAllocator blocks(kv.num_blocks(), kv.block_size());
  Transformer tf(&w, &kv, &pool);
  std::vector<int> table, seq = prompt;
  SamplerScratch scratch;
  LogprobOptions lo{true, LogprobMode::default_mode, 5, {}};
  Decoded out;
  int pos = 0;
  while (static_cast<int>(out.ids.size()) < steps) {
    int n = static_cast<int>(seq.size()) - pos;
    EXPECT_TRUE(blocks.prepare_write(table, pos, pos + n));
    SeqChunk ch{seq.data() + pos, n, pos, &table, pos == 0 ? 0 : n - 1};
    std::vector<float> logits;
    tf.forward({&ch, 1}, logits);
    int rows = static_cast<int>(logits.size()) / c.vocab_size;
    for (int r = 0; r + 1 < rows; ++r)
      out.prompt_logprobs.push_back(
          position_logprob(&logits[r * size_t(c.vocab_size)], c.vocab_size, 1.0f, seq[r + 1], lo, scratch).logprob);
    const float* last = &logits[(rows - 1) * size_t(c.vocab_size)];
    SamplingParams sp;
    sp.temperature = 0.0f;
    SampleContext ctx{&sp, prompt, {out.ids.data(), out.ids.size()}, 0};
    SampledToken t = sample_token(last, c.vocab_size, c.eos_token_ids, ctx, lo, scratch);
    out.ids.push_back(t.token);
    out.logprobs.push_back(t.logprob);
    out.top5.push_back(t.top);
    pos = static_cast<int>(seq.size());
    seq.push_back(t.token);
  }
  return out;
}

// The completion's teacher-forced logprobs, log_softmax(logits / T), from one forward over
// prompt + completion (the rows of the last prompt position and the completion's but its last).
std::vector<float> score_forward(const ModelWeights& w, const std::vector<int>& prompt,
                                 const std::vector<int>& completion, float temperature, int threads) {
  const ModelConfig& c = w.config();
  ThreadPool pool(threads);
  KvCache kv(c, 16, 8 << 20);
  BlockAllocator blocks(kv.num_blocks(), kv.block_size());
  Transformer tf(&w, &kv, &pool);
  std::vector<int> seq = prompt, table;
  seq.insert(seq.end(), completion.begin(), completion.end());
  const int n = static_cast<int>(seq.size()), p = static_cast<int>(prompt.size());
  EXPECT_TRUE(blocks.prepare_write(table, 0, n));
  SeqChunk ch{seq.data(), n, 0, &table, p - 1};
  std::vector<float> logits;
  tf.forward({&ch, 1}, logits);
  SamplerScratch scratch;
  std::vector<float> out;
  for (size_t k = 0; k < completion.size(); ++k)
    out.push_back(position_logprob(&logits[k * size_t(c.vocab_size)], c.vocab_size, temperature, completion[k],
                                   LogprobOptions{}, scratch)
                      .logprob);
  return out;
}

Result<ModelWeights> load_model(const std::string& dir) {
  auto cfg = ModelConfig::from_dir(dir);
  if (!cfg.ok()) return cfg.status();
  return ModelWeights::load_dir(*cfg, dir);
}

// reference.json of a shared model: every greedy case (tokens exact; token, top-5 and prompt
// logprobs within 1e-4) and every score case (logprobs at T 1.0 and 0.7 within 1e-4).
void check_golden(const std::string& name, int threads) {
  ZR_REQUIRE_SHARED_MODEL(dir, name);
  auto w = load_model(dir);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  auto ref = load_reference(dir);
  int cases = 0;
  for (const auto& cs : ref["cases"]) {
    ++cases;
    if (cs["kind"] == "score") {
      for (const char* t : {"1.0", "0.7"}) {
        const auto& expect = cs[std::string("logprobs_T") + t];
        std::vector<float> got = score_forward(*w, cs["prompt_ids"], cs["completion_ids"], std::stof(t), threads);
        ASSERT_EQ(got.size(), expect.size());
        for (size_t k = 0; k < got.size(); ++k) EXPECT_NEAR(got[k], expect[k].get<double>(), 1e-4) << t << " " << k;
      }
      continue;
    }
    std::vector<int> prompt = cs["prompt_ids"];
    std::vector<int> expect = cs["greedy_ids"];
    Decoded d = greedy_decode(*w, prompt, static_cast<int>(expect.size()), threads);
    EXPECT_EQ(d.ids, expect) << cs["prompt"];
    for (size_t i = 0; i < expect.size(); ++i) {
      EXPECT_NEAR(d.logprobs[i], cs["greedy_logprobs"][i].get<double>(), 1e-4) << "step " << i;
      for (int k = 0; k < 5; ++k) {
        EXPECT_EQ(d.top5[i][k].first, cs["top5"][i][k][0].get<int>()) << "step " << i << " rank " << k;
        EXPECT_NEAR(d.top5[i][k].second, cs["top5"][i][k][1].get<double>(), 1e-4);
      }
    }
    const auto& ipl = cs["input_token_logprobs"];
    ASSERT_EQ(d.prompt_logprobs.size() + 1, ipl.size());
    EXPECT_TRUE(ipl[0].is_null());
    for (size_t i = 1; i < ipl.size(); ++i) EXPECT_NEAR(d.prompt_logprobs[i - 1], ipl[i].get<double>(), 1e-4);
  }
  EXPECT_GT(cases, 0);
}

TEST(Forward, GoldenStories260K) { check_golden("stories260K", 1); }
TEST(Forward, GoldenStories260KTwoThreads) { check_golden("stories260K", 2); }
TEST(Forward, GoldenStories260KBf16) { check_golden("stories260K-bf16", 2); }
// Qwen3 (per-head q/k norms, head_dim 32 != 64 / 4 heads, GQA, tied) and Llama 3.1 (llama3
// rope_scaling, one KV head, untied head), both bf16 served as stored.
TEST(Forward, GoldenQwen3Tiny) { check_golden("qwen3-tiny", 2); }
TEST(Forward, GoldenLlama31Tiny) { check_golden("llama31-tiny", 2); }

// bf16 weights served as stored and the same weights widened to f32 at load (an f32 copy of the
// checkpoint) give the same bits: the kernels widen bf16 exactly, then run the f32 recipe.
void check_bf16_equals_widened(const std::string& name) {
  ZR_REQUIRE_SHARED_MODEL(dir, name);
  auto ar = SafetensorsArchive::open_dir(dir);
  ASSERT_TRUE(ar.ok()) << ar.status().to_string();
  std::vector<TensorToWrite> wide;
  for (const auto& [tname, v] : ar->tensors()) {
    ASSERT_EQ(v.dtype, DType::bf16) << tname;
    TensorToWrite t{tname, DType::f32, v.shape, std::vector<uint8_t>(static_cast<size_t>(v.numel()) * 4)};
    for (int64_t i = 0; i < v.numel(); ++i) {
      uint16_t h;
      std::memcpy(&h, static_cast<const uint8_t*>(v.data) + 2 * i, 2);
      const float f = bf16_to_f32(h);
      std::memcpy(&t.bytes[static_cast<size_t>(i) * 4], &f, 4);
    }
    wide.push_back(std::move(t));
  }
  testing::TempDir tmp;
  std::filesystem::copy_file(dir + "/config.json", tmp / "config.json");
  ASSERT_TRUE(write_safetensors(tmp / "model.safetensors", wide).ok());
  auto stored = load_model(dir), widened = load_model(tmp.path());
  ASSERT_TRUE(stored.ok() && widened.ok());
  EXPECT_EQ(stored->get(TensorRole::wq, 0).dtype, DType::bf16);
  EXPECT_EQ(widened->get(TensorRole::wq, 0).dtype, DType::f32);
  const auto ref = load_reference(dir);
  const std::vector<int> prompt = ref["cases"][0]["prompt_ids"];
  Decoded a = greedy_decode(*stored, prompt, 8, 2), b = greedy_decode(*widened, prompt, 8, 2);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(0, std::memcmp(a.logprobs.data(), b.logprobs.data(), a.logprobs.size() * sizeof(float)));
  ASSERT_EQ(a.prompt_logprobs.size(), b.prompt_logprobs.size());
  EXPECT_EQ(0,
            std::memcmp(a.prompt_logprobs.data(), b.prompt_logprobs.data(), a.prompt_logprobs.size() * sizeof(float)));
}

TEST(Forward, Bf16AsStoredEqualsWidenedQwen3Tiny) { check_bf16_equals_widened("qwen3-tiny"); }
TEST(Forward, Bf16AsStoredEqualsWidenedLlama31Tiny) { check_bf16_equals_widened("llama31-tiny"); }

// The invariant matmul: a row's result does not depend on M, on the thread count, or on the ISA
// path, and it is close to a double-precision reference.
TEST(Kernels, MatmulRowInvariantAcrossShapesAndPaths) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int K : {8, 61, 64, 768, 1000}) {
    const int N = 101, maxM = 37;
    std::vector<float> w(static_cast<size_t>(N) * K), x(static_cast<size_t>(maxM) * K);
    for (auto& v : w) v = nd(rng);
    for (auto& v : x) v = nd(rng);
    std::vector<uint16_t> wb(w.size());
    for (size_t i = 0; i < w.size(); ++i) wb[i] = f32_to_bf16(w[i]);
    ThreadPool pool(2);
    for (DType dt : {DType::f32, DType::bf16}) {
      const void* wp = dt == DType::f32 ? static_cast<const void*>(w.data()) : wb.data();
      std::vector<float> full(static_cast<size_t>(maxM) * N);
      kernels::matmul(x.data(), maxM, K, K, wp, dt, 0, N, full.data(), N, &pool);
      for (int m = 0; m < maxM; m += 5) {  // the row alone, with 1 thread, portable path
        std::vector<float> one(N);
        kernels::force_portable(true);
        kernels::matmul(&x[static_cast<size_t>(m) * K], 1, K, K, wp, dt, 0, N, one.data(), N, nullptr);
        kernels::force_portable(false);
        for (int n = 0; n < N; ++n) {
          ASSERT_EQ(one[n], full[static_cast<size_t>(m) * N + n]) << "K=" << K << " m=" << m << " n=" << n;
          double ref = 0;
          for (int k = 0; k < K; ++k) {
            float wv =
                dt == DType::f32 ? w[static_cast<size_t>(n) * K + k] : bf16_to_f32(wb[static_cast<size_t>(n) * K + k]);
            ref += static_cast<double>(x[static_cast<size_t>(m) * K + k]) * wv;
          }
          ASSERT_NEAR(one[n], ref, 1e-4 * std::sqrt(static_cast<double>(K)) + 1e-5);
        }
      }
    }
  }
}

// Grouped products (Q/K/V, gate/up in one parallel section) give the bits of separate calls.
TEST(Kernels, MatmulGroupEqualsSeparateCalls) {
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int K = 200, M = 9;
  std::vector<std::vector<float>> ws = {std::vector<float>(97 * K), std::vector<float>(50 * K),
                                        std::vector<float>(130 * K)};
  std::vector<Weight> w(3);
  for (int i = 0; i < 3; ++i) {
    for (auto& v : ws[i]) v = nd(rng);
    w[i] = Weight{DType::f32, {static_cast<int64_t>(ws[i].size() / K), K}, ws[i].data(), nullptr};
  }
  std::vector<float> x(M * K);
  for (auto& v : x) v = nd(rng);
  ThreadPool pool(2);
  std::vector<std::vector<float>> sep(3), grp(3);
  for (int i = 0; i < 3; ++i) {
    sep[i].resize(M * w[i].shape[0]);
    grp[i].resize(sep[i].size());
    kernels::matmul(x.data(), M, w[i], sep[i].data(), &pool);
  }
  kernels::matmul_group(x.data(), M, 0, {{&w[0], grp[0].data()}, {&w[1], grp[1].data()}, {&w[2], grp[2].data()}},
                        &pool);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(0, std::memcmp(sep[i].data(), grp[i].data(), sep[i].size() * 4)) << i;

  // Padded row strides (how the transformer lays out its activations) change no bits.
  const int ldx = K + 16, ldy = 97 + 5;
  std::vector<float> xp(static_cast<size_t>(M) * ldx, 7.0f), yp(static_cast<size_t>(M) * ldy, -1.0f);
  std::vector<float> y2(static_cast<size_t>(M) * ldy, -1.0f);
  for (int m = 0; m < M; ++m) std::copy_n(&x[static_cast<size_t>(m) * K], K, &xp[static_cast<size_t>(m) * ldx]);
  kernels::matmul(xp.data(), M, ldx, w[0], yp.data(), ldy, &pool);
  kernels::matmul_group(xp.data(), M, ldx, {{&w[0], y2.data(), ldy}, {&w[1], grp[1].data()}}, &pool);
  for (int m = 0; m < M; ++m) {
    EXPECT_EQ(0, std::memcmp(&sep[0][static_cast<size_t>(m) * 97], &yp[static_cast<size_t>(m) * ldy], 97 * 4)) << m;
    EXPECT_EQ(0, std::memcmp(&sep[0][static_cast<size_t>(m) * 97], &y2[static_cast<size_t>(m) * ldy], 97 * 4)) << m;
    EXPECT_EQ(-1.0f, yp[static_cast<size_t>(m) * ldy + 97]) << "the padding is not written";
  }
  EXPECT_EQ(0, std::memcmp(sep[1].data(), grp[1].data(), sep[1].size() * 4));
}

// Attention over a sequence's KV blocks: scores computed block by block and values accumulated
// block by block (how the transformer walks all heads of a row at once) give the bits of one call
// over the whole sequence, on both ISA paths, and both paths agree.
TEST(Kernels, AttentionSplitIntoBlocksGivesTheBitsOfOneCall) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto [bs, hd] : {std::pair{4, 72}, {16, 72}, {32, 72}, {16, 136}}) {
    const int stride = 3 * hd, n = 5 * bs + 3, blocks = (n + bs - 1) / bs;
    std::vector<std::vector<float>> kt(blocks, std::vector<float>(static_cast<size_t>(hd) * bs)),
        v(blocks, std::vector<float>(static_cast<size_t>(bs) * stride));
    std::vector<const float*> ktp, vp;
    for (int b = 0; b < blocks; ++b) {
      for (auto& x : kt[b]) x = nd(rng);
      for (auto& x : v[b]) x = nd(rng);
      ktp.push_back(kt[b].data());
      vp.push_back(v[b].data());
    }
    std::vector<float> q(hd), p(n);
    for (auto& x : q) x = nd(rng);
    for (auto& x : p) x = std::abs(nd(rng));
    std::vector<float> first_scores, first_out;
    for (bool portable : {false, true}) {
      SCOPED_TRACE(portable ? "portable" : "avx512 when available");
      kernels::force_portable(portable);
      std::vector<float> whole(n), split(n), out(hd), acc(hd, 123.0f);
      kernels::attention_scores(q.data(), hd, ktp.data(), bs, n, 0.125f, whole.data());
      kernels::attention_values(p.data(), vp.data(), bs, stride, n, hd, out.data());
      for (int b = 0; b < blocks; ++b) {
        const int nb = std::min(bs, n - b * bs);
        kernels::attention_scores(q.data(), hd, &ktp[b], bs, nb, 0.125f, &split[static_cast<size_t>(b) * bs]);
        kernels::attention_values(&p[static_cast<size_t>(b) * bs], &vp[b], bs, stride, nb, hd, acc.data(), b > 0);
      }
      kernels::force_portable(false);
      EXPECT_EQ(0, std::memcmp(whole.data(), split.data(), n * sizeof(float))) << "bs=" << bs << " hd=" << hd;
      EXPECT_EQ(0, std::memcmp(out.data(), acc.data(), hd * sizeof(float))) << "bs=" << bs << " hd=" << hd;
      if (first_scores.empty()) {
        first_scores = whole;
        first_out = out;
      } else {
        EXPECT_EQ(first_scores, whole) << "bs=" << bs << " hd=" << hd;
        EXPECT_EQ(first_out, out) << "bs=" << bs << " hd=" << hd;
      }
      double ref = 0;  // the first value dimension against double precision
      for (int j = 0; j < n; ++j) ref += static_cast<double>(p[j]) * v[j / bs][static_cast<size_t>(j % bs) * stride];
      EXPECT_NEAR(out[0], ref, 1e-4 * n);
    }
  }
}

// Several heads over several blocks in one call (independent chains side by side) give the bits of
// one head at a time, scores and values, on both ISA paths, and both paths agree; the cases cover
// head pairs and a lone head, partial blocks, blocks smaller and larger than 16 positions, more
// than 128 dims (two passes) and more than 64 runs of positions.
TEST(Kernels, AttentionOfSeveralHeadsIsThatOfOneHeadAtATime) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto [bs, hd, heads, n] : {std::tuple{16, 64, 7, 83},
                                  {16, 72, 4, 40},
                                  {32, 48, 5, 70},
                                  {4, 64, 2, 13},
                                  {16, 136, 3, 50},
                                  {16, 64, 3, 1120}}) {
    SCOPED_TRACE("bs=" + std::to_string(bs) + " hd=" + std::to_string(hd) + " heads=" + std::to_string(heads) +
                 " n=" + std::to_string(n));
    const int nblk = (n + bs - 1) / bs, v_stride = hd + 8;
    std::vector<std::vector<float>> kt(static_cast<size_t>(heads) * nblk,
                                       std::vector<float>(static_cast<size_t>(hd) * bs)),
        v(static_cast<size_t>(heads) * nblk, std::vector<float>(static_cast<size_t>(bs) * v_stride));
    std::vector<const float*> ktp, vp;
    for (size_t i = 0; i < kt.size(); ++i) {
      for (auto& x : kt[i]) x = nd(rng);
      for (auto& x : v[i]) x = nd(rng);
      ktp.push_back(kt[i].data());
      vp.push_back(v[i].data());
    }
    std::vector<float> q(static_cast<size_t>(heads) * hd), p(static_cast<size_t>(heads) * (n + 3));
    for (auto& x : q) x = nd(rng);
    for (auto& x : p) x = std::abs(nd(rng));
    const size_t stride = static_cast<size_t>(n) + 3;
    std::vector<float> first_scores, first_out;
    for (bool portable : {false, true}) {
      SCOPED_TRACE(portable ? "portable" : "avx512 when available");
      kernels::force_portable(portable);
      std::vector<float> together(heads * stride, -1.0f), alone(heads * stride, -1.0f);
      std::vector<float> out(static_cast<size_t>(heads) * hd, 5.0f), out_alone(out);
      kernels::attention_scores_heads(q.data(), hd, heads, ktp.data(), nblk, bs, n, 0.125f, together.data(), stride);
      kernels::attention_values_heads(p.data(), stride, heads, vp.data(), nblk, bs, v_stride, n, hd, out.data(), hd,
                                      /*accumulate=*/true);
      for (int h = 0; h < heads; ++h) {
        kernels::attention_scores(&q[static_cast<size_t>(h) * hd], hd, &ktp[static_cast<size_t>(h) * nblk], bs, n,
                                  0.125f, &alone[h * stride]);
        kernels::attention_values(&p[h * stride], &vp[static_cast<size_t>(h) * nblk], bs, v_stride, n, hd,
                                  &out_alone[static_cast<size_t>(h) * hd], /*accumulate=*/true);
      }
      kernels::force_portable(false);
      EXPECT_EQ(0, std::memcmp(together.data(), alone.data(), together.size() * sizeof(float)));
      EXPECT_EQ(0, std::memcmp(out.data(), out_alone.data(), out.size() * sizeof(float)));
      if (first_scores.empty()) {
        first_scores = together;
        first_out = out;
      } else {
        EXPECT_EQ(first_scores, together);
        EXPECT_EQ(first_out, out);
      }
      const int h = heads - 1, j = n - 1;  // the last head's last position against double precision
      double ref = 0, ref_out = 5.0;
      for (int i = 0; i < hd; ++i)
        ref += static_cast<double>(q[static_cast<size_t>(h) * hd + i]) *
               kt[static_cast<size_t>(h) * nblk + j / bs][static_cast<size_t>(i) * bs + j % bs];
      for (int jj = 0; jj < n; ++jj)
        ref_out += static_cast<double>(p[h * stride + jj]) *
                   v[static_cast<size_t>(h) * nblk + jj / bs][static_cast<size_t>(jj % bs) * v_stride + hd - 1];
      EXPECT_NEAR(together[h * stride + j], ref * 0.125, 1e-4 * hd);
      EXPECT_NEAR(out[static_cast<size_t>(h) * hd + hd - 1], ref_out, 1e-4 * n);
      EXPECT_EQ(-1.0f, together[h * stride + n]) << "past n is not written";
    }
  }
}

// A bf16 KV cache: the bf16 overloads give the bits of the f32 kernels over the exactly widened
// elements (heads side by side, partial blocks, more than 128 dims), on both ISA paths.
TEST(Kernels, AttentionOverABf16CacheIsTheF32KernelOverTheWidenedCache) {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto [bs, hd, heads, n] : {std::tuple{16, 64, 7, 83}, {32, 48, 5, 70}, {4, 64, 2, 13}, {16, 136, 3, 50}}) {
    SCOPED_TRACE("bs=" + std::to_string(bs) + " hd=" + std::to_string(hd) + " heads=" + std::to_string(heads) +
                 " n=" + std::to_string(n));
    const int nblk = (n + bs - 1) / bs, v_stride = hd;
    const size_t blocks = static_cast<size_t>(heads) * nblk;
    std::vector<std::vector<uint16_t>> kh(blocks, std::vector<uint16_t>(static_cast<size_t>(hd) * bs)),
        vh(blocks, std::vector<uint16_t>(static_cast<size_t>(bs) * v_stride));
    std::vector<std::vector<float>> kf(blocks), vf(blocks);
    std::vector<const uint16_t*> khp, vhp;
    std::vector<const float*> kfp, vfp;
    for (size_t i = 0; i < blocks; ++i) {
      for (auto& x : kh[i]) x = f32_to_bf16(nd(rng));
      for (auto& x : vh[i]) x = f32_to_bf16(nd(rng));
      for (uint16_t x : kh[i]) kf[i].push_back(bf16_to_f32(x));
      for (uint16_t x : vh[i]) vf[i].push_back(bf16_to_f32(x));
      khp.push_back(kh[i].data()), vhp.push_back(vh[i].data());
      kfp.push_back(kf[i].data()), vfp.push_back(vf[i].data());
    }
    std::vector<float> q(static_cast<size_t>(heads) * hd), p(static_cast<size_t>(heads) * n);
    for (auto& x : q) x = nd(rng);
    for (auto& x : p) x = std::abs(nd(rng));
    for (bool portable : {false, true}) {
      SCOPED_TRACE(portable ? "portable" : "avx512 when available");
      kernels::force_portable(portable);
      std::vector<float> sh(static_cast<size_t>(heads) * n), sf(sh.size()), oh(static_cast<size_t>(heads) * hd, 2.0f),
          of(oh);
      kernels::attention_scores_heads(q.data(), hd, heads, khp.data(), nblk, bs, n, 0.125f, sh.data(), n);
      kernels::attention_scores_heads(q.data(), hd, heads, kfp.data(), nblk, bs, n, 0.125f, sf.data(), n);
      kernels::attention_values_heads(p.data(), n, heads, vhp.data(), nblk, bs, v_stride, n, hd, oh.data(), hd, true);
      kernels::attention_values_heads(p.data(), n, heads, vfp.data(), nblk, bs, v_stride, n, hd, of.data(), hd, true);
      kernels::force_portable(false);
      EXPECT_EQ(0, std::memcmp(sh.data(), sf.data(), sh.size() * sizeof(float)));
      EXPECT_EQ(0, std::memcmp(oh.data(), of.data(), oh.size() * sizeof(float)));
    }
  }
}

// The attention softmax: both ISA paths give the same bits, and the result is within a few ulp of
// a double-precision softmax, for lengths around the vector width and long rows, including scores
// far below the maximum (whose exp is below the float range and becomes 0).
TEST(Kernels, SoftmaxMatchesDoublePrecisionAndIsTheSameOnBothPaths) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  for (int n : {1, 7, 16, 17, 33, 100, 1000}) {
    std::vector<float> x(n);
    for (auto& v : x) v = nd(rng);
    if (n > 2) x[1] = x[0] - 120.0f;  // exp underflows: exactly 0
    std::vector<double> ref(n);
    double mx = *std::max_element(x.begin(), x.end()), sum = 0;
    for (int j = 0; j < n; ++j) sum += ref[j] = std::exp(static_cast<double>(x[j]) - mx);
    std::vector<float> fast = x, portable = x;
    kernels::softmax(fast.data(), n);
    kernels::force_portable(true);
    kernels::softmax(portable.data(), n);
    kernels::force_portable(false);
    EXPECT_EQ(0, std::memcmp(fast.data(), portable.data(), n * sizeof(float))) << "n=" << n;
    double total = 0;
    for (int j = 0; j < n; ++j) {
      total += fast[j];
      // x - max is rounded to float (as with expf): 2^-24 relative of the argument, plus a few ulp.
      const double rel = 4e-7 + 6e-8 * std::abs(static_cast<double>(x[j]) - mx);
      EXPECT_NEAR(fast[j], ref[j] / sum, rel * (ref[j] / sum) + 1e-30) << "n=" << n << " j=" << j;
    }
    EXPECT_NEAR(total, 1.0, 1e-5) << "n=" << n;
    if (n > 2) {
      EXPECT_EQ(fast[1], 0.0f);
    }
  }
}

TEST(Kernels, SiluMatchesDoublePrecisionAndIsTheSameOnBothPaths) {
  std::mt19937 rng(12);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int n : {1, 15, 16, 17, 100, 2048}) {
    std::vector<float> gate(n), up(n);
    for (auto& v : gate) v = nd(rng);
    for (auto& v : up) v = nd(rng);
    if (n > 4) {
      gate[1] = -95.0f;  // exp(-g) past the cap: the product is ~0
      gate[2] = 95.0f;   // exp(-g) underflows: silu(g) = g
      gate[3] = std::numeric_limits<float>::quiet_NaN();
    }
    std::vector<float> fast(n), portable(n);
    kernels::silu_mul(gate.data(), up.data(), n, fast.data());
    kernels::force_portable(true);
    kernels::silu_mul(gate.data(), up.data(), n, portable.data());
    kernels::force_portable(false);
    EXPECT_EQ(0, std::memcmp(fast.data(), portable.data(), n * sizeof(float))) << "n=" << n;
    for (int i = 0; i < n; ++i) {
      const double g = gate[i], ref = g / (1.0 + std::exp(-g)) * up[i];
      if (std::isnan(g)) {
        EXPECT_TRUE(std::isnan(fast[i])) << "n=" << n << " i=" << i;
        continue;
      }
      EXPECT_NEAR(fast[i], ref, 1e-6 * std::abs(ref) + 1e-30) << "n=" << n << " i=" << i << " g=" << g;
    }
  }
}

TEST(Kernels, LogSoftmaxAndExpMatchDoublePrecisionAndAreTheSameOnBothPaths) {
  std::mt19937 rng(13);
  std::normal_distribution<float> nd(0.0f, 5.0f);
  for (int n : {1, 9, 16, 31, 1000, 32000}) {
    std::vector<float> x(n);
    for (auto& v : x) v = nd(rng);
    if (n > 3) {
      x[1] = -INFINITY;  // a masked logit: logprob -inf, probability 0
      x[2] = x[0] - 200.0f;
    }
    std::vector<float> fast(n), portable(n), pf(n), pp(n);
    kernels::log_softmax(x.data(), n, fast.data());
    kernels::exp(fast.data(), n, pf.data());
    kernels::force_portable(true);
    kernels::log_softmax(x.data(), n, portable.data());
    kernels::exp(portable.data(), n, pp.data());
    kernels::force_portable(false);
    EXPECT_EQ(0, std::memcmp(fast.data(), portable.data(), n * sizeof(float))) << "n=" << n;
    EXPECT_EQ(0, std::memcmp(pf.data(), pp.data(), n * sizeof(float))) << "n=" << n;
    double mx = -INFINITY, sum = 0, total = 0;
    for (float v : x) mx = std::max(mx, static_cast<double>(v));
    for (float v : x) sum += std::exp(static_cast<double>(v) - mx);
    for (int i = 0; i < n; ++i) {
      const double ref = static_cast<double>(x[i]) - mx - std::log(sum);
      total += pf[i];
      if (std::isinf(x[i])) {
        EXPECT_EQ(fast[i], -INFINITY);
        EXPECT_EQ(pf[i], 0.0f);
        continue;
      }
      EXPECT_NEAR(fast[i], ref, 2e-6 * (1 + std::abs(ref))) << "n=" << n << " i=" << i;
      EXPECT_NEAR(pf[i], std::exp(ref), 1e-6 * std::exp(ref) + 1e-30 + 4e-7 * std::abs(ref) * std::exp(ref))
          << "n=" << n << " i=" << i;
    }
    EXPECT_NEAR(total, 1.0, 1e-5) << "n=" << n;
  }
}

}  // namespace
}  // namespace zr
