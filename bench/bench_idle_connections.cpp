// bench_idle_connections: what N idle connections cost a zrollout server (issue 18: "thousands of
// idle connections cost no thread and no more than a few KiB each").
//
// The server is this process: a RolloutActor on tcp loopback (with CURVE keys or without). The
// clients are a second process (this binary re-run with --clients-of), so the server's numbers
// hold only the server's side: N DEALER sockets in one context connect, each makes one health call
// (so every handshake, CURVE's and ZAP's included, is done and the connection has carried a
// message), then all sit idle. The server's VmRSS, RssAnon, malloc'd bytes in use (mallinfo2, all
// arenas), threads and open fds are read before the clients connect (after one warm-up call), with
// the N connections idle, and after the clients closed.
// Usage: bench_idle_connections [--model DIR] [--connections 1000] [--curve] [--json FILE]
//        (default model: the shipped models/stories260K). Allocator experiments go through glibc's
//        own switches, e.g. GLIBC_TUNABLES=glibc.malloc.arena_max=1.
#include <fcntl.h>
#include <malloc.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "actors/rollout_actor.h"
#include "bench/bench_json.h"
#include "comm/frame.h"
#include "comm/wire_codec.h"

namespace zr {
namespace {

struct ServerMemory {
  double rss_kib = 0, anon_kib = 0, malloc_kib = 0;
  int threads = 0, fds = 0;
};

// A field of /proc/self/status in kB ("VmRSS:", "RssAnon:", "Threads:").
long status_field(const std::string& name) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name, 0) == 0) return std::stol(line.substr(name.size()));
  return -1;
}

ServerMemory server_memory() {
  ServerMemory m;
  m.rss_kib = static_cast<double>(status_field("VmRSS:"));
  m.anon_kib = static_cast<double>(status_field("RssAnon:"));
  m.threads = static_cast<int>(status_field("Threads:"));
  struct mallinfo2 mi = mallinfo2();
  m.malloc_kib = static_cast<double>(mi.uordblks + mi.hblkhd) / 1024.0;
  for (auto& e : std::filesystem::directory_iterator("/proc/self/fd")) (void)e, ++m.fds;
  return m;
}

void raise_fd_limit() {
  rlimit r{};
  getrlimit(RLIMIT_NOFILE, &r);
  r.rlim_cur = r.rlim_max;
  setrlimit(RLIMIT_NOFILE, &r);
}

