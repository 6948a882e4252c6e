// A random matmul problem for the kernel tests (test_kernels.cpp, test_kernels_packed.cpp): x
// (maxM, K) and w (N, K) drawn from N(0, 1) with a fixed seed, and w rounded to bf16 (wb).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "model/dtype.h"

namespace zr::testing {

struct Problem {
  int K, N, maxM;
  std::vector<float> x, w;
  std::vector<uint16_t> wb;
};

inline Problem make_problem(int K, int N, int maxM, unsigned seed) {
  Problem p{K, N, maxM, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  p.x.resize(static_cast<size_t>(maxM) * K);
  p.w.resize(static_cast<size_t>(N) * K);
  for (auto& v : p.x) v = nd(rng);
  for (auto& v : p.w) v = nd(rng);
  p.wb.resize(p.w.size());
  for (size_t i = 0; i < p.w.size(); ++i) p.wb[i] = f32_to_bf16(p.w[i]);
  return p;
}

}  // namespace zr::testing
