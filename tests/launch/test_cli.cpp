// The zrollout binary end to end: generate/score JSONL with bad lines, and serve + client with a
// SIGTERM that drains in-flight work and exits 0.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <future>
#include <thread>

#include "comm/client.h"
#include "tests/test_util.h"

namespace {

using nlohmann::json;

int run(const std::string& cmd) { return WEXITSTATUS(std::system((cmd + " 2>/dev/null").c_str())); }

std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  for (std::string l; std::getline(in, l);) out.push_back(json::parse(l));
  return out;
}

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(Cli, GenerateKeepsOrderAndReportsBadLines) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  zr::testing::TempDir tmp;
  write(tmp / "in.jsonl",
        R"({"rid":"a","text":"Once upon a time","sampling_params":{"max_new_tokens":8,"temperature":0,"n":2}})"
        "\n{oops\n"
        R"({"rid":"b","input_ids":[1,600]})"
        "\n"
        R"({"rid":"c","input_ids":[1,403],"sampling_params":{"max_new_tokens":3,"top_k":0}})"
        "\n"
        R"({"rid":"d","input_ids":[1,403],"sampling_params":{"max_new_tokens":3}})"
        "\n");
  ASSERT_EQ(run(std::string(ZR_ZROLLOUT_BIN) + " generate --model " + dir + " --input " + (tmp / "in.jsonl") +
                " --output " + (tmp / "out.jsonl")),
            0);
  auto lines = read_jsonl(tmp / "out.jsonl");
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_EQ(lines[0]["rid"], "a");
  EXPECT_EQ(lines[1]["index"], 1);
  EXPECT_EQ(lines[0]["text"], ", there was a little girl");  // reference.json greedy text, 8 tokens
  EXPECT_EQ(lines[2]["error"]["code"], "bad_message");
  EXPECT_EQ(lines[3]["error"]["code"], "out_of_range");
  EXPECT_NE(lines[4]["error"]["message"].get<std::string>().find("top_k"), std::string::npos);
  EXPECT_EQ(lines[5]["rid"], "d");
}

TEST(Cli, ScoreMatchesReference) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  zr::testing::TempDir tmp;
  std::ifstream f(dir + "/reference.json");
  json cs = json::parse(f)["cases"][2];
  json line = {
      {"rid", "s"}, {"input_ids", cs["prompt_ids"]}, {"completion_ids", cs["completion_ids"]}, {"temperature", 0.7}};
  write(tmp / "in.jsonl",
        line.dump() + "\n{\"rid\":\"bad\",\"input_ids\":[1],\"completion_ids\":[2],\"temperature\":0}\n");
  ASSERT_EQ(run(std::string(ZR_ZROLLOUT_BIN) + " score --model " + dir + " --input " + (tmp / "in.jsonl") +
                " --output " + (tmp / "out.jsonl")),
            0);
  auto lines = read_jsonl(tmp / "out.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  ASSERT_EQ(lines[0]["logprobs"].size(), cs["logprobs_T0.7"].size());
  for (size_t i = 0; i < lines[0]["logprobs"].size(); ++i)
    EXPECT_NEAR(lines[0]["logprobs"][i].get<double>(), cs["logprobs_T0.7"][i].get<double>(), 1e-4);
  EXPECT_NE(lines[1]["error"]["message"].get<std::string>().find("temperature"), std::string::npos);
}

TEST(Cli, ServeDrainsOnSigtermAndExitsZero) {
  ZR_REQUIRE_SHARED_MODEL(dir, "stories260K");
  zr::testing::TempDir tmp;
  std::string sock = "ipc://" + (tmp / "zr.sock");
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    execl(ZR_ZROLLOUT_BIN, ZR_ZROLLOUT_BIN, "serve", "--model", dir.c_str(), "--bind", sock.c_str(), "--kv-cache-mb",
          "64", "--max-running", "1", nullptr);
    _exit(127);
  }
  // Long requests run one at a time (--max-running 1), so all of them are inside the engine, one
  // running and the rest waiting, long before the last finishes; the drain must finish all of them.
  // They go in ONE generate call, so they enter the engine together: a request still on the wire
  // when the server stops reading is refused, not drained, and a CPU-starved sender of one request
  // per message was once overtaken by the engine finishing the first ones. 32 x 400 tokens one
  // after another take seconds even on stories260K, so the probe below cannot miss them inside.
  constexpr int kRequests = 32;
  std::vector<zr::GenerateRequest> reqs(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    reqs[i].rid = "r" + std::to_string(i);
    reqs[i].input_ids = {1, 403};
    reqs[i].sampling_params.max_new_tokens = 400;
    reqs[i].sampling_params.ignore_eos = true;
  }
  auto caller = std::move(zr::Client::connect(sock)).value();
  std::future<zr::Result<zr::GenerateReply>> reply;
  // Sent once the server answers; the call waits up to 120 s, so a lost reply fails the test
  // instead of hanging it.
  std::thread client([&] {
    for (int attempt = 0; attempt < 600; ++attempt) {
      if (caller->get_load(std::chrono::milliseconds(500)).ok()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    reply = caller->generate_async(reqs, std::chrono::seconds(120));
  });
  // SIGTERM only once the requests are inside the engine (get_load says so): the drain must then
  // finish them all. Polling also proves the server is up, with its signal handler installed.
  auto probe = std::move(zr::Client::connect(sock)).value();
  int inside = 0, running = 0, answered = 0, max_inside = 0;
  std::string last_error = "none";  // a failed get_load is told apart from an empty engine
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while ((inside == 0 || running == 0) && std::chrono::steady_clock::now() < deadline) {
    auto load = probe->get_load(std::chrono::milliseconds(500));
    if (!load.ok()) last_error = load.status().to_string();
    answered += load.ok();
    inside = load.ok() ? load->running + load->waiting : 0;
    running = load.ok() ? load->running : 0;
    max_inside = std::max(max_inside, inside);
    if (inside == 0 || running == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // One message carries all 32, so once any is inside every one has arrived (a loaded run once saw
  // at most 31 inside: the first had finished before the probe got an answer); one running.
  const bool all_inside = inside > 0 && running > 0;
  if (all_inside) kill(pid, SIGTERM);
  else kill(pid, SIGKILL);  // fail below, without leaving the server or the client behind
  int status = 0;
  const auto exit_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > exit_deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      client.join();
      FAIL() << "serve did not exit within 90 s of SIGTERM";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  client.join();
  ASSERT_TRUE(all_inside) << "the requests never reached the engine (last load: " << inside << " inside, " << running
                          << " running; " << answered << " get_load answered, most inside at once " << max_inside
                          << ", last get_load error: " << last_error << ")";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  auto got = reply.get();
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  ASSERT_EQ(got->outputs.size(), static_cast<size_t>(kRequests));                    // every request was answered
  for (const auto& o : got->outputs) EXPECT_EQ(o.output_ids.size(), 400u) << o.rid;  // drained: finished, not cut
}

}  // namespace
