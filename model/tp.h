// Tensor parallelism: how one engine's T ranks split a Llama model (Megatron style).
//
//   attention: rank r owns heads [h0, h0 + H/T) and their KV heads [k0, k0 + KV/T): the rows of
//              q/k/v_proj (and their biases) and the matching columns of o_proj;
//   MLP:       rank r owns a slice of the intermediate dimension: rows of gate/up_proj, columns of
//              down_proj (uneven when T does not divide it);
//   vocab:     rank r owns a slice of lm_head's rows and computes those logits;
//   replicated: the embedding table and the norms, Qwen3's per-head q/k norms (head_dim) included
//              (every rank embeds its own tokens and normalizes its own heads).
// o_proj and down_proj produce partial sums over the owned heads / slice; TpComm::allreduce_sum
// adds them. The logits slices meet on the leader (rank 0) through TpComm::gather_to_leader.
//
// Parity: TpComm sums partials in rank order, identically on every rank and for every element, so
// a row's result does not depend on the batch: batch invariance and score == generate hold bitwise
// within one T. Across T the float sums group differently (agreement ~1e-6, not bitwise).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "comm/status.h"
#include "model/config.h"

namespace zr {

struct Weight;
struct TensorSpec;

struct TpShard {
  int rank = 0;
  int size = 1;
  bool enabled() const { return size > 1; }
};

struct Range {
  int begin = 0, size = 0;
  int end() const { return begin + size; }
};

// What one rank owns.
struct TpLayout {
  Range heads, kv_heads, ffn, vocab;
};

// invalid_argument (naming the field) unless num_key_value_heads is a multiple of T and every rank
// gets at least one intermediate column and one vocabulary row.
Status check_tp(const ModelConfig& cfg, int tp_size);
// Rank r's slice of n items split T ways: [n*r/T, n*(r+1)/T).
Range split_range(int n, TpShard shard);
TpLayout tp_layout(const ModelConfig& cfg, TpShard shard);
// The config this rank computes with: its head, KV head and intermediate counts (vocab unchanged).
ModelConfig local_config(const ModelConfig& cfg, TpShard shard);

// The shape a rank keeps of a tensor of shape spec.shape (equal to it when replicated).
std::vector<int64_t> local_shape(const TensorSpec& spec, const ModelConfig& cfg, TpShard shard);
// Rank `shard`'s part of the full tensor `full`. Row slices are views into `full`'s bytes (same
// owner: zero-copy); column slices (o_proj, down_proj) are copied. Replicated tensors pass through.
Weight shard_weight(const TensorSpec& spec, const Weight& full, const ModelConfig& cfg, TpShard shard);

// The collectives a tensor-parallel forward needs. Implementations: MPI (actors/tp_group.h).
// A collective that fails leaves the engine's ranks out of step for good, so implementations end
// the process rather than return (see actors/tp_group.h).
class TpComm {
 public:
  virtual ~TpComm() = default;
  virtual TpShard shard() const = 0;
  // In place: data[i] = sum over ranks r = 0..T-1, in that order, of rank r's data[i]. Every rank
  // gets the same bits.
  virtual void allreduce_sum(float* data, size_t n) = 0;
  // Rank r sends counts[r] floats from `local`; rank 0 receives them concatenated by rank in `out`
  // (sum of counts; ignored on other ranks).
  virtual void gather_to_leader(const float* local, std::span<const size_t> counts, float* out) = 0;
};

}  // namespace zr
