// The cluster launch under mpirun: `mpirun -np 1 zrollout trainer ... : -np 2 zrollout serve ...`.
// Engines are found through MPI, weights go by MPI broadcast, refused pushes exit non-zero.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>

#include "model/make_model.h"
#include "tests/test_util.h"

namespace {

using nlohmann::json;

std::string mpirun_prefix() {
  std::string cmd = std::string(ZR_MPIEXEC) + " --oversubscribe --bind-to none --mca btl self,vader";
  if (geteuid() == 0) cmd += " --allow-run-as-root";
  return cmd;
}

int run(const std::string& cmd, const std::string& log) {
  int st = std::system((cmd + " > " + log + " 2>&1").c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class Cluster : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = zr::testing::shared_model_dir("stories260K");
    if (!d) GTEST_SKIP() << "shared model 'stories260K' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models";
    real_ = *d;
    zr::MakeModelOptions mo;
    mo.like_dir = real_;
    mo.seed = 3;
    mo.out_dir = tmp_ / "random";
    ASSERT_TRUE(zr::make_model(mo).ok());
    std::ifstream f(real_ + "/reference.json");
    ref_ = json::parse(f)["cases"][0];
    json req = {{"rid", "g"},
                {"input_ids", ref_["prompt_ids"]},
                {"sampling_params", {{"max_new_tokens", 32}, {"temperature", 0}}}};
    std::ofstream(tmp_ / "in.jsonl") << req.dump() << "\n";
  }
  std::string launch(const std::string& trainer_args) {
    const std::string bin = ZR_ZROLLOUT_BIN;
    return mpirun_prefix() + " -np 1 " + bin + " trainer " + trainer_args + " : -np 2 " + bin + " serve --model " +
           (tmp_ / "random") + " --bind tcp://127.0.0.1:* --threads 1" + roots();
  }
  // 2 engines x TP=2: serve ranks 1-2 are engine 0, ranks 3-4 engine 1 (rank 0 the trainer).
  std::string launch_tp(const std::string& trainer_args) {
    const std::string bin = ZR_ZROLLOUT_BIN;
    return mpirun_prefix() + " -np 1 " + bin + " trainer " + trainer_args + " : -np 4 " + bin + " serve --model " +
           (tmp_ / "random") + " --tp 2 --bind tcp://127.0.0.1:* --threads 1 --kv-cache-mb 64" + roots();
  }
  // Disk publishes push the shared checkpoint's own folder: the engines may read there too.
  std::string roots() const {
    return " --weights-root " + tmp_.path() + " --weights-root " + std::filesystem::path(real_).parent_path().string();
  }
  void kill_one_rank_of_engine1(bool leader, const std::string& survivor_says);
  zr::testing::TempDir tmp_;
  std::string real_;
  json ref_;
};

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Engines start on random weights; the trainer publishes the real checkpoint by each path. Both
// engines' answers equal the independent reference only if every TP rank of each took the update.
TEST_F(Cluster, TwoEnginesOfTp2TakeUpdatesByEveryPath) {
  json req = {{"input_ids", ref_["prompt_ids"]}, {"sampling_params", {{"max_new_tokens", 32}, {"temperature", 0}}}};
  {
    std::ofstream in(tmp_ / "in2.jsonl");
    for (int i = 0; i < 4; ++i) {
      req["rid"] = "g" + std::to_string(i);
      in << req.dump() << "\n";
    }
  }
  for (const char* path : {"broadcast", "ipc", "disk"}) {
    SCOPED_TRACE(path);
    int rc = run(launch_tp("--push " + real_ + " --path " + path + " --version 1 --input " + (tmp_ / "in2.jsonl") +
                           " --output " + (tmp_ / "out2.jsonl") + " --shutdown"),
                 tmp_ / "log");
    std::string log = slurp(tmp_ / "log");
    ASSERT_EQ(rc, 0) << log;
    EXPECT_NE(log.find("2 engine(s) found through MPI"), std::string::npos) << log;
    EXPECT_EQ(count(log, "tp rank 1: weights version 1 committed"), 2u) << log;  // each engine's follower
    std::ifstream out(tmp_ / "out2.jsonl");
    std::string line;
    int lines = 0;
    while (std::getline(out, line)) {
      json o = json::parse(line);
      EXPECT_EQ(o["output_ids"], ref_["greedy_ids"]) << o.dump();
      EXPECT_EQ(o["meta_info"]["weight_version"], 1);
      ++lines;
    }
    EXPECT_EQ(lines, 4);
  }
}

TEST_F(Cluster, ServeRanksNotAMultipleOfTpAreRefused) {
  const std::string bin = ZR_ZROLLOUT_BIN;
  int rc = run(mpirun_prefix() + " -np 3 " + bin + " serve --model " + (tmp_ / "random") +
                   " --tp 2 --bind tcp://127.0.0.1:* --threads 1",
               tmp_ / "log");
  EXPECT_NE(rc, 0);
  std::string log = slurp(tmp_ / "log");
  EXPECT_NE(log.find("not a multiple of --tp 2"), std::string::npos) << log;
}

TEST_F(Cluster, BroadcastPushThenGenerateMatchesReference) {
  int rc = run(launch("--push " + real_ + " --path broadcast --bucket-mib 1 --version 1 --input " +
                      (tmp_ / "in.jsonl") + " --output " + (tmp_ / "out.jsonl") + " --shutdown"),
               tmp_ / "log");
  ASSERT_EQ(rc, 0) << slurp(tmp_ / "log");
  EXPECT_NE(slurp(tmp_ / "log").find("bucket(s) of 1 MiB took"), std::string::npos) << slurp(tmp_ / "log");
  std::ifstream out(tmp_ / "out.jsonl");
  json line = json::parse(out);
  EXPECT_EQ(line["output_ids"], ref_["greedy_ids"]);
  EXPECT_EQ(line["meta_info"]["weight_version"], 1);
  EXPECT_EQ(line["meta_info"]["weight_version_spans"], json::parse("[[0, 1]]"));
  std::string log = slurp(tmp_ / "log");
  EXPECT_NE(log.find("2 engine(s) found through MPI"), std::string::npos) << log;
}

TEST_F(Cluster, RefusedBroadcastExitsNonZeroAndNamesTensorAndRank) {
  zr::MakeModelOptions other;  // a model of another shape: every tensor mismatches
  other.preset = "tiny";
  other.out_dir = tmp_ / "tiny";
  ASSERT_TRUE(zr::make_model(other).ok());
  // The push is refused; the engines keep serving version 0, so the shutdown below is never reached
  // by the trainer and the job ends by the trainer's error exit.
  int rc = run(launch("--push " + (tmp_ / "tiny") + " --path broadcast --version 1 --shutdown"), tmp_ / "log");
  EXPECT_NE(rc, 0);
  std::string log = slurp(tmp_ / "log");
  EXPECT_NE(log.find("push refused"), std::string::npos) << log;
  EXPECT_NE(log.find("weight_mismatch"), std::string::npos) << log;
  EXPECT_NE(log.find("rank"), std::string::npos) << log;
}

// Wildcard binds advertise a routable address: the one of --advertise-interface here.
TEST_F(Cluster, WildcardBindAdvertisesTheInterfaceAddress) {
  const std::string bin = ZR_ZROLLOUT_BIN;
  int rc = run(mpirun_prefix() + " -np 1 " + bin + " trainer --input " + (tmp_ / "in.jsonl") + " --output " +
                   (tmp_ / "out.jsonl") + " --shutdown : -np 2 " + bin + " serve --model " + real_ +
                   " --bind 'tcp://0.0.0.0:*' --advertise-interface lo --threads 1 --kv-cache-mb 64",
               tmp_ / "log");
  std::string log = slurp(tmp_ / "log");
  ASSERT_EQ(rc, 0) << log;
  EXPECT_EQ(count(log, "engine at tcp://127.0.0.1:"), 2u) << log;
  // Bound beyond loopback: both engines serve with the keys the trainer rank handed out over MPI
  // (the trainer's requests above got through with them).
  EXPECT_EQ(count(log, "CURVE on: 1 trainer key(s)"), 2u) << log;
  std::ifstream out(tmp_ / "out.jsonl");
  EXPECT_EQ(json::parse(out)["output_ids"], ref_["greedy_ids"]);

  rc = run(mpirun_prefix() + " -np 1 " + bin + " serve --model " + real_ +
               " --bind 'tcp://0.0.0.0:*' --advertise-interface no-such-if0 --threads 1 --insecure",
           tmp_ / "log");
  log = slurp(tmp_ / "log");
  EXPECT_NE(rc, 0);
  EXPECT_NE(log.find("no IPv4 address on interface 'no-such-if0'"), std::string::npos) << log;
}

// One engine's TP ranks are killed (SIGKILL) while the trainer's batch runs on both engines. The
// trainer's router declares it dead, re-routes its requests with their partial output, and every
// request finishes exactly as in a run where nothing died (greedy: same tokens and logprobs bits,
// batch-invariant engines). mpirun keeps the other ranks alive with orte_enable_recovery.
TEST_F(Cluster, KillingOneTp2EngineUnderLoadReRoutesEveryRequest) {
  const std::string bin = ZR_ZROLLOUT_BIN;
  {
    std::ofstream in(tmp_ / "load.jsonl");
    for (int i = 0; i < 48; ++i) {
      json req = {{"rid", "r" + std::to_string(i)},
                  {"input_ids", {1, 403, 407, 261 + i}},
                  {"sampling_params", {{"max_new_tokens", 500}, {"temperature", 0}, {"ignore_eos", true}}},
                  {"return_logprob", true}};
      in << req.dump() << "\n";
    }
  }
  // Engine 0 is the first app context, engine 1 the second (told apart by its --kv-cache-mb).
  auto cmd = [&](const std::string& out) {
    return mpirun_prefix() + " --mca orte_enable_recovery 1 -np 1 " + bin + " trainer --input " +
           (tmp_ / "load.jsonl") + " --output " + out + " --shutdown : -np 2 " + bin + " serve --model " + real_ +
           " --tp 2 --bind 'tcp://127.0.0.1:*' --threads 1 --kv-cache-mb 64 : -np 2 " + bin + " serve --model " +
           real_ + " --tp 2 --bind 'tcp://127.0.0.1:*' --threads 1 --kv-cache-mb 65";
  };
  ASSERT_EQ(run(cmd(tmp_ / "healthy.jsonl"), tmp_ / "healthy.log"), 0) << slurp(tmp_ / "healthy.log");

  pid_t pid = fork();
  if (pid == 0) {
    std::system((cmd(tmp_ / "killed.jsonl") + " > " + (tmp_ / "killed.log") + " 2>&1").c_str());
    _exit(0);
  }
  // Once the trainer found both engines, give generation a moment, then kill engine 1's ranks.
  for (int i = 0; i < 200 && slurp(tmp_ / "killed.log").find("engine(s) found through MPI") == std::string::npos; ++i)
    usleep(50000);
  usleep(800000);
  std::string kill = "pkill -9 -f '^" + bin + " serve .*--kv-cache-mb 65'";
  EXPECT_EQ(std::system(kill.c_str()), 0) << "no engine-1 process to kill";
  int status = 0;
  waitpid(pid, &status, 0);
  std::string log = slurp(tmp_ / "killed.log");
  EXPECT_NE(log.find("engine 1 ("), std::string::npos) << log;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex("stopped answering heartbeats: ([0-9]+) requests re-routed")))
      << log;
  EXPECT_GT(std::stoi(m[1]), 0) << log;  // it died with work in flight

  auto read = [](const std::string& path) {
    std::map<std::string, json> by_rid;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      json o = json::parse(line);
      by_rid[o["meta_info"]["id"].get<std::string>()] = o;
    }
    return by_rid;
  };
  auto healthy = read(tmp_ / "healthy.jsonl"), killed = read(tmp_ / "killed.jsonl");
  ASSERT_EQ(healthy.size(), 48u);
  ASSERT_EQ(killed.size(), 48u) << log;
  for (const auto& [rid, h] : healthy) {
    const json& k = killed.at(rid);
    EXPECT_EQ(k["output_ids"].size(), 500u) << rid;
    EXPECT_EQ(k["meta_info"]["finish_reason"]["type"], "length") << rid;
    EXPECT_EQ(k["output_ids"], h["output_ids"]) << rid;
    EXPECT_EQ(k["meta_info"]["output_token_logprobs"], h["meta_info"]["output_token_logprobs"]) << rid;
  }
}

