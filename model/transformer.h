// Transformer: the Llama / Qwen2 / Qwen3 forward pass over a ragged batch. One call advances many
// sequences, each by a chunk of prompt tokens or by one decode token, reading and writing the
// paged KV cache. Every row (token) is computed by the same operations whatever else is in the
// batch (see model/kernels.h), so outputs are batch-invariant and a prefill row equals the decode
// row for the same token.
// Ownership: borrows weights, cache and pool; owns its activation buffers (reused across calls).
// Thread-safety: one caller at a time.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "model/kernels.h"
#include "model/kernels_packed.h"
#include "model/kv_cache.h"
#include "model/rope.h"
#include "model/thread_pool.h"
#include "model/tp.h"
#include "model/weight_packs.h"
#include "model/weights.h"

namespace zr {

// One sequence's share of a forward step.
struct SeqChunk {
  const int* tokens = nullptr;  // tokens at positions [start_pos, start_pos + num_tokens)
  int num_tokens = 0;
  int start_pos = 0;
  const std::vector<int>* block_table = nullptr;  // covers start_pos + num_tokens positions
  int logits_begin = 0;  // logits are produced for rows [logits_begin, num_tokens) of this chunk
};

class Transformer {
 public:
  // Tensor parallelism: with `tp` (weights and cache holding this rank's shard, model/tp.h) every
  // rank of the engine calls forward() with the same batch; partial sums meet in tp->allreduce_sum
  // and the logits slices on rank 0.
  // compute: how every matmul multiplies (kernels::Compute; bf16 rounds activations to bf16).
  Transformer(const ModelWeights* weights, KvCache* kv, ThreadPool* pool, TpComm* tp = nullptr,
              kernels::Compute compute = kernels::Compute::f32);

  // Appends to `logits` one row of vocab_size floats per requested row, in batch order (on TP
  // ranks other than 0 `logits` is left unchanged).
  void forward(std::span<const SeqChunk> batch, std::vector<float>& logits);
  void set_weights(const ModelWeights* weights) { w_ = weights; }
  const ModelConfig& config() const { return w_->config(); }
  // Every matmul weight runs as a pack (model/weight_packs.h) made from the weight's bytes. A
  // weight update builds its packs while it stages (pack_stager(), on the staging thread) and the
  // commit swaps them in with the pointers (adopt_packs()). Packs still follow the weights: one
  // whose bytes changed without a staged pack (a resume) is repacked here, and forward() calls this
  // first, so a swap that nobody announced still computes on the new weights. Returns the bytes
  // packed by this call (0 after a commit that adopted its staged packs).
  size_t refresh_packs();
  // Builds the packs version `next` needs beside the live ones (current: the serving weights),
  // into the pages of the packs the last commit retired. Callable from any thread while this
  // transformer serves; the function keeps the pool alive, not the transformer.
  PackStager pack_stager() const;
  // The commit: staged packs replace the live ones (which go to the pool for the next stage).
  void adopt_packs(WeightPacks&& staged) { packs_.adopt(std::move(staged), pack_pool_.get()); }
  // Drops every pack, live and retired (release_memory: the packs are copies of the weights' bytes).
  void drop_packs();
  // Bytes of the live packs and the retired ones kept for the next stage.
  size_t pack_bytes() const { return packs_.bytes() + pack_pool_->bytes(); }
  const WeightPacks& packs() const { return packs_; }

 private:
  struct Row {  // one token of the batch
    int seq;    // index into the batch
    int pos;
  };
  void resize(int rows);
  void attention_layer(int layer, std::span<const SeqChunk> batch);
  struct AttnScratch {                         // per pool thread
    std::vector<float> scores;                 // [head - h0][position]
    std::vector<const float*> blocks;          // [head - h0][block of the group]: keys or values of the head's KV head
    std::vector<const uint16_t*> blocks_bf16;  // the same for a bf16 cache
  };
  void attend_heads(int layer, const SeqChunk& chunk, int row, int pos, int h0, int h1, AttnScratch& sc);
  // E: the cache's element type (float, or uint16_t for bf16).
  template <class E>
  void attend_heads_as(int layer, const SeqChunk& chunk, int row, int pos, int h0, int h1, AttnScratch& sc,
                       std::vector<const E*>& ptrs);
  // K and V of one row into the cache (rounded to bf16 for a bf16 cache), KV heads [kvh0, kvh1).
  void write_kv_row(int layer, const SeqChunk& chunk, int row, int pos, int kvh0, int kvh1);
  template <class E>
  void write_kv_row_as(int layer, const SeqChunk& chunk, int row, int pos, int kvh0, int kvh1);
  // fn(r) for every row r in [0, rows): on the pool when there are enough rows to pay for the
  // hand-off, else on this thread. Row work is a pure function of the row (any split, same bits).
  template <class F>
  void for_rows(int rows, F&& fn);

  void project_logits(int out_rows, std::vector<float>& logits);
  // The pack of a matmul weight (refresh_packs() made it current).
  const kernels::PackedMatrix& packed(TensorRole role, int layer = -1) const { return packs_.get(role, layer); }

  WeightPacks packs_;
  std::shared_ptr<PackPool> pack_pool_ = std::make_shared<PackPool>();  // shared with staging threads
  const ModelWeights* w_;
  KvCache* kv_;
  ThreadPool* pool_;
  TpComm* tp_;
  kernels::Compute compute_;
  ModelConfig lc_;  // this rank's dimensions (heads, KV heads, intermediate); the full config without TP
  TpLayout layout_;
  std::vector<float> local_logits_, gathered_;
  RopeTable rope_;  // (max_position_embeddings, head_dim / 2)
  std::vector<Row> rows_;
  // Activations, (rows, width) row-major; rows that feed a matmul are kernels::padded_stride apart:
  // x_, xb_ ld_d_ (hidden), q_, att_ ld_q_, hb_, hb2_ ld_ffn_; k_, v_ kv_dim.
  std::vector<float> x_, xb_, q_, k_, v_, att_, hb_, hb2_;
  int ld_d_ = 0, ld_q_ = 0, ld_ffn_ = 0;
};

}  // namespace zr
