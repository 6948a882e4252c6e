#include "model/transformer.h"

#include <algorithm>
#include <cmath>

#include "model/kernels.h"

namespace zr {

namespace {

void add_bias(float* y, int rows, int n, const Weight& b) {
  const float* bias = b.f32();
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < n; ++i) y[static_cast<size_t>(r) * n + i] += bias[i];
}

void embed_row(const Weight& emb, int token, int d, float* out) {
  if (emb.dtype == DType::bf16) {
    const uint16_t* src = emb.bf16() + static_cast<size_t>(token) * d;
    for (int i = 0; i < d; ++i) out[i] = bf16_to_f32(src[i]);
  } else {
    const float* src = emb.f32() + static_cast<size_t>(token) * d;
    std::copy(src, src + d, out);
  }
}

}  // namespace

size_t Transformer::refresh_packs() { return packs_.refresh(*w_, pool_); }

PackStager Transformer::pack_stager() const { return PackStager{compute_, pack_pool_, pool_->size()}; }

void Transformer::drop_packs() {
  packs_.clear();
  pack_pool_->clear();
}

Transformer::Transformer(const ModelWeights* weights, KvCache* kv, ThreadPool* pool, TpComm* tp,
                         kernels::Compute compute)
    : w_(weights), kv_(kv), pool_(pool), tp_(tp), compute_(compute) {
  const ModelConfig& c = weights->config();
  const TpShard shard = tp ? tp->shard() : TpShard{};
  lc_ = local_config(c, shard);
  packs_ = WeightPacks(compute, lc_.num_layers);
  layout_ = tp_layout(c, shard);
  ld_d_ = kernels::padded_stride(lc_.hidden_size);
  ld_q_ = kernels::padded_stride(lc_.q_dim());
  ld_ffn_ = kernels::padded_stride(lc_.intermediate_size);
  rope_ = make_rope_table(c, c.max_position_embeddings);
  refresh_packs();
  pack_pool_->set_limit(packs_.bytes());  // one set waiting beside the live one
}

void Transformer::resize(int rows) {
  const ModelConfig& c = lc_;
  auto grow = [rows](std::vector<float>& v, int width) {
    size_t need = static_cast<size_t>(rows) * width;
    if (v.size() < need) v.resize(need);
  };
  grow(x_, ld_d_);
  grow(xb_, ld_d_);
  grow(q_, ld_q_);
  grow(k_, c.kv_dim());
  grow(v_, c.kv_dim());
  grow(att_, ld_q_);
  grow(hb_, ld_ffn_);
  grow(hb2_, ld_ffn_);
}

namespace {
// A K or V element as the cache stores it (bf16: rounded to nearest even, as f32_to_bf16).
inline void store_kv(float& dst, float v) { dst = v; }
inline void store_kv(uint16_t& dst, float v) { dst = f32_to_bf16(v); }
}  // namespace

void Transformer::write_kv_row(int layer, const SeqChunk& ch, int r, int pos, int kvh0, int kvh1) {
  if (kv_->dtype() == DType::bf16) return write_kv_row_as<uint16_t>(layer, ch, r, pos, kvh0, kvh1);
  write_kv_row_as<float>(layer, ch, r, pos, kvh0, kvh1);
}

template <class E>
void Transformer::write_kv_row_as(int layer, const SeqChunk& ch, int r, int pos, int kvh0, int kvh1) {
  const int kvd = lc_.kv_dim(), bs = kv_->block_size(), hd = lc_.head_dim;
  int block = (*ch.block_table)[pos / bs], off = pos % bs;
  E* kt = kv_->keys_as<E>(layer, block) + off;  // transposed: dim d of this position at kt[d * bs]
  const float* kr = &k_[static_cast<size_t>(r) * kvd];
  for (int d = kvh0 * hd; d < kvh1 * hd; ++d) store_kv(kt[static_cast<size_t>(d) * bs], kr[d]);
  // values: head-major within the block, like the keys: KV head h's slot `off` at vb[(h * bs + off) * hd]
  E* vb = kv_->values_as<E>(layer, block);
  for (int h = kvh0; h < kvh1; ++h) {
    const float* vr = &v_[static_cast<size_t>(r) * kvd + static_cast<size_t>(h) * hd];
    E* dst = vb + (static_cast<size_t>(h) * bs + off) * hd;
    for (int i = 0; i < hd; ++i) store_kv(dst[i], vr[i]);
  }
}

