// gtest main for tests run under mpirun: every rank runs every test (tests call collectives in the
// same order everywhere). Rank 0 prints gtest's usual report; other ranks print only their
// failures, prefixed "[rank r]". The ranks agree on the result, so mpirun's exit code is the
// verdict: 0 when every rank passed.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "tests/mpi/mpi_test_env.h"

namespace zr::testing {
namespace {

MpiGroup* g_world = nullptr;

// Failures only, with the rank in front (for ranks other than 0).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                 r.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

}  // namespace

MpiGroup& world() { return *g_world; }

}  // namespace zr::testing

int main(int argc, char** argv) {
  auto world = zr::MpiGroup::init(&argc, &argv);
  if (!world.ok()) {
    std::fprintf(stderr, "MpiGroup::init: %s\n", world.status().to_string().c_str());
    return 2;
  }
  zr::testing::g_world = &world.value();
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = world->rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new zr::testing::RankFailurePrinter(rank));
  } else {
    std::printf("MPI world: %d ranks, thread level %s\n", world->size(),
                zr::MpiGroup::thread_level_name(world->thread_level()));
  }
  int rc = RUN_ALL_TESTS();
  // Agree on the verdict so every rank exits alike.
  auto all = world->allgather_strings(std::to_string(rc));
  if (!all.ok()) return 3;
  int worst = 0;
  for (size_t r = 0; r < all->size(); ++r) {
    if ((*all)[r] != "0" && rank == 0) std::fprintf(stderr, "rank %zu failed\n", r);
    if ((*all)[r] != "0") worst = 1;
  }
  zr::testing::g_world = nullptr;
  return worst;  // the world group finalizes MPI as `world` goes out of scope
}
