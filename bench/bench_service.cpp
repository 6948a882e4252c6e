// The rollout service against its own limits, measured in the same run:
//   1. request overhead: a 1-token generate round trip over tcp loopback vs a raw ZeroMQ
//      REQ/REP round trip (64 bytes) and vs the engine step alone;
//   2. service throughput: 64 concurrent clients over tcp vs the engine's own batch-64 throughput
//      (the same requests submitted to an Engine directly, prefill included in both).
// Usage: bench_service [--model DIR] [--rounds 2] [--gen 64] [--hops] [--json FILE]
//        (default model: a stories15M-shape model made by make-model into ./bench_models/).
//        --hops: after the overhead rows, 200 more 1-token round trips with comm/hop_trace.h on, and
//        the median time from each hop to the next (client caller, client I/O thread, actor, engine).
//        --json: rows generate_rt_1tok (us), service_overhead_1tok (us, bound: the raw round trip,
//        so ratio = overhead / raw; target <= 2), raw_dealer_router_rt (us: the service's frames
//        and body sizes through a bare DEALER/ROUTER pair, bound: the raw REQ/REP round trip),
//        service_tok_s (bound: the engine alone).
//        bench_service --connect EP [--samples 200]: only the C++ client's 1-token round trip against
//        a running server (bench/bench_python_client.py alternates it with the Python client's).
//        bench_service --curve: the cost of CURVE: the 1-token round trip and the 64-client
//        throughput with and without keys (client-role keys), same run, alternating; the clients
//        connect first (timed apart: the handshakes), then the throughput window; --json rows
//        curve_generate_rt_1tok (us) and curve_service_tok_s, each bound by the run without keys.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "actors/rollout_actor.h"
#include "bench/bench_json.h"
#include "bench/bench_models.h"
#include "comm/client.h"
#include "comm/hop_trace.h"
#include "comm/wire_codec.h"