template <class F>
void Transformer::for_rows(int rows, F&& fn) {
  constexpr int kMinRows = 8;  // below this the rows' work (a few microseconds) is not worth a hand-off
  if (rows < kMinRows || pool_->size() == 1) {
    for (int r = 0; r < rows; ++r) fn(r);
    return;
  }
  const int tasks = std::min(rows, pool_->size() * 2);
  pool_->parallel_for(tasks, [&](int t) {
    const int a = static_cast<int>(static_cast<int64_t>(rows) * t / tasks);
    const int b = static_cast<int>(static_cast<int64_t>(rows) * (t + 1) / tasks);
    for (int r = a; r < b; ++r) fn(r);
  });
}

// Causal attention of heads [h0, h1) of one query row over positions [0, pos] of its sequence. A
// KV block holds every KV head of its positions contiguously, head-major (keys [kv head][dim][slot],
// values [kv head][slot][dim]), so walking the blocks a few at a time for all these heads reads the
// sequence's K, then its V, nearly as two linear streams, and a run of heads (few rows: rows are
// cut by heads) reads one contiguous piece per block. Values were [slot][kv dim] until this layout:
// batch-1 attention took 0.81-0.91 ms per step against 0.73-0.81 now (4 alternating pairs,
// per-phase timing), batch 64 41-43 ms against 38-40 (2 pairs).
// Per (row, head) the arithmetic is the one of kernels::attention_*: the same FMA chains in the
// same order (values continue their chain across blocks), so the bits do not depend on the split.
void Transformer::attend_heads(int layer, const SeqChunk& ch, int row, int pos, int h0, int h1, AttnScratch& sc) {
  if (kv_->dtype() == DType::bf16) return attend_heads_as<uint16_t>(layer, ch, row, pos, h0, h1, sc, sc.blocks_bf16);
  attend_heads_as<float>(layer, ch, row, pos, h0, h1, sc, sc.blocks);
}

template <class E>
void Transformer::attend_heads_as(int layer, const SeqChunk& ch, int row, int pos, int h0, int h1, AttnScratch& sc,
                                  std::vector<const E*>& ptrs) {
  const ModelConfig& c = lc_;
  const int hd = c.head_dim, bs = kv_->block_size();
  const int group = c.num_heads / c.num_kv_heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const int n = pos + 1, blocks = kv_->blocks_for(n), heads = h1 - h0;
  // Blocks go kGroup at a time: their keys for all these heads (4 x 48 KiB at stories110M shape)
  // stay in L2 while the kernel runs head pairs x 4 position runs as independent chains.
  constexpr int kGroup = 4;
  sc.scores.resize(static_cast<size_t>(heads) * n);
  ptrs.resize(static_cast<size_t>(heads) * kGroup);
  const float* q = &q_[static_cast<size_t>(row) * ld_q_];
  float* out = &att_[static_cast<size_t>(row) * ld_q_];
  const std::vector<int>& table = *ch.block_table;
  // ptrs[h][b]: head h0 + h's part (its KV head's) of block b0 + b, keys or values.
  auto gather = [&](int b0, int nblk, bool keys) {
    for (int h = 0; h < heads; ++h) {
      const size_t kvh = static_cast<size_t>((h0 + h) / group);
      for (int b = 0; b < nblk; ++b)
        ptrs[static_cast<size_t>(h) * nblk + b] =
            (keys ? kv_->keys_as<E>(layer, table[b0 + b]) : kv_->values_as<E>(layer, table[b0 + b])) + kvh * hd * bs;
    }
  };
  for (int b0 = 0; b0 < blocks; b0 += kGroup) {
    const int nblk = std::min(kGroup, blocks - b0), np = std::min(nblk * bs, n - b0 * bs);
    gather(b0, nblk, /*keys=*/true);
    kernels::attention_scores_heads(q + static_cast<size_t>(h0) * hd, hd, heads, ptrs.data(), nblk, bs, np, scale,
                                    &sc.scores[static_cast<size_t>(b0) * bs], n);
  }
  for (int h = 0; h < heads; ++h) kernels::softmax(&sc.scores[static_cast<size_t>(h) * n], n);
  for (int b0 = 0; b0 < blocks; b0 += kGroup) {
    const int nblk = std::min(kGroup, blocks - b0), np = std::min(nblk * bs, n - b0 * bs);
    gather(b0, nblk, /*keys=*/false);
    kernels::attention_values_heads(&sc.scores[static_cast<size_t>(b0) * bs], n, heads, ptrs.data(), nblk, bs, hd, np,
                                    hd, out + static_cast<size_t>(h0) * hd, hd, /*accumulate=*/b0 > 0);
  }
}

