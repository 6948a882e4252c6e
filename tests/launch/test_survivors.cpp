// A dead or stopped engine does not poison the job (docs/cluster.md, Failures): after one of two
// engines' ranks are killed (SIGKILL) or stopped (SIGSTOP), the trainer's next broadcast publish
// goes over a group re-formed over the survivors, every live engine serves the new version, and
// the trainer's log names the ranks left out. The trainer rank is bench_survivors (the same
// program is the benchmark); the engines are `zrollout serve` ranks of the same mpirun job.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "model/make_model.h"
#include "tests/test_util.h"

namespace {

using nlohmann::json;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class Survivors : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = zr::testing::shared_model_dir("stories260K");
    if (!d) GTEST_SKIP() << "shared model 'stories260K' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models";
    real_ = *d;
    zr::MakeModelOptions mo;  // the engines start on random weights; publishes bring the real ones
    mo.like_dir = real_;
    mo.seed = 5;
    mo.out_dir = tmp_ / "random";
    ASSERT_TRUE(zr::make_model(mo).ok());
    std::ifstream f(real_ + "/reference.json");
    ref_ = json::parse(f)["cases"][0];
    std::ofstream in(tmp_ / "in.jsonl");
    for (int i = 0; i < 4; ++i)
      in << json{{"rid", "g" + std::to_string(i)},
                 {"input_ids", ref_["prompt_ids"]},
                 {"sampling_params", {{"max_new_tokens", 32}, {"temperature", 0}}}}
                .dump()
         << "\n";
  }
  // The job: the trainer rank, then engine 0 and engine 1 of `tp` ranks each (engine 1's ranks
  // are told apart by --kv-cache-mb 65, for the fault commands).
  std::string job(int tp, const std::string& trainer_args) {
    const std::string bin = ZR_ZROLLOUT_BIN;
    std::string cmd = std::string(ZR_MPIEXEC) + " --oversubscribe --bind-to none --mca btl self,vader" +
                      " --mca orte_enable_recovery 1";
    if (geteuid() == 0) cmd += " --allow-run-as-root";
    std::string serve = bin + " serve --model " + (tmp_ / "random") + " --tp " + std::to_string(tp) +
                        " --bind 'tcp://127.0.0.1:*' --threads 1";
    return cmd + " -np 1 " + ZR_BENCH_SURVIVORS + " --push " + real_ + " " + trainer_args + " : -np " +
           std::to_string(tp) + " " + serve + " --kv-cache-mb 64 : -np " + std::to_string(tp) + " " + serve +
           " --kv-cache-mb 65";
  }
  std::string engine1(const std::string& signal) {
    return "pkill -" + signal + " -f '^" + std::string(ZR_ZROLLOUT_BIN) + " serve .*--kv-cache-mb 65'";
  }
  // Runs the job; returns the trainer's JSON lines (stdout) and keeps the whole log in log_.
  std::vector<json> run(const std::string& cmd) {
    int st = std::system((cmd + " > " + (tmp_ / "out.txt") + " 2> " + (tmp_ / "log.txt")).c_str());
    (void)st;  // mpirun reports the killed ranks in its exit code; the trainer's lines are the verdict
    log_ = slurp(tmp_ / "log.txt") + slurp(tmp_ / "out.txt");
    std::vector<json> lines;
    std::istringstream in(slurp(tmp_ / "out.txt"));
    for (std::string line; std::getline(in, line);) {
      json j = json::parse(line, nullptr, false);
      if (!j.is_discarded() && j.is_object()) lines.push_back(j);
    }
    return lines;
  }
  // Every generate output of `file` is the reference's greedy continuation at `version`.
  void expect_reference_outputs(const std::string& file, int64_t version) {
    std::ifstream out(file);
    int n = 0;
    for (std::string line; std::getline(out, line); ++n) {
      json o = json::parse(line);
      EXPECT_EQ(o["output_ids"], ref_["greedy_ids"]) << o.dump();
      EXPECT_EQ(o["meta_info"]["weight_version"], version);
    }
    EXPECT_EQ(n, 4) << file << "\n" << log_;
  }
  zr::testing::TempDir tmp_;
  std::string real_, log_;
  json ref_;
};

// Two engines of TP=2 take two publishes; engine 1's ranks are killed; the next two publishes
// reach engine 0's ranks over the survivors' group, and engine 0 then answers with the real
// weights of the last version (a rank that missed the bytes would give other tokens).
TEST_F(Survivors, KillingOneOfTwoTp2EnginesThenPublishingReachesTheSurvivors) {
  auto lines = run(job(2, "--publishes 2 --input " + (tmp_ / "in.jsonl") + " --output " + (tmp_ / "gen") +
                              " --fault \"" + engine1("9") + "\""));
  ASSERT_EQ(lines.size(), 5u) << log_;
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(lines[i]["ok"].get<bool>()) << lines[i].dump() << log_;
    EXPECT_EQ(lines[i]["version"], i + 1);
    EXPECT_EQ(lines[i]["acked"], i < 2 ? json({0, 1}) : json({0})) << log_;
    EXPECT_EQ(lines[i]["dead"], i < 2 ? json::array() : json({1})) << log_;
  }
  EXPECT_EQ(lines[4]["versions"], json({{"0", 4}, {"1", nullptr}})) << log_;
  // Weight-group ranks 3 and 4 (engine 1) are world ranks 3 and 4: the trainer is rank 0.
  EXPECT_NE(log_.find("left out: rank(s) 3, 4 (world rank(s) 3, 4) of engine(s) 1 (tcp://127.0.0.1:"),
            std::string::npos)
      << log_;
  expect_reference_outputs(tmp_ / "gen.before.jsonl", 2);
  expect_reference_outputs(tmp_ / "gen.fault.jsonl", 2);
  expect_reference_outputs(tmp_ / "gen.final.jsonl", 4);
}

// A stopped engine (SIGSTOP) is alive for MPI and the kernel but answers nothing: the trainer's
// liveness probe declares it dead within the router's window (10 x 500 ms) and the publish goes
// to the survivor, as after a kill. The stopped ranks are killed at the end so that mpirun ends.
TEST_F(Survivors, StoppedEngineIsLeftOutWithinTheLivenessTimeout) {
  auto lines = run(job(1, "--publishes 1 --fault \"" + engine1("STOP") + "\" --after \"" + engine1("9") + "\""));
  ASSERT_EQ(lines.size(), 3u) << log_;
  EXPECT_TRUE(lines[0]["ok"].get<bool>()) << log_;
  EXPECT_EQ(lines[0]["acked"], json({0, 1})) << log_;
  EXPECT_TRUE(lines[1]["ok"].get<bool>()) << lines[1].dump() << log_;
  EXPECT_EQ(lines[1]["acked"], json({0})) << log_;
  EXPECT_EQ(lines[1]["dead"], json({1})) << log_;
  // Detection is part of that publish: most of the liveness window (5 s), well under the
  // broadcast's timeout (60 s), which a publish to the stopped rank would have run into.
  EXPECT_GT(lines[1]["liveness_seconds"].get<double>(), 4.0) << log_;
  EXPECT_LT(lines[1]["liveness_seconds"].get<double>(), 8.0) << log_;
  EXPECT_LT(lines[1]["seconds"].get<double>(), 30.0) << log_;
  EXPECT_EQ(lines[2]["versions"], json({{"0", 2}, {"1", nullptr}})) << log_;
  EXPECT_NE(log_.find("left out: rank(s) 2 (world rank(s) 2) of engine(s) 1"), std::string::npos) << log_;
}

}  // namespace
