#include "model/tp.h"

#include <cstring>
#include <memory>

#include "model/weights.h"

namespace zr {

namespace {

enum class Split { replicated, rows, cols };

Split split_of(TensorRole role) {
  switch (role) {
    case TensorRole::wq:
    case TensorRole::wk:
    case TensorRole::wv:
    case TensorRole::bq:
    case TensorRole::bk:
    case TensorRole::bv:
    case TensorRole::w_gate:
    case TensorRole::w_up:
    case TensorRole::lm_head:
      return Split::rows;
    case TensorRole::wo:
    case TensorRole::w_down:
      return Split::cols;
    default:
      return Split::replicated;
  }
}

// The slice of the split dimension (rows for row splits, columns for column splits).
Range owned(TensorRole role, const ModelConfig& cfg, TpShard shard) {
  TpLayout l = tp_layout(cfg, shard);
  const int hd = cfg.head_dim;
  switch (role) {
    case TensorRole::wq:
    case TensorRole::bq:
    case TensorRole::wo:
      return {l.heads.begin * hd, l.heads.size * hd};
    case TensorRole::wk:
    case TensorRole::wv:
    case TensorRole::bk:
    case TensorRole::bv:
      return {l.kv_heads.begin * hd, l.kv_heads.size * hd};
    case TensorRole::w_gate:
    case TensorRole::w_up:
    case TensorRole::w_down:
      return l.ffn;
    case TensorRole::lm_head:
      return l.vocab;
    default:
      return {};
  }
}

}  // namespace

Status check_tp(const ModelConfig& cfg, int tp_size) {
  if (tp_size < 1)
    return make_error(ErrorCode::invalid_argument, "tp: must be at least 1, got " + std::to_string(tp_size));
  if (cfg.num_kv_heads % tp_size != 0)
    return make_error(ErrorCode::invalid_argument, "tp: num_key_value_heads " + std::to_string(cfg.num_kv_heads) +
                                                       " is not a multiple of tp " + std::to_string(tp_size));
  if (cfg.intermediate_size < tp_size || cfg.vocab_size < tp_size)
    return make_error(ErrorCode::invalid_argument,
                      "tp: " + std::to_string(tp_size) + " ranks exceed intermediate_size or vocab_size");
  return {};
}

Range split_range(int n, TpShard s) {
  int64_t b = static_cast<int64_t>(n) * s.rank / s.size, e = static_cast<int64_t>(n) * (s.rank + 1) / s.size;
  return {static_cast<int>(b), static_cast<int>(e - b)};
}

TpLayout tp_layout(const ModelConfig& cfg, TpShard shard) {
  TpLayout l;
  l.kv_heads = split_range(cfg.num_kv_heads, shard);
  const int group = cfg.num_heads / cfg.num_kv_heads;
  l.heads = {l.kv_heads.begin * group, l.kv_heads.size * group};
  l.ffn = split_range(cfg.intermediate_size, shard);
  l.vocab = split_range(cfg.vocab_size, shard);
  return l;
}

ModelConfig local_config(const ModelConfig& cfg, TpShard shard) {
  ModelConfig c = cfg;
  TpLayout l = tp_layout(cfg, shard);
  c.num_heads = l.heads.size;
  c.num_kv_heads = l.kv_heads.size;
  c.intermediate_size = l.ffn.size;
  return c;
}

std::vector<int64_t> local_shape(const TensorSpec& spec, const ModelConfig& cfg, TpShard shard) {
  std::vector<int64_t> s = spec.shape;
  if (!shard.enabled()) return s;
  Split how = split_of(spec.role);
  if (how == Split::rows) s[0] = owned(spec.role, cfg, shard).size;
  else if (how == Split::cols) s[1] = owned(spec.role, cfg, shard).size;
  return s;
}

Weight shard_weight(const TensorSpec& spec, const Weight& full, const ModelConfig& cfg, TpShard shard) {
  Split how = split_of(spec.role);
  if (!shard.enabled() || how == Split::replicated || !full.data) return full;
  const Range r = owned(spec.role, cfg, shard);
  const size_t esize = dtype_size(full.dtype);
  const size_t cols = full.shape.size() > 1 ? static_cast<size_t>(full.shape[1]) : 1;
  Weight w;
  w.dtype = full.dtype;
  w.shape = local_shape(spec, cfg, shard);
  if (how == Split::rows) {  // a contiguous block of rows: a view sharing the owner
    w.data = static_cast<const uint8_t*>(full.data) + static_cast<size_t>(r.begin) * cols * esize;
    w.owner = full.owner;
    return w;
  }
  const size_t rows = static_cast<size_t>(full.shape[0]);
  auto buf = std::make_shared<std::vector<uint8_t>>(rows * r.size * esize);
  const auto* src = static_cast<const uint8_t*>(full.data);
  for (size_t i = 0; i < rows; ++i)
    std::memcpy(buf->data() + i * r.size * esize, src + (i * cols + r.begin) * esize, r.size * esize);
  w.data = buf->data();
  w.owner = std::move(buf);
  return w;
}

}  // namespace zr