// A decode row (a chunk of one token) writes its K and V into the cache here, by the thread that
// then attends over them: the write's misses bring in the lines attention reads next (the keys
// are transposed, so one row's write touches kv_dim lines). Written in the row pass before
// attention, the batch-64 step spent ~7% of its time there (perf). A split writes only its KV heads.
void Transformer::attention_layer(int layer, std::span<const SeqChunk> batch) {
  const ModelConfig& c = lc_;
  const int n_rows = static_cast<int>(rows_.size());
  // Whole rows when there are enough of them to keep every thread busy; else rows are cut into
  // runs of heads (a KV head's query heads stay together, they read the same K and V).
  const int group = c.num_heads / c.num_kv_heads;
  const int want = pool_->size() * 4;
  const int splits = n_rows >= want ? 1 : std::min(c.num_kv_heads, (want + n_rows - 1) / n_rows);
  const int total = n_rows * splits;
  const int tasks = std::min(total, pool_->size() * 8);
  pool_->parallel_for(tasks, [&](int t) {
    thread_local AttnScratch scratch;
    int a = static_cast<int>(static_cast<int64_t>(total) * t / tasks);
    int b = static_cast<int>(static_cast<int64_t>(total) * (t + 1) / tasks);
    for (int i = a; i < b; ++i) {
      const int r = i / splits, s = i % splits;
      const int kvh0 = c.num_kv_heads * s / splits, kvh1 = c.num_kv_heads * (s + 1) / splits;
      const SeqChunk& ch = batch[rows_[r].seq];
      if (ch.num_tokens == 1) write_kv_row(layer, ch, r, rows_[r].pos, kvh0, kvh1);
      attend_heads(layer, ch, r, rows_[r].pos, kvh0 * group, kvh1 * group, scratch);
    }
  });
}

void Transformer::forward(std::span<const SeqChunk> batch, std::vector<float>& logits) {
  const ModelConfig& c = lc_;
  const int d = c.hidden_size, hd = c.head_dim;
  rows_.clear();
  for (size_t s = 0; s < batch.size(); ++s)
    for (int i = 0; i < batch[s].num_tokens; ++i) rows_.push_back({static_cast<int>(s), batch[s].start_pos + i});
  const int T = static_cast<int>(rows_.size());
  if (T == 0) return;
  resize(T);
  refresh_packs();
  const Weight& emb = w_->get(TensorRole::embed);
  for (int r = 0; r < T; ++r)
    embed_row(emb, batch[rows_[r].seq].tokens[rows_[r].pos - batch[rows_[r].seq].start_pos], d,
              &x_[static_cast<size_t>(r) * ld_d_]);

  const size_t ldd = ld_d_, ldq = ld_q_, ldf = ld_ffn_, kvd = c.kv_dim();
  const int ffn = c.intermediate_size;
  // Layer 0's attention norm here; each later one runs in the pass that adds the previous layer's
  // FFN output (one pass over the rows and one pool hand-off fewer per layer; the same operations).
  const float* an0 = w_->get(TensorRole::attn_norm, 0).f32();
  for_rows(T, [&](int r) { kernels::rmsnorm(&x_[r * ldd], an0, d, c.rms_norm_eps, &xb_[r * ldd]); });
  for (int l = 0; l < c.num_layers; ++l) {
    kernels::matmul_packed_group(xb_.data(), T, ld_d_,
                                 {{&packed(TensorRole::wq, l), q_.data(), ld_q_},
                                  {&packed(TensorRole::wk, l), k_.data(), static_cast<int>(kvd)},
                                  {&packed(TensorRole::wv, l), v_.data(), static_cast<int>(kvd)}},
                                 pool_);
    // Qwen3: each q and k head is RMS-normalized (one weight for all heads) before RoPE.
    const float* qn = c.qk_norm ? w_->get(TensorRole::q_norm, l).f32() : nullptr;
    const float* kn = c.qk_norm ? w_->get(TensorRole::k_norm, l).f32() : nullptr;
    for_rows(T, [&](int r) {
      float* q = &q_[r * ldq];
      float* k = &k_[r * kvd];
      if (c.qkv_bias) {
        add_bias(q, 1, c.q_dim(), w_->get(TensorRole::bq, l));
        add_bias(k, 1, c.kv_dim(), w_->get(TensorRole::bk, l));
        add_bias(&v_[r * kvd], 1, c.kv_dim(), w_->get(TensorRole::bv, l));
      }
      if (c.qk_norm) {
        for (int h = 0; h < c.num_heads; ++h) kernels::rmsnorm(q + h * hd, qn, hd, c.rms_norm_eps, q + h * hd);
        for (int h = 0; h < c.num_kv_heads; ++h) kernels::rmsnorm(k + h * hd, kn, hd, c.rms_norm_eps, k + h * hd);
      }
      const float* cs = rope_.cos_row(rows_[r].pos);
      const float* sn = rope_.sin_row(rows_[r].pos);
      for (int h = 0; h < c.num_heads; ++h) kernels::rope_rotate(q + h * hd, hd, cs, sn);
      for (int h = 0; h < c.num_kv_heads; ++h) kernels::rope_rotate(k + h * hd, hd, cs, sn);
      // A chunk of several rows is written here, before any of its rows attends; a decode row is
      // written by attention_layer, just before it attends (see there).
      const SeqChunk& ch = batch[rows_[r].seq];
      if (ch.num_tokens > 1) write_kv_row(l, ch, r, rows_[r].pos, 0, c.num_kv_heads);
    });
    attention_layer(l, batch);
    kernels::matmul_packed(att_.data(), T, ld_q_, packed(TensorRole::wo, l), xb_.data(), ld_d_, pool_);
    if (tp_) tp_->allreduce_sum(xb_.data(), static_cast<size_t>(T) * ldd);  // the padding sums zeros
    const float* fn = w_->get(TensorRole::ffn_norm, l).f32();
    for_rows(T, [&](int r) {
      float* x = &x_[r * ldd];
      float* xb = &xb_[r * ldd];
      for (int i = 0; i < d; ++i) x[i] += xb[i];
      kernels::rmsnorm(x, fn, d, c.rms_norm_eps, xb);
    });
    kernels::matmul_packed_group(
        xb_.data(), T, ld_d_,
        {{&packed(TensorRole::w_gate, l), hb_.data(), ld_ffn_}, {&packed(TensorRole::w_up, l), hb2_.data(), ld_ffn_}},
        pool_);
    for_rows(T, [&](int r) { kernels::silu_mul(&hb_[r * ldf], &hb2_[r * ldf], ffn, &hb_[r * ldf]); });
    kernels::matmul_packed(hb_.data(), T, ld_ffn_, packed(TensorRole::w_down, l), xb_.data(), ld_d_, pool_);
    if (tp_) tp_->allreduce_sum(xb_.data(), static_cast<size_t>(T) * ldd);
    const float* next_an = l + 1 < c.num_layers ? w_->get(TensorRole::attn_norm, l + 1).f32() : nullptr;
    for_rows(T, [&](int r) {
      for (size_t i = r * ldd; i < r * ldd + d; ++i) x_[i] += xb_[i];
      if (next_an) kernels::rmsnorm(&x_[r * ldd], next_an, d, c.rms_norm_eps, &xb_[r * ldd]);
    });
  }

  // Final norm and the vocabulary projection, only for the rows whose logits are wanted.
  const float* nw = w_->get(TensorRole::final_norm).f32();
  int out_rows = 0, r0 = 0;
  for (const SeqChunk& ch : batch) {
    for (int i = ch.logits_begin; i < ch.num_tokens; ++i)
      kernels::rmsnorm(&x_[(r0 + i) * ldd], nw, d, c.rms_norm_eps, &xb_[out_rows++ * ldd]);
    r0 += ch.num_tokens;
  }
  if (out_rows == 0) return;
  project_logits(out_rows, logits);
}