// A standalone router in the same mpirun job finds the engines through MPI; a client sends it
// requests as to one engine. SIGTERM to mpirun stops every rank.
TEST_F(Cluster, StandaloneRouterFindsTheEnginesThroughMpi) {
  const std::string bin = ZR_ZROLLOUT_BIN;
  const std::string ep = "ipc://" + (tmp_ / "router.ipc");
  pid_t pid = fork();
  if (pid == 0) {
    std::string cmd = mpirun_prefix() + " -np 1 " + bin + " router --bind " + ep + " : -np 4 " + bin +
                      " serve --model " + real_ + " --tp 2 --bind 'tcp://127.0.0.1:*' --threads 1 --kv-cache-mb 64 > " +
                      (tmp_ / "log") + " 2>&1";
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), nullptr);
    _exit(127);
  }
  for (int i = 0; i < 200 && slurp(tmp_ / "log").find("routing on") == std::string::npos; ++i) usleep(50000);
  {
    std::ofstream in(tmp_ / "in4.jsonl");
    json req = {{"input_ids", ref_["prompt_ids"]}, {"sampling_params", {{"max_new_tokens", 32}, {"temperature", 0}}}};
    for (int i = 0; i < 4; ++i) {
      req["rid"] = "c" + std::to_string(i);
      in << req.dump() << "\n";
    }
  }
  int rc =
      run(bin + " client --connect " + ep + " --input " + (tmp_ / "in4.jsonl") + " --output " + (tmp_ / "out4.jsonl"),
          tmp_ / "client.log");
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  std::string log = slurp(tmp_ / "log");
  ASSERT_EQ(rc, 0) << slurp(tmp_ / "client.log") << log;
  EXPECT_NE(log.find("2 engine(s) found through MPI"), std::string::npos) << log;
  std::ifstream out(tmp_ / "out4.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(out, line)) {
    EXPECT_EQ(json::parse(line)["output_ids"], ref_["greedy_ids"]) << line;
    ++lines;
  }
  EXPECT_EQ(lines, 4);
}