// The client process: `n` DEALERs connect to `ep`, each makes one health call, then they stay
// open until stdin closes. Prints "ready K" (K = replies received) once all answered or 60 s passed.
int run_clients(const std::string& ep, int n, const CurveClientKeys& keys) {
  raise_fd_limit();
  zmq::context_t ctx;
  ctx.set(zmq::ctxopt::max_sockets, n + 64);
  std::vector<zmq::socket_t> socks;
  socks.reserve(n);
  for (int i = 0; i < n; ++i) {
    socks.emplace_back(ctx, zmq::socket_type::dealer);
    socks.back().set(zmq::sockopt::linger, 0);
    if (keys.enabled()) set_curve_client(socks.back(), keys);
    socks.back().connect(ep);
    Frame f;
    f.op = "health";
    f.body = wire::encode_req_id_only(static_cast<uint64_t>(i) + 1);
    send_frame(socks.back(), false, f);
  }
  int answered = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::vector<bool> done(n, false);
  while (answered < n && std::chrono::steady_clock::now() < deadline) {
    for (int i = 0; i < n; ++i) {
      if (done[i]) continue;
      Frame f;
      Status err;
      if (recv_frame(socks[i], false, f, err, true)) done[i] = true, ++answered;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::printf("ready %d\n", answered);
  std::fflush(stdout);
  char c;
  while (::read(0, &c, 1) > 0) {}
  return 0;
}

std::string key_arg(const CurveKeyPair& k) { return k.public_key + ":" + k.secret_key; }

// Starts this binary as the client process; `to_child` is its stdin, `from_child` its stdout.
pid_t spawn_clients(const std::string& ep, int n, const std::optional<CurveClientKeys>& keys, int& to_child,
                    FILE*& from_child) {
  int in[2], out[2];
  if (pipe(in) != 0 || pipe(out) != 0) std::abort();
  std::vector<std::string> args = {"/proc/self/exe", "--clients-of", ep, "--connections", std::to_string(n)};
  if (keys) args.insert(args.end(), {"--server-key", keys->server_key, "--client-key", key_arg(keys->own)});
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    for (int fd : {in[0], in[1], out[0], out[1]}) close(fd);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  to_child = in[1];
  from_child = fdopen(out[0], "r");
  return pid;
}

void print_row(const char* what, const ServerMemory& m, const ServerMemory& base, int n) {
  std::printf(
      "  %-26s VmRSS %9.0f KiB (%+7.2f KiB/conn)  RssAnon %+7.2f KiB/conn  malloc %+7.2f KiB/conn  "
      "threads %3d  fds %5d\n",
      what, m.rss_kib, (m.rss_kib - base.rss_kib) / n, (m.anon_kib - base.anon_kib) / n,
      (m.malloc_kib - base.malloc_kib) / n, m.threads, m.fds);
}

int measure(const std::string& model, int n, bool curve, bench::JsonRows& json) {
  raise_fd_limit();
  CurveKeyPair server = *make_curve_keypair(), client_key = *make_curve_keypair();
  RolloutActorOptions ro;
  std::optional<CurveClientKeys> ck;
  if (curve) {
    ro.curve = CurveServerKeys{server, {}, {client_key.public_key}};
    ck = CurveClientKeys{server.public_key, client_key};
  }
  EngineOptions eo;
  eo.kv_cache_bytes = size_t{16} << 20;
  Context ctx;
  RolloutActor actor(ctx, std::move(Engine::load(model, eo)).value(), ro);
  if (!actor.bind("tcp://127.0.0.1:*").ok()) std::abort();
  actor.start();
  const std::string ep = actor.endpoint();
  auto round = [&](int k, ServerMemory* idle) {  // k clients connect, call once, idle, close
    int to_child = -1;
    FILE* from_child = nullptr;
    pid_t pid = spawn_clients(ep, k, ck, to_child, from_child);
    int answered = -1;
    if (std::fscanf(from_child, "ready %d", &answered) != 1 || answered != k)
      std::fprintf(stderr, "clients: %d of %d answered\n", answered, k), std::abort();
    std::this_thread::sleep_for(std::chrono::seconds(1));  // let the server's side settle
    if (idle) *idle = server_memory();
    close(to_child);
    fclose(from_child);
    waitpid(pid, nullptr, 0);
    std::this_thread::sleep_for(std::chrono::seconds(1));  // the server notices the closed connections
  };
  round(1, nullptr);  // warm-up: one connection, so what is made once per server is there
  ServerMemory before = server_memory(), idle;
  round(n, &idle);
  ServerMemory after = server_memory();
  actor.stop();
  std::printf("zrollout bench_idle_connections: %d idle connections, %s, tcp loopback, %s\n", n,
              curve ? "CURVE (client keys, ZAP)" : "no keys", model.c_str());
  print_row("before", before, before, n);
  print_row("N connections idle", idle, before, n);
  print_row("after they closed", after, before, n);
  const std::string tag = curve ? "_curve" : "";
  json.add({"idle_conn_rss_kib" + tag, (idle.rss_kib - before.rss_kib) / n, "KiB", 0});
  json.add({"idle_conn_malloc_kib" + tag, (idle.malloc_kib - before.malloc_kib) / n, "KiB", 0});
  json.add({"idle_conn_threads" + tag, static_cast<double>(idle.threads - before.threads), "threads", 0});
  return json.write() ? 0 : 1;
}

}  // namespace
}  // namespace zr

int main(int argc, char** argv) {
  using namespace zr;
  CLI::App app{"zrollout idle-connection cost"};
  std::string model = "models/stories260K", json_path, clients_of, server_key, client_key;
  int n = 1000;
  bool curve = false;
  app.add_option("--model", model)->capture_default_str();
  app.add_option("--connections", n, "idle connections")->capture_default_str();
  app.add_flag("--curve", curve, "the server speaks CURVE (client-role keys, ZAP)");
  app.add_option("--json", json_path, "write result rows to FILE (bench/bench_json.h)");
  app.add_option("--clients-of", clients_of, "(internal) be the client process of this endpoint");
  app.add_option("--server-key", server_key, "(internal)");
  app.add_option("--client-key", client_key, "(internal) PUBLIC:SECRET");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  if (!clients_of.empty()) {
    CurveClientKeys keys;
    if (!server_key.empty()) {
      keys.server_key = server_key;
      keys.own = {client_key.substr(0, client_key.find(':')), client_key.substr(client_key.find(':') + 1)};
    }
    return run_clients(clients_of, n, keys);
  }
  bench::JsonRows json(json_path);
  return measure(model, n, curve, json);
}