// The vocabulary projection of the first out_rows rows of xb_. Under TP each rank computes its
// vocabulary slice; rank 0 gathers the slices and interleaves them into full rows.
void Transformer::project_logits(int out_rows, std::vector<float>& logits) {
  const int V = lc_.vocab_size;
  const kernels::PackedMatrix& head = packed(TensorRole::lm_head);
  if (!tp_) {
    size_t base = logits.size();
    logits.resize(base + static_cast<size_t>(out_rows) * V);
    kernels::matmul_packed(xb_.data(), out_rows, ld_d_, head, logits.data() + base, V, pool_);
    return;
  }
  const int vr = layout_.vocab.size;
  local_logits_.resize(static_cast<size_t>(out_rows) * vr);
  kernels::matmul_packed(xb_.data(), out_rows, ld_d_, head, local_logits_.data(), vr, pool_);
  const TpShard sh = tp_->shard();
  std::vector<size_t> counts(sh.size);
  for (int r = 0; r < sh.size; ++r) counts[r] = static_cast<size_t>(out_rows) * split_range(V, {r, sh.size}).size;
  if (sh.rank != 0) return tp_->gather_to_leader(local_logits_.data(), counts, nullptr);
  gathered_.resize(static_cast<size_t>(out_rows) * V);
  tp_->gather_to_leader(local_logits_.data(), counts, gathered_.data());
  size_t base = logits.size();
  logits.resize(base + static_cast<size_t>(out_rows) * V);
  const float* src = gathered_.data();
  for (int r = 0; r < sh.size; ++r) {  // rank r's block: (out_rows, its slice) row-major
    const Range slice = split_range(V, {r, sh.size});
    for (int i = 0; i < out_rows; ++i, src += slice.size)
      std::copy_n(src, slice.size, logits.data() + base + static_cast<size_t>(i) * V + slice.begin);
  }
}

}  // namespace zr