// The world rank of a process started by mpirun (from its environment), or -1.
int world_rank_of(pid_t pid) {
  std::ifstream env("/proc/" + std::to_string(pid) + "/environ");
  std::string var;
  while (std::getline(env, var, '\0'))
    if (var.rfind("OMPI_COMM_WORLD_RANK=", 0) == 0) return std::stoi(var.substr(21));
  return -1;
}

// One rank of engine 1 dies, its peer lives on: the router re-routes the engine's requests, and
// the surviving rank notices (it pings its peer while waiting on it) and exits, so the mpirun job
// still ends instead of waiting on it forever.
void Cluster::kill_one_rank_of_engine1(bool leader, const std::string& survivor_says) {
  const std::string bin = ZR_ZROLLOUT_BIN;
  // Enough work that the kill lands mid-run however fast the engine gets: 128 x 500 tokens took
  // ~3 s on 2 cores (32 requests finished in 0.8 s, before the kill, once attention got faster).
  constexpr int kRequests = 128;
  {
    std::ofstream in(tmp_ / "load.jsonl");
    for (int i = 0; i < kRequests; ++i) {
      json req = {{"rid", "r" + std::to_string(i)},
                  {"input_ids", {1, 403, 407, 261 + i}},
                  {"sampling_params", {{"max_new_tokens", 500}, {"temperature", 0}, {"ignore_eos", true}}}};
      in << req.dump() << "\n";
    }
  }
  pid_t pid = fork();
  if (pid == 0) {
    std::string cmd = mpirun_prefix() + " --mca orte_enable_recovery 1 -np 1 " + bin + " trainer --input " +
                      (tmp_ / "load.jsonl") + " --output " + (tmp_ / "out.jsonl") + " --shutdown : -np 2 " + bin +
                      " serve --model " + real_ +
                      " --tp 2 --bind 'tcp://127.0.0.1:*' --threads 1 --kv-cache-mb 64 : -np 2 " + bin +
                      " serve --model " + real_ + " --tp 2 --bind 'tcp://127.0.0.1:*' --threads 1 --kv-cache-mb 65";
    execl("/bin/sh", "sh", "-c", ("exec " + cmd + " > " + (tmp_ / "log") + " 2>&1").c_str(), nullptr);
    _exit(127);
  }
  for (int i = 0; i < 200 && slurp(tmp_ / "log").find("engine(s) found through MPI") == std::string::npos; ++i)
    usleep(50000);
  usleep(800000);
  // Engine 1's ranks; its leader is the lower world rank.
  std::vector<std::pair<int, pid_t>> ranks;
  FILE* p = popen(("pgrep -f '^" + bin + " serve .*--kv-cache-mb 65'").c_str(), "r");
  for (int q; p && std::fscanf(p, "%d", &q) == 1;) ranks.emplace_back(world_rank_of(q), q);
  if (p) pclose(p);
  ASSERT_EQ(ranks.size(), 2u);
  std::sort(ranks.begin(), ranks.end());
  ASSERT_EQ(slurp(tmp_ / "log").find("samples written"), std::string::npos)
      << "the job finished before the kill: the test needs more work";
  ASSERT_EQ(kill(ranks[leader ? 0 : 1].second, SIGKILL), 0);
  // The job must end by itself: poll for up to 120 s.
  int status = 0;
  bool ended = false;
  for (int i = 0; i < 1200 && !ended; ++i) {
    ended = waitpid(pid, &status, WNOHANG) == pid;
    if (!ended) usleep(100000);
  }
  if (!ended) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  std::string log = slurp(tmp_ / "log");
  EXPECT_TRUE(ended) << "the mpirun job did not end: " << log;
  EXPECT_NE(log.find(survivor_says), std::string::npos) << log;
  EXPECT_NE(log.find("stopped answering heartbeats"), std::string::npos) << log;
  std::ifstream out(tmp_ / "out.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(out, line)) {
    EXPECT_EQ(json::parse(line)["output_ids"].size(), 500u);
    ++lines;
  }
  EXPECT_EQ(lines, kRequests);
}

TEST_F(Cluster, AFollowerWhoseLeaderDiedExitsAndTheJobEnds) {
  kill_one_rank_of_engine1(/*leader=*/true, "tp rank 1: the leader stopped answering");
}

TEST_F(Cluster, ALeaderWhoseFollowerDiedExitsAndTheJobEnds) {
  kill_one_rank_of_engine1(/*leader=*/false, "tp rank 0: a follower stopped answering");
}

}  // namespace
