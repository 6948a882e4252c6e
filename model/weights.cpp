#include "model/weights.h"

#include <spdlog/spdlog.h>
#include <sys/mman.h>

#include <cstring>

#include <string_view>
#include <unordered_set>

namespace zr {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Status shape_error(const std::string& name, const std::vector<int64_t>& want, const std::vector<int64_t>& got) {
  return make_error(ErrorCode::weight_mismatch,
                    "tensor " + name + ": expected shape " + shape_text(want) + ", got " + shape_text(got));
}

std::string layer_name(int layer, const char* suffix) { return "model.layers." + std::to_string(layer) + "." + suffix; }

// Norms and biases are read as f32 by the kernels; everything else is a matmul operand or embedding.
bool is_f32_only(TensorRole r) {
  return r == TensorRole::attn_norm || r == TensorRole::ffn_norm || r == TensorRole::final_norm ||
         r == TensorRole::q_norm || r == TensorRole::k_norm || r == TensorRole::bq || r == TensorRole::bk ||
         r == TensorRole::bv;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Heap copy widened to f32; owner is the buffer.
Weight widen_to_f32(const TensorView& view, const std::vector<int64_t>& shape) {
  auto buf = std::make_shared<std::vector<float>>(static_cast<size_t>(view.numel()));
  const auto* src = static_cast<const uint8_t*>(view.data);
  for (size_t i = 0; i < buf->size(); ++i) {
    if (view.dtype == DType::f32) {
      std::memcpy(&(*buf)[i], src + 4 * i, 4);
      continue;
    }
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    (*buf)[i] = view.dtype == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
  Weight w;
  w.dtype = DType::f32;
  w.shape = shape;
  w.data = buf->data();
  w.owner = std::move(buf);
  return w;
}

// Heap copy in the same dtype, for data that is not aligned to its element size.
Weight aligned_copy(const TensorView& view, const std::vector<int64_t>& shape) {
  auto buf = std::make_shared<std::vector<uint32_t>>((view.nbytes + 3) / 4);
  std::memcpy(buf->data(), view.data, view.nbytes);
  Weight w;
  w.dtype = view.dtype;
  w.shape = shape;
  w.data = buf->data();
  w.owner = std::move(buf);
  return w;
}

}  // namespace

std::vector<TensorSpec> model_tensor_specs(const ModelConfig& cfg) {
  const int64_t d = cfg.hidden_size, ffn = cfg.intermediate_size, q = cfg.q_dim(), kv = cfg.kv_dim();
  const int64_t vocab = cfg.vocab_size;
  std::vector<TensorSpec> s;
  s.push_back({"model.embed_tokens.weight", {vocab, d}, TensorRole::embed});
  for (int l = 0; l < cfg.num_layers; ++l) {
    s.push_back({layer_name(l, "input_layernorm.weight"), {d}, TensorRole::attn_norm, l});
    s.push_back({layer_name(l, "self_attn.q_proj.weight"), {q, d}, TensorRole::wq, l});
    s.push_back({layer_name(l, "self_attn.k_proj.weight"), {kv, d}, TensorRole::wk, l});
    s.push_back({layer_name(l, "self_attn.v_proj.weight"), {kv, d}, TensorRole::wv, l});
    if (cfg.qkv_bias) {
      s.push_back({layer_name(l, "self_attn.q_proj.bias"), {q}, TensorRole::bq, l});
      s.push_back({layer_name(l, "self_attn.k_proj.bias"), {kv}, TensorRole::bk, l});
      s.push_back({layer_name(l, "self_attn.v_proj.bias"), {kv}, TensorRole::bv, l});
    }
    if (cfg.qk_norm) {
      s.push_back({layer_name(l, "self_attn.q_norm.weight"), {cfg.head_dim}, TensorRole::q_norm, l});
      s.push_back({layer_name(l, "self_attn.k_norm.weight"), {cfg.head_dim}, TensorRole::k_norm, l});
    }
    s.push_back({layer_name(l, "self_attn.o_proj.weight"), {d, q}, TensorRole::wo, l});
    s.push_back({layer_name(l, "post_attention_layernorm.weight"), {d}, TensorRole::ffn_norm, l});
    s.push_back({layer_name(l, "mlp.gate_proj.weight"), {ffn, d}, TensorRole::w_gate, l});
    s.push_back({layer_name(l, "mlp.up_proj.weight"), {ffn, d}, TensorRole::w_up, l});
    s.push_back({layer_name(l, "mlp.down_proj.weight"), {d, ffn}, TensorRole::w_down, l});
  }
  s.push_back({"model.norm.weight", {d}, TensorRole::final_norm});
  s.push_back({"lm_head.weight", {vocab, d}, TensorRole::lm_head, -1, cfg.tie_word_embeddings});
  return s;
}

bool is_recomputed_buffer(std::string_view name) { return ends_with(name, "rotary_emb.inv_freq"); }

WeightNames::WeightNames(const std::vector<TensorSpec>& specs) {
  for (const TensorSpec& s : specs) names_.insert(s.name);
}

size_t Weight::nbytes() const {
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

Result<Weight> ModelWeights::make_weight(const TensorSpec& spec, const TensorView& view) {
  if (view.shape != spec.shape) return shape_error(spec.name, spec.shape, view.shape);
  if (view.dtype != DType::f32 && view.dtype != DType::bf16 && view.dtype != DType::f16)
    return make_error(ErrorCode::unsupported, "tensor " + spec.name + ": unsupported dtype");
  if (!view.data || view.nbytes != static_cast<size_t>(view.numel()) * dtype_size(view.dtype))
    return make_error(ErrorCode::io_error, "tensor " + spec.name + ": " + std::to_string(view.nbytes) +
                                               " bytes do not match its shape and dtype");
  if (view.dtype == DType::f16 || (is_f32_only(spec.role) && view.dtype != DType::f32))
    return widen_to_f32(view, spec.shape);
  if (reinterpret_cast<uintptr_t>(view.data) % dtype_size(view.dtype) != 0) return aligned_copy(view, spec.shape);
  Weight w;  // zero-copy: points into the mapping, which `owner` keeps alive
  w.dtype = view.dtype;
  w.shape = spec.shape;
  w.data = view.data;
  w.owner = view.owner;
  return w;
}

Result<Weight> ModelWeights::make_local(const TensorSpec& spec, const TensorView& view) const {
  auto w = make_weight(spec, view);
  if (!w.ok() || !shard_.enabled()) return w;
  return shard_weight(spec, *w, cfg_, shard_);
}

Result<ModelWeights> ModelWeights::from_archive(const ModelConfig& cfg, const SafetensorsArchive& ar, TpShard shard) {
  ZR_RETURN_IF_ERROR(check_tp(cfg, shard.size));
  ModelWeights mw;
  mw.cfg_ = cfg;
  mw.shard_ = shard;
  mw.specs_ = model_tensor_specs(cfg);
  mw.weights_.resize(mw.specs_.size());
  mw.slot_.assign(static_cast<size_t>(cfg.num_layers) + 1, {});
  for (auto& row : mw.slot_) row.fill(-1);
  for (size_t i = 0; i < mw.specs_.size(); ++i) {
    const TensorSpec& spec = mw.specs_[i];
    mw.by_name_.emplace(spec.name, i);
    mw.slot_[static_cast<size_t>(spec.layer + 1)][static_cast<size_t>(spec.role)] = static_cast<int>(i);
    if (!spec.optional && !ar.find(spec.name))
      return make_error(ErrorCode::weight_mismatch, "missing tensor " + spec.name);
  }
  for (const auto& [name, view] : ar.tensors()) {
    if (!mw.by_name_.count(name) && !is_recomputed_buffer(name))
      return make_error(ErrorCode::weight_mismatch, "unexpected tensor " + name);
  }
  for (size_t i = 0; i < mw.specs_.size(); ++i) {
    const TensorView* view = ar.find(mw.specs_[i].name);
    if (!view) continue;          // optional and absent: the tied head
    if (mw.specs_[i].optional) {  // a stored tied head: shape-checked, then ignored for embed's bytes
      if (view->shape != mw.specs_[i].shape) return shape_error(view->name, mw.specs_[i].shape, view->shape);
      continue;
    }
    auto w = mw.make_local(mw.specs_[i], *view);
    if (!w.ok()) return w.status();
    mw.weights_[i] = std::move(*w);
  }
  if (cfg.tie_word_embeddings) mw.bind_tied_head();
  return mw;
}

Result<ModelWeights> ModelWeights::load_dir(const ModelConfig& cfg, const std::string& dir, TpShard shard) {
  auto ar = SafetensorsArchive::open_dir(dir);
  if (!ar.ok()) return ar.status();
  auto mw = from_archive(cfg, *ar, shard);
  if (!mw.ok()) return make_error(mw.status().code, dir + ": " + mw.status().message);
  spdlog::info("loaded {} tensors ({:.1f} MiB) from {}", mw->specs_.size(),
               static_cast<double>(mw->total_bytes()) / (1 << 20), dir);
  return mw;
}

void ModelWeights::bind_tied_head() {
  const int embed = slot_[0][static_cast<int>(TensorRole::embed)];
  const int head = slot_[0][static_cast<int>(TensorRole::lm_head)];
  ZR_CHECK(embed >= 0 && head >= 0);
  // The embedding is replicated; the head is this rank's rows of it (a view).
  weights_[static_cast<size_t>(head)] =
      shard_weight(specs_[static_cast<size_t>(head)], weights_[static_cast<size_t>(embed)], cfg_, shard_);
}

const Weight& ModelWeights::get(TensorRole role, int layer) const {
  ZR_CHECK_MSG(has(role, layer),
               "no weight for role " + std::to_string(static_cast<int>(role)) + " layer " + std::to_string(layer));
  return weights_[static_cast<size_t>(slot_[static_cast<size_t>(layer + 1)][static_cast<size_t>(role)])];
}

bool ModelWeights::has(TensorRole role, int layer) const {
  if (layer < -1 || layer + 1 >= static_cast<int>(slot_.size()) || role >= TensorRole::count_) return false;
  return slot_[static_cast<size_t>(layer + 1)][static_cast<size_t>(role)] >= 0;
}

const Weight* ModelWeights::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &weights_[it->second];
}

Status ModelWeights::replace(const std::vector<std::pair<std::string, Weight>>& staged, std::vector<Weight>* replaced) {
  std::vector<size_t> idx;
  std::unordered_set<size_t> seen;
  for (const auto& [name, w] : staged) {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return make_error(ErrorCode::weight_mismatch, "unexpected tensor " + name);
    const size_t i = it->second;
    const Weight& cur = weights_[i];
    if (!seen.insert(i).second) return make_error(ErrorCode::weight_mismatch, "duplicate tensor " + name);
    if (w.shape != local_shape(specs_[i], cfg_, shard_))
      return shape_error(name, local_shape(specs_[i], cfg_, shard_), w.shape);
    if (w.dtype != cur.dtype)
      return make_error(ErrorCode::weight_mismatch, "tensor " + name + ": expected dtype " + dtype_name(cur.dtype) +
                                                        ", got " + dtype_name(w.dtype));
    if (!w.data) return make_error(ErrorCode::weight_mismatch, "tensor " + name + ": no data");
    idx.push_back(i);
  }
  for (size_t k = 0; k < staged.size(); ++k) {
    if (replaced) replaced->push_back(std::move(weights_[idx[k]]));
    weights_[idx[k]] = staged[k].second;
  }
  // The tied head follows the embedding; a staged lm_head is validated above and then ignored.
  if (cfg_.tie_word_embeddings) bind_tied_head();
  return Status::ok_status();
}

size_t ModelWeights::total_bytes() const {
  std::unordered_set<const void*> counted;
  size_t n = 0;
  for (size_t i = 0; i < weights_.size(); ++i) {
    const Weight& w = weights_[i];
    if (specs_[i].optional && cfg_.tie_word_embeddings) continue;  // a view into the embedding
    if (w.data && counted.insert(w.data).second) n += w.nbytes();
  }
  return n;
}

Result<size_t> ModelWeights::copy_to_anonymous_memory() {
  constexpr size_t kAlign = 4096;  // every tensor starts on a page: kernels' loads stay aligned
  std::vector<size_t> offset(weights_.size(), SIZE_MAX);
  size_t total = 0;
  for (size_t i = 0; i < weights_.size(); ++i) {
    if (!weights_[i].data || (specs_[i].optional && cfg_.tie_word_embeddings)) continue;
    offset[i] = total;
    total += (weights_[i].nbytes() + kAlign - 1) / kAlign * kAlign;
  }
  if (total == 0) return size_t{0};
  void* p = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return make_error(ErrorCode::unavailable, "weights: cannot map " + std::to_string(total) + " bytes");
#ifdef MADV_HUGEPAGE
  ::madvise(p, total, MADV_HUGEPAGE);  // advisory: without THP the copy still works, in 4 KiB pages
#endif
  std::shared_ptr<const void> region(p, [total](const void* q) { ::munmap(const_cast<void*>(q), total); });
  auto* base = static_cast<uint8_t*>(p);
  for (size_t i = 0; i < weights_.size(); ++i) {
    if (offset[i] == SIZE_MAX) continue;
    Weight& w = weights_[i];
    std::memcpy(base + offset[i], w.data, w.nbytes());
    w.data = base + offset[i];
    w.owner = region;
  }
  if (cfg_.tie_word_embeddings) bind_tied_head();
  return total;
}

size_t ModelWeights::round_matrices_to_bf16() {
  size_t total = 0;
  for (size_t i = 0; i < weights_.size(); ++i) {
    Weight& w = weights_[i];
    if (!w.data || w.dtype != DType::f32 || w.shape.size() != 2 || (specs_[i].optional && cfg_.tie_word_embeddings))
      continue;
    const size_t n = w.nbytes() / 4;
    auto buf = std::shared_ptr<uint16_t[]>(new uint16_t[n]);
    const float* src = w.f32();
    for (size_t k = 0; k < n; ++k) buf[k] = f32_to_bf16(src[k]);
    w.dtype = DType::bf16;
    w.data = buf.get();
    w.owner = std::shared_ptr<const void>(buf, buf.get());
    total += n * 2;
  }
  if (cfg_.tie_word_embeddings) bind_tied_head();
  return total;
}

size_t ModelWeights::release_all() {
  size_t bytes = total_bytes();
  for (Weight& w : weights_) {
    w.data = nullptr;
    w.owner.reset();
  }
  return bytes;
}

bool ModelWeights::complete() const {
  for (size_t i = 0; i < specs_.size(); ++i)
    if (!weights_[i].data && !(specs_[i].optional && cfg_.tie_word_embeddings)) return false;
  return true;
}

}  // namespace zr
