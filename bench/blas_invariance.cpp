// blas_invariance: is OpenBLAS batch-invariant for a Linear layer Y = X·W^T?
//
// For W of N x K (row-major, used transposed, K = 768, N = 768 and 2048) and X of 256 x K random
// f32, every row i of Y computed as part of an M-row sgemm (rows 0..M-1 of X) is compared with the
// same row computed alone: by sgemm with M = 1 and by cblas_sgemv, and with the same row inside the
// largest batch (M = 256), which shows where the size-dependent kernel switches are. The comparison
// is of the exact bits (memcmp), with the max |difference| for scale. If any row differs, the
// engine cannot get the same logprobs from score (prefill, large M) and generate (decode, M = 1 or
// small M) through OpenBLAS, and needs its own kernel with a fixed reduction order.
//
// Runs with 1 and 2 OpenBLAS threads; the 2-thread tables also say whether each result has the
// same bits as with 1 thread. OPENBLAS_CORETYPE and the core OpenBLAS picked are printed first.
// Usage: blas_invariance [--json FILE]: rows blas_batch_invariant, blas_gemv_equal,
// blas_thread_invariant (value 1 = yes, 0 = no), bench/bench_json.h.
#include <cblas.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include <utility>
#include <vector>
#include "bench/bench_json.h"

namespace {

constexpr int kK = 768;
constexpr int kMaxM = 256;
const int kMs[] = {1, 2, 3, 7, 8, 16, 64, 256};
const int kNs[] = {768, 2048};
const int kThreads[] = {1, 2};

std::vector<float> random_f32(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// Y(m, n) = X(m, k) · W(n, k)^T, row-major: the Linear-layer call.
std::vector<float> linear_sgemm(const float* x, int m, const std::vector<float>& w, int n) {
  std::vector<float> y(size_t(m) * n);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, kK, 1.f, x, kK, w.data(), kK, 0.f, y.data(), n);
  return y;
}

std::vector<float> linear_sgemv(const float* x, const std::vector<float>& w, int n) {
  std::vector<float> y(n);
  cblas_sgemv(CblasRowMajor, CblasNoTrans, n, kK, 1.f, w.data(), kK, x, 1, 0.f, y.data(), 1);
  return y;
}

// Compares the first `rows` rows of `a` (row length n) with the per-row references.
struct Diff {
  double max_abs = 0;
  int rows_differing = 0;
  bool bitwise() const { return rows_differing == 0; }
};

Diff compare(const std::vector<float>& a, const std::vector<std::vector<float>>& ref, int rows, int n) {
  Diff d;
  for (int i = 0; i < rows; ++i) {
    const float* r = a.data() + size_t(i) * n;
    if (std::memcmp(r, ref[i].data(), sizeof(float) * n) != 0) ++d.rows_differing;
    for (int j = 0; j < n; ++j) d.max_abs = std::max(d.max_abs, std::fabs(double(r[j]) - ref[i][j]));
  }
  return d;
}

std::vector<std::vector<float>> rows_of(const std::vector<float>& y, int m, int n) {
  std::vector<std::vector<float>> out;
  for (int i = 0; i < m; ++i) out.emplace_back(y.begin() + size_t(i) * n, y.begin() + size_t(i + 1) * n);
  return out;
}

const char* yes_no(bool b) { return b ? "yes" : "no"; }

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: blas_invariance [--json FILE]\n");
      return 2;
    }
  }
  const char* ct = std::getenv("OPENBLAS_CORETYPE");
  std::printf("OPENBLAS_CORETYPE=%s core=%s\nconfig=%s\n", ct && *ct ? ct : "auto", openblas_get_corename(),
              openblas_get_config());
  std::printf("Y = X·W^T, K = %d, X and W uniform(-1, 1); row i of an M-row sgemm vs row i alone.\n", kK);

  const auto x = random_f32(size_t(kMaxM) * kK, 7);
  // (N, M) -> Y computed with 1 thread, to check thread-count invariance.
  std::map<std::pair<int, int>, std::vector<float>> one_thread;
  bool all_batch_invariant = true, all_gemv_equal = true, all_thread_invariant = true;

  for (int threads : kThreads) {
    openblas_set_num_threads(threads);
    for (int n : kNs) {
      const auto w = random_f32(size_t(n) * kK, 11 + n);
      std::vector<std::vector<float>> ref_gemm, ref_gemv;
      for (int i = 0; i < kMaxM; ++i) {
        ref_gemm.push_back(linear_sgemm(x.data() + size_t(i) * kK, 1, w, n));
        ref_gemv.push_back(linear_sgemv(x.data() + size_t(i) * kK, w, n));
      }
      std::printf("\nW %dx%d, %d OpenBLAS thread%s\n", n, kK, threads, threads == 1 ? "" : "s");
      const auto rows_256 = rows_of(linear_sgemm(x.data(), kMaxM, w, n), kMaxM, n);
      std::printf(
          "| M | vs sgemm M=1: max abs diff | bitwise equal | rows differing "
          "| vs sgemv: max abs diff | bitwise equal | rows differing "
          "| same bits as M=256 |%s\n",
          threads == 1 ? "" : " same bits as 1 thread |");
      std::printf("|---|---|---|---|---|---|---|---|%s\n", threads == 1 ? "" : "---|");
      for (int m : kMs) {
        const auto y = linear_sgemm(x.data(), m, w, n);
        Diff dg = compare(y, ref_gemm, m, n), dv = compare(y, ref_gemv, m, n);
        all_batch_invariant &= dg.bitwise();
        all_gemv_equal &= dv.bitwise();
        std::printf("| %d | %.3g | %s | %d/%d | %.3g | %s | %d/%d |", m, dg.max_abs, yes_no(dg.bitwise()),
                    dg.rows_differing, m, dv.max_abs, yes_no(dv.bitwise()), dv.rows_differing, m);
        std::printf(" %s |", yes_no(compare(y, rows_256, m, n).bitwise()));
        if (threads == 1) {
          one_thread[{n, m}] = y;
        } else {
          Diff dt = compare(y, rows_of(one_thread[{n, m}], m, n), m, n);
          all_thread_invariant &= dt.bitwise();
          std::printf(" %s |", yes_no(dt.bitwise()));
        }
        std::printf("\n");
      }
    }
  }
  std::printf("\nsgemm rows independent of M (batch-invariant): %s\n", yes_no(all_batch_invariant));
  std::printf("sgemm rows equal to sgemv bits: %s\n", yes_no(all_gemv_equal));
  std::printf("sgemm results independent of thread count (1 vs 2): %s\n", yes_no(all_thread_invariant));
  zr::bench::JsonRows rows(json_path);
  rows.add({"blas_batch_invariant", all_batch_invariant ? 1.0 : 0.0, "bool", 0});
  rows.add({"blas_gemv_equal", all_gemv_equal ? 1.0 : 0.0, "bool", 0});
  rows.add({"blas_thread_invariant", all_thread_invariant ? 1.0 : 0.0, "bool", 0});
  return rows.write() ? 0 : 1;
}
