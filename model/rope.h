// RoPE frequencies: the inverse frequencies of a config (rope_theta, head_dim, rope_scaling) with
// Hugging Face's semantics (modeling_rope_utils.py: _compute_default_rope_parameters,
// _compute_linear_scaling_rope_parameters, _compute_llama3_parameters; attention factor 1), and
// the (cos, sin) table the transformer reads. Everything is computed in double and rounded to float
// once, in the table.
#pragma once

#include <vector>

#include "model/config.h"

namespace zr {

// inv_freq[i], i < head_dim / 2: theta^(-2i / head_dim), then rescaled by rope_scaling.
//   linear: inv_freq / factor (positions divided by factor);
//   llama3: with wavelen = 2 pi / inv_freq and the pre-training context L = original_max_position_embeddings,
//           wavelen > L / low_freq_factor: inv_freq / factor; wavelen < L / high_freq_factor: unchanged;
//           between: (1 - s) inv_freq / factor + s inv_freq, s = (L / wavelen - low) / (high - low).
std::vector<double> rope_inverse_frequencies(const ModelConfig& cfg);

// cos and sin of pos * inv_freq[i] for pos < positions: (positions, head_dim / 2) row-major.
struct RopeTable {
  int half = 0;  // head_dim / 2
  std::vector<float> cos, sin;
  const float* cos_row(int pos) const { return &cos[static_cast<size_t>(pos) * half]; }
  const float* sin_row(int pos) const { return &sin[static_cast<size_t>(pos) * half]; }
};
RopeTable make_rope_table(const ModelConfig& cfg, int positions);

}  // namespace zr
