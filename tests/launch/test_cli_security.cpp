// The zrollout binary's security and limit flags: keygen, protected mode, --insecure, and a served
// engine behind CURVE reached by `zrollout client` with and without a listed key.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "comm/client.h"
#include "comm/curve_keys.h"
#include "tests/test_util.h"

namespace {

using nlohmann::json;
using namespace std::chrono_literals;

// Runs a command with stdout and stderr into `log`; returns its exit code.
int run(const std::string& cmd, const std::string& log) {
  return WEXITSTATUS(std::system((cmd + " >" + log + " 2>&1").c_str()));
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string bin() { return ZR_ZROLLOUT_BIN; }

TEST(CliSecurity, KeygenWritesZcertFiles) {
  zr::testing::TempDir tmp;
  ASSERT_EQ(run(bin() + " keygen --out " + (tmp / "keys/server"), tmp / "log"), 0) << slurp(tmp / "log");
  struct stat st {};
  ASSERT_EQ(::stat((tmp / "keys/server.key_secret").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto pub = zr::read_curve_cert(tmp / "keys/server.key");
  auto sec = zr::read_curve_cert(tmp / "keys/server.key_secret");
  ASSERT_TRUE(pub.ok() && sec.ok());
  EXPECT_EQ(pub->public_key, sec->public_key);
  EXPECT_FALSE(sec->secret_key.empty());
  EXPECT_NE(slurp(tmp / "keys/server.key").find("public-key = \"" + pub->public_key + "\""), std::string::npos);
}

// --keys-out writes the keys an mpirun job makes: outside mpirun there are none, and it says so.
TEST(CliSecurity, KeysOutNeedsTheMpirunLaunch) {
  zr::testing::TempDir tmp;
  int rc = run(bin() + " trainer --connect tcp://127.0.0.1:1 --keys-out " + (tmp / "keys"), tmp / "log");
  std::string log = slurp(tmp / "log");
  EXPECT_EQ(rc, 2) << log;
  EXPECT_NE(log.find("--keys-out: needs the mpirun launch"), std::string::npos) << log;
  EXPECT_FALSE(std::filesystem::exists(tmp / "keys/client.key_secret"));
}

// Protected mode: a non-loopback tcp:// bind without keys does not start, and says how to fix it.
TEST(CliSecurity, ProtectedModeRefusesAnOpenNetworkBind) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  zr::testing::TempDir tmp;
  for (std::string sub : {"serve --kv-cache-mb 16 --model ", "router --engine tcp://127.0.0.1:1 --tokenizer "}) {
    int rc = run(bin() + " " + sub + dir + " --bind tcp://0.0.0.0:0", tmp / "log");
    std::string log = slurp(tmp / "log");
    EXPECT_EQ(rc, 2) << sub << log;
    EXPECT_NE(log.find("--curve-secret"), std::string::npos) << log;
    EXPECT_NE(log.find("--insecure"), std::string::npos) << log;
  }
  // Half a key set is refused too, naming the flag.
  ASSERT_EQ(run(bin() + " keygen --out " + (tmp / "c"), tmp / "log"), 0);
  int rc = run(bin() + " serve --model " + dir + " --bind tcp://127.0.0.1:0 --client-keys " + tmp.path(), tmp / "log");
  EXPECT_EQ(rc, 2);
  EXPECT_NE(slurp(tmp / "log").find("curve-secret:"), std::string::npos) << slurp(tmp / "log");
}

// A served engine: a listed client key gets answers; an unlisted one gets none (the client times out).
class ServedWithKeys : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = zr::testing::shared_model_dir("stories260K");
    if (!d) GTEST_SKIP() << "shared model 'stories260K' not found";
    dir_ = *d;
    ::mkdir((tmp_ / "trainers").c_str(), 0755);
    ::mkdir((tmp_ / "clients").c_str(), 0755);
    for (std::string k : {"server", "trainers/t", "clients/c", "stranger"})
      ASSERT_EQ(run(bin() + " keygen --out " + (tmp_ / k), tmp_ / "log"), 0);
  }
  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Starts `zrollout serve` with keys and extra flags on a free loopback port; returns the endpoint.
  std::string serve(const std::vector<std::string>& extra) {
    int port = 20000 + (getpid() % 20000);
    std::string ep = "tcp://127.0.0.1:" + std::to_string(port);
    std::vector<std::string> args = {bin(),
                                     "serve",
                                     "--model",
                                     dir_,
                                     "--bind",
                                     ep,
                                     "--kv-cache-mb",
                                     "64",
                                     "--curve-secret",
                                     tmp_ / "server.key_secret",
                                     "--trainer-keys",
                                     tmp_ / "trainers",
                                     "--client-keys",
                                     tmp_ / "clients"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = fork();
    if (pid_ == 0) {
      freopen((tmp_ / "serve.log").c_str(), "w", stderr);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    // Up when a trainer-keyed probe gets a health reply.
    zr::Client::Options o;
    o.curve = *zr::load_curve_client_keys(tmp_ / "server.key", tmp_ / "trainers/t.key_secret");
    auto probe = std::move(zr::Client::connect(ep, nullptr, o)).value();
    for (int i = 0; i < 300 && !probe->health(200ms).ok(); ++i) std::this_thread::sleep_for(10ms);
    return ep;
  }
  std::string client_cmd(const std::string& ep, const std::string& key) {
    return bin() + " client --connect " + ep + " --input " + (tmp_ / "in.jsonl") + " --output " + (tmp_ / "out.jsonl") +
           " --timeout 3 --curve-server " + (tmp_ / "server.key") + " --curve-key " + key;
  }
  zr::testing::TempDir tmp_;
  std::string dir_;
  pid_t pid_ = -1;
};

TEST_F(ServedWithKeys, ListedClientIsServedUnlistedGetsNoAnswer) {
  std::string ep = serve({});
  std::ofstream(tmp_ / "in.jsonl")
      << R"({"rid":"a","input_ids":[1,403],"sampling_params":{"max_new_tokens":4,"temperature":0}})"
      << "\n";
  ASSERT_EQ(run(client_cmd(ep, tmp_ / "clients/c.key_secret"), tmp_ / "log"), 0) << slurp(tmp_ / "log");
  json good = json::parse(slurp(tmp_ / "out.jsonl"));
  EXPECT_EQ(good["output_ids"].size(), 4u) << good.dump();
  ASSERT_EQ(run(client_cmd(ep, tmp_ / "stranger.key_secret"), tmp_ / "log"), 0) << slurp(tmp_ / "log");
  json bad = json::parse(slurp(tmp_ / "out.jsonl"));
  EXPECT_EQ(bad["error"]["code"], "timeout") << bad.dump();
  EXPECT_NE(slurp(tmp_ / "serve.log").find("CURVE on: 1 trainer key(s), 1 client key(s)"), std::string::npos);
}

TEST_F(ServedWithKeys, LimitFlagsReachTheEngine) {
  std::string ep = serve({"--max-n", "2", "--max-prompts-per-call", "8", "--max-message-mib", "1"});
  std::ofstream(tmp_ / "in.jsonl") << R"({"rid":"a","input_ids":[1,403],"sampling_params":{"max_new_tokens":2,"n":3}})"
                                   << "\n";
  ASSERT_EQ(run(client_cmd(ep, tmp_ / "clients/c.key_secret"), tmp_ / "log"), 0);
  json r = json::parse(slurp(tmp_ / "out.jsonl"));
  EXPECT_EQ(r["error"]["code"], "invalid_argument") << r.dump();
  EXPECT_NE(r["error"]["message"].get<std::string>().find("--max-n 2"), std::string::npos) << r.dump();
  EXPECT_NE(slurp(tmp_ / "serve.log").find("max_message_mib=1"), std::string::npos) << slurp(tmp_ / "serve.log");
}

}  // namespace