namespace zr {
namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double raw_zmq_round_trip_us() {
  zmq::context_t ctx;
  zmq::socket_t rep(ctx, zmq::socket_type::rep);
  rep.bind("tcp://127.0.0.1:*");
  std::string ep = rep.get(zmq::sockopt::last_endpoint);
  const int n = 2000;
  std::thread server([&] {
    for (int i = 0; i < n; ++i) {
      zmq::message_t m;
      (void)rep.recv(m);
      rep.send(m, zmq::send_flags::none);
    }
  });
  zmq::socket_t req(ctx, zmq::socket_type::req);
  req.connect(ep);
  std::string payload(64, 'x');
  std::vector<double> t;
  for (int i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    req.send(zmq::buffer(payload));
    zmq::message_t m;
    (void)req.recv(m);
    t.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  server.join();
  return median(t);
}

// The service's socket pattern without the service: a client DEALER sends [op, body] with a body
// the size of a 1-token generate request, a server thread polls its ROUTER (as the actor's loop
// does) and answers [id, op, body] with a body the size of its reply. The floor that libzmq and
// the kernel set for the service's hops on this host (median of 2000, microseconds).
double raw_dealer_router_round_trip_us(size_t request_bytes, size_t reply_bytes) {
  zmq::context_t ctx;
  zmq::socket_t router(ctx, zmq::socket_type::router);
  router.bind("tcp://127.0.0.1:*");
  std::string ep = router.get(zmq::sockopt::last_endpoint);
  const int n = 2000;
  std::thread server([&] {
    const std::string reply(reply_bytes, 'r');
    for (int i = 0; i < n; ++i) {
      zmq::pollitem_t item{router.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(-1));
      zmq::message_t id, op, body;
      (void)router.recv(id);
      (void)router.recv(op);
      (void)router.recv(body);
      router.send(id, zmq::send_flags::sndmore);
      router.send(zmq::str_buffer("generate.reply"), zmq::send_flags::sndmore);
      router.send(zmq::buffer(reply), zmq::send_flags::none);
    }
  });
  zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
  dealer.connect(ep);
  const std::string body(request_bytes, 'q');
  std::vector<double> t;
  for (int i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    dealer.send(zmq::str_buffer("generate"), zmq::send_flags::sndmore);
    dealer.send(zmq::buffer(body), zmq::send_flags::none);
    zmq::message_t op, reply;
    (void)dealer.recv(op);
    (void)dealer.recv(reply);
    t.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  server.join();
  return median(t);
}

GenerateRequest request(const std::string& rid, int vocab, int prompt, int gen, uint64_t seed) {
  std::mt19937_64 rng(seed);
  GenerateRequest r;
  r.rid = rid;
  r.input_ids.push_back(1);
  while (static_cast<int>(r.input_ids.size()) < prompt)
    r.input_ids.push_back(3 + static_cast<int>(rng() % (vocab - 3)));
  r.sampling_params.max_new_tokens = gen;
  r.sampling_params.temperature = 1.0f;
  r.sampling_params.seed = seed;
  r.sampling_params.ignore_eos = true;
  return r;
}

EngineOptions engine_options() {
  EngineOptions o;
  o.kv_cache_bytes = size_t{1} << 30;
  return o;
}

// Engine alone: 64 requests at once, run to completion.
double engine_tok_s(const std::string& model, int clients, int gen) {
  auto eng = std::move(Engine::load(model, engine_options())).value();
  int vocab = eng->config().vocab_size;
  for (int i = 0; i < clients; ++i) (void)eng->submit(request("e" + std::to_string(i), vocab, 16, gen, i));
  auto t0 = Clock::now();
  int64_t tokens = 0;
  while (!eng->idle()) {
    StepOutputs out;
    eng->step(out);
    tokens += out.tokens_generated;
  }
  return tokens / std::chrono::duration<double>(Clock::now() - t0).count();
}

// `samples` 1-token round trips with hop tracing on: per hop, the median time since the previous
// mark of the same request (marks sorted by time), in the order of hop_trace::Hop.
void hop_report(Client& client, int vocab, int samples) {
  using hop_trace::Hop;
  constexpr size_t kHops = static_cast<size_t>(Hop::kCount);
  std::vector<std::vector<double>> gap(kHops);
  std::vector<double> total;
  hop_trace::set_enabled(true);
  for (int i = -20; i < samples; ++i) {
    (void)hop_trace::take();
    auto r = client.generate({request("h" + std::to_string(i + 20), vocab, 4, 1, i + 20)});
    if (!r.ok() || i < 0) continue;
    std::vector<hop_trace::Entry> e = hop_trace::take();
    std::sort(e.begin(), e.end(), [](const auto& a, const auto& b) { return a.ns < b.ns; });
    std::vector<double> sum(kHops, 0.0);
    for (size_t k = 1; k < e.size(); ++k) sum[static_cast<size_t>(e[k].hop)] += (e[k].ns - e[k - 1].ns) / 1e3;
    for (size_t h = 0; h < kHops; ++h) gap[h].push_back(sum[h]);
    if (e.size() > 1) total.push_back((e.back().ns - e.front().ns) / 1e3);
  }
  hop_trace::set_enabled(false);
  std::printf("hops of a 1-token generate (median us since the previous mark, %d round trips):\n", samples);
  for (size_t h = 1; h < kHops; ++h)
    std::printf("  %-18s %8.1f\n", hop_trace::hop_name(static_cast<Hop>(h)), median(gap[h]));
  if (!total.empty()) std::printf("  %-18s %8.1f  (client_call to client_returned)\n", "total", median(total));
}

// The C++ client's 1-token generate round trip against a running server (median of `samples`).
int client_round_trip(const std::string& endpoint, int samples) {
  auto client = Client::connect(endpoint);
  if (!client.ok()) return std::fprintf(stderr, "%s\n", client.status().to_string().c_str()), 1;
  auto info = (*client)->get_model_info();
  if (!info.ok()) return std::fprintf(stderr, "%s\n", info.status().to_string().c_str()), 1;
  std::vector<double> rt, server;
  for (int i = -20; i < samples; ++i) {  // 20 warm-up calls
    auto t0 = Clock::now();
    auto r = (*client)->generate({request("p" + std::to_string(i + 20), info->vocab_size, 4, 1, i + 20)});
    if (!r.ok()) return std::fprintf(stderr, "%s\n", r.status().to_string().c_str()), 1;
    if (i < 0) continue;
    rt.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    server.push_back(r->outputs.at(0).meta_info.e2e_latency * 1e6);  // submit to finish, in the engine
  }
  std::printf("C++ client 1-token generate round trip (median of %d): %.1f us\n", samples, median(rt));
  std::printf("  of which in the engine (meta_info.e2e_latency, median): %.1f us\n", median(server));
  std::vector<double> load_rt;
  for (int i = 0; i < samples; ++i) {
    auto t0 = Clock::now();
    if (auto l = (*client)->get_load(); !l.ok()) return std::fprintf(stderr, "%s\n", l.status().to_string().c_str()), 1;
    load_rt.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  std::printf("C++ client get_load round trip (median of %d): %.1f us\n", samples, median(load_rt));
  return 0;
}

struct ServiceNumbers {
  double round_trip_us = 0;
  double tok_s = 0;
  double connect_ms = 0;  // --curve: connecting all clients (one health call each), before tok_s's window
};

// One server (with CURVE keys or without) over tcp loopback: the median 1-token round trip of 200
// calls, then `clients` concurrent clients x `rounds` requests.
ServiceNumbers measure_service(const std::string& model, bool curve, int clients, int rounds, int gen) {
  CurveKeyPair server = *make_curve_keypair(), client_key = *make_curve_keypair();
  Client::Options co;
  RolloutActorOptions ro;
  if (curve) {
    ro.curve = CurveServerKeys{server, {}, {client_key.public_key}};
    co.curve = CurveClientKeys{server.public_key, client_key};
  }
  Context ctx;
  RolloutActor actor(ctx, std::move(Engine::load(model, engine_options())).value(), ro);
  if (!actor.bind("tcp://127.0.0.1:*").ok()) std::abort();
  actor.start();
  const std::string ep = actor.endpoint();
  const int vocab = actor.engine().config().vocab_size;
  ServiceNumbers out;
  {
    auto client = std::move(Client::connect(ep, nullptr, co)).value();
    std::vector<double> rt;
    for (int i = -20; i < 200; ++i) {
      auto t0 = Clock::now();
      auto r = client->generate({request("o" + std::to_string(i + 20), vocab, 4, 1, i + 20)});
      if (!r.ok()) std::fprintf(stderr, "%s\n", r.status().to_string().c_str()), std::abort();
      if (i >= 0) rt.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    out.round_trip_us = median(rt);
  }
  // Connections first (with keys: a CURVE handshake and a ZAP round trip each), timed apart, so the
  // throughput below is the steady state of connected clients.
  std::vector<std::unique_ptr<Client>> conns;
  auto c0 = Clock::now();
  for (int c = 0; c < clients; ++c) {
    conns.push_back(std::move(Client::connect(ep, nullptr, co)).value());
    if (!conns.back()->health().ok()) std::abort();
  }
  out.connect_ms = std::chrono::duration<double, std::milli>(Clock::now() - c0).count();
  std::vector<std::thread> threads;
  std::atomic<int64_t> tokens{0};
  auto t0 = Clock::now();
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      for (int r = 0; r < rounds; ++r) {
        auto rep = conns[c]->generate({request("c" + std::to_string(c) + "-" + std::to_string(r), vocab, 16, gen, c)});
        if (rep.ok()) tokens += rep->outputs[0].meta_info.completion_tokens;
      }
    });
  for (auto& t : threads) t.join();
  out.tok_s = tokens / std::chrono::duration<double>(Clock::now() - t0).count();
  conns.clear();
  actor.stop();
  return out;
}

int curve_cost(const std::string& model, int clients, int rounds, int gen, int reps, bench::JsonRows& rows) {
  std::vector<ServiceNumbers> plain, keyed;
  for (int rep = 0; rep < reps; ++rep) {  // alternate, so drift on a shared machine hits both
    plain.push_back(measure_service(model, false, clients, rounds, gen));
    keyed.push_back(measure_service(model, true, clients, rounds, gen));
  }
  auto best = [](const std::vector<ServiceNumbers>& v) {
    ServiceNumbers b{1e30, 0, 1e30};
    for (const auto& n : v)
      b = {std::min(b.round_trip_us, n.round_trip_us), std::max(b.tok_s, n.tok_s),
           std::min(b.connect_ms, n.connect_ms)};
    return b;
  };
  ServiceNumbers p = best(plain), k = best(keyed);
  std::printf("zrollout bench_service --curve: %s (tcp loopback; best of %d alternating runs each)\n", model.c_str(),
              reps);
  for (size_t i = 0; i < plain.size(); ++i)
    std::printf("  run %zu: plain %.1f us, %.1f tok/s | CURVE %.1f us, %.1f tok/s\n", i, plain[i].round_trip_us,
                plain[i].tok_s, keyed[i].round_trip_us, keyed[i].tok_s);
  std::printf("1-token generate round trip (median of 200): plain %8.1f us, CURVE %8.1f us (+%.1f us)\n",
              p.round_trip_us, k.round_trip_us, k.round_trip_us - p.round_trip_us);
  std::printf(
      "%d clients x %d requests (%d new tokens):     plain %8.1f tok/s, CURVE %8.1f tok/s (cost %.1f%%, target <= "
      "10%%)\n",
      clients, rounds, gen, p.tok_s, k.tok_s, 100.0 * (1.0 - k.tok_s / p.tok_s));
  std::printf("connecting %d clients (one health call each):   plain %8.1f ms,    CURVE %8.1f ms\n", clients,
              p.connect_ms, k.connect_ms);
  // Bounds: the same numbers without keys (ratio = CURVE / plain; throughput target >= 0.9).
  rows.add({"curve_generate_rt_1tok", k.round_trip_us, "us", p.round_trip_us});
  rows.add({"curve_service_tok_s", k.tok_s, "tok/s", p.tok_s});
  return rows.write() ? 0 : 1;
}

}  // namespace
}  // namespace zr

int main(int argc, char** argv) {
  using namespace zr;
  CLI::App app{"zrollout service benchmark"};
  std::string model;
  int rounds = 2, gen = 64, clients = 64;
  app.add_option("--model", model);
  app.add_option("--rounds", rounds, "requests per client")->capture_default_str();
  app.add_option("--gen", gen, "new tokens per request")->capture_default_str();
  std::string connect;
  int samples = 200;
  app.add_option("--connect", connect, "only measure the client's round trip against this running server");
  app.add_option("--samples", samples, "round trips measured with --connect")->capture_default_str();
  bool curve = false;
  int curve_reps = 2;
  app.add_option("--curve-reps", curve_reps, "--curve: alternating runs per mode (best of)")->capture_default_str();
  app.add_flag("--curve", curve,
               "measure the cost of CURVE keys: round trip and throughput with and without, same run");
  bool hops = false;
  std::string json_path;
  app.add_flag("--hops", hops, "time each hop of a 1-token generate (comm/hop_trace.h)");
  app.add_option("--json", json_path, "write result rows to FILE (bench/bench_json.h)");
  CLI11_PARSE(app, argc, argv);
  bench::JsonRows rows(json_path);
  spdlog::set_level(spdlog::level::warn);
  if (!connect.empty()) return client_round_trip(connect, samples);
  if (model.empty()) model = bench::default_model("stories15M");
  if (model.empty()) return 1;
  if (curve) return curve_cost(model, clients, rounds, gen, curve_reps, rows);
  Context ctx;
  RolloutActor actor(ctx, std::move(Engine::load(model, engine_options())).value(), RolloutActorOptions{});
  if (!actor.bind("tcp://127.0.0.1:*").ok()) return 1;
  actor.start();
  const std::string ep = actor.endpoint();
  const int vocab = actor.engine().config().vocab_size;

  // 1. Request overhead. Rounds alternate the service (default options), the service with the
  // compute threads parked as soon as the engine goes idle (park_idle_threads), and the engine
  // alone, so the three see the same host.
  double raw_us = raw_zmq_round_trip_us();
  // Body sizes of this bench's 1-token generate and its reply.
  const size_t request_bytes = wire::encode(GenerateCall{1, {request("o0", vocab, 4, 1, 0)}}).size();
  GenerateReply sized_reply{1, {SampleOutput{}}};
  sized_reply.outputs[0].rid = "o0";
  sized_reply.outputs[0].output_ids = {vocab - 1};
  sized_reply.outputs[0].text = " word";
  sized_reply.outputs[0].meta_info.id = "o0";
  sized_reply.outputs[0].meta_info.finish_reason.type = FinishReason::Type::length;
  sized_reply.outputs[0].meta_info.weight_version_spans = {{0, 0}};
  const size_t reply_bytes = wire::encode(sized_reply).size();
  double raw_dr_us = raw_dealer_router_round_trip_us(request_bytes, reply_bytes);
  RolloutActorOptions park_opt;
  park_opt.park_idle_threads = true;
  RolloutActor park_actor(ctx, std::move(Engine::load(model, engine_options())).value(), park_opt);
  if (!park_actor.bind("tcp://127.0.0.1:*").ok()) return 1;
  park_actor.start();
  auto client = std::move(Client::connect(ep)).value();
  auto park_client = std::move(Client::connect(park_actor.endpoint())).value();
  auto eng = std::move(Engine::load(model, engine_options())).value();
  std::vector<double> rt, rt_park, alone;
  int next = 0;
  auto time_generate = [&](Client& c, std::vector<double>& out) {
    auto t0 = Clock::now();
    auto r = c.generate({request("o" + std::to_string(next), vocab, 4, 1, next)});
    ++next;
    out.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    if (!r.ok()) std::fprintf(stderr, "%s\n", r.status().to_string().c_str()), std::exit(1);
  };
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 50; ++i) time_generate(*client, rt);
    for (int i = 0; i < 50; ++i) time_generate(*park_client, rt_park);
    for (int i = 0; i < 50; ++i) {
      auto t0 = Clock::now();
      (void)eng->submit(request("x" + std::to_string(next), vocab, 4, 1, next));
      ++next;
      while (!eng->idle()) {
        StepOutputs out;
        eng->step(out);
      }
      alone.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
  }
  park_actor.stop();
  const double engine_only_us = median(alone), park_us = median(rt_park);
  double gen_us = median(rt);
  std::printf("zrollout bench_service: %s\n", model.c_str());
  std::printf("request overhead (tcp loopback, median of 200 in 4 alternating rounds):\n");
  std::printf("  1-token generate round trip   %8.1f us\n", gen_us);
  std::printf("  engine alone, same request    %8.1f us\n", engine_only_us);
  std::printf("  service overhead              %8.1f us  (= %.1fx a raw ZeroMQ REQ/REP round trip of %.1f us)\n",
              gen_us - engine_only_us, (gen_us - engine_only_us) / raw_us, raw_us);
  std::printf("  idle threads parked           %8.1f us round trip, overhead %.1f us (= %.1fx raw)\n", park_us,
              park_us - engine_only_us, (park_us - engine_only_us) / raw_us);
  std::printf(
      "  raw DEALER/ROUTER, same frames %7.1f us  (%zu-byte request, %zu-byte reply, polled ROUTER: the\n"
      "                                          sockets' floor for the service's hops)\n",
      raw_dr_us, request_bytes, reply_bytes);
  rows.add({"generate_rt_1tok", gen_us, "us", 0});
  rows.add({"service_overhead_1tok", gen_us - engine_only_us, "us", raw_us});
  rows.add({"service_overhead_1tok_parked", park_us - engine_only_us, "us", raw_us});
  rows.add({"raw_dealer_router_rt", raw_dr_us, "us", raw_us});
  if (hops) hop_report(*client, vocab, 200);

