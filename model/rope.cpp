#include "model/rope.h"

#include <cmath>
#include <numbers>

namespace zr {

namespace {

// _compute_llama3_parameters, one frequency at a time (Meta's apply_scaling reads the same way).
double llama3_scaled(double inv_freq, const RopeScaling& s) {
  const double old_context = s.original_max_position_embeddings;
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  const double wavelen = 2.0 * std::numbers::pi / inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / s.factor;
  if (wavelen < high_freq_wavelen) return inv_freq;
  const double smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  return (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq;
}

}  // namespace

std::vector<double> rope_inverse_frequencies(const ModelConfig& cfg) {
  const int half = cfg.head_dim / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(static_cast<double>(cfg.rope_theta), (2.0 * i) / cfg.head_dim);
    switch (cfg.rope_scaling.type) {
      case RopeScaling::Type::none:
        break;
      case RopeScaling::Type::linear:
        f /= cfg.rope_scaling.factor;
        break;
      case RopeScaling::Type::llama3:
        f = llama3_scaled(f, cfg.rope_scaling);
        break;
    }
    inv[static_cast<size_t>(i)] = f;
  }
  return inv;
}

RopeTable make_rope_table(const ModelConfig& cfg, int positions) {
  RopeTable t;
  t.half = cfg.head_dim / 2;
  const std::vector<double> inv = rope_inverse_frequencies(cfg);
  t.cos.resize(static_cast<size_t>(positions) * t.half);
  t.sin.resize(t.cos.size());
  for (int p = 0; p < positions; ++p) {
    for (int i = 0; i < t.half; ++i) {
      const double a = p * inv[static_cast<size_t>(i)];
      t.cos[static_cast<size_t>(p) * t.half + i] = static_cast<float>(std::cos(a));
      t.sin[static_cast<size_t>(p) * t.half + i] = static_cast<float>(std::sin(a));
    }
  }
  return t;
}

}  // namespace zr