  // 2. Throughput: clients x rounds requests over tcp vs the engine alone on the same batch.
  std::vector<std::thread> threads;
  std::atomic<int64_t> tokens{0};
  auto t0 = Clock::now();
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      auto cl = std::move(Client::connect(ep)).value();
      for (int r = 0; r < rounds; ++r) {
        auto rep = cl->generate({request("c" + std::to_string(c) + "-" + std::to_string(r), vocab, 16, gen, c)});
        if (rep.ok()) tokens += rep->outputs[0].meta_info.completion_tokens;
      }
    });
  for (auto& t : threads) t.join();
  double service = tokens / std::chrono::duration<double>(Clock::now() - t0).count();
  actor.stop();
  double engine = engine_tok_s(model, clients, gen);
  std::printf("throughput, %d concurrent clients x %d requests (16-token prompts, %d new tokens):\n", clients, rounds,
              gen);
  std::printf(
      "  service over tcp   %8.1f tok/s\n  engine alone       %8.1f tok/s (batch %d, same run)\n  ratio              "
      "%7.0f%%  (target >= 90%%)\n",
      service, engine, clients, 100 * service / engine);
  rows.add({"service_tok_s_b" + std::to_string(clients), service, "tok/s", engine});
  return rows.write() ? 0 : 1;
}
