// bench_weight_sync: the two weight paths of DESIGN.md, measured against their own baselines in the
// same run (the host is noisy: medians and ratios, not single absolute times).
//
//   broadcast: MpiGroup::bcast_buckets (64 MiB buckets; receivers checksum every segment from the
//              receive ring as it lands) vs one plain MPI_Bcast of the same bytes
//              (MpiGroup::bcast_blocking).
//   ipc:       write the transfer into a ShmSegment, another process (forked before MPI starts)
//              opens + maps it and checksums it, vs one memcpy of the same bytes.
//   checksum64 speed, in cache and from DRAM.
//
// Run: mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader -np 2
//          build/bench/bench_weight_sync [--mib 512] [--bucket-mib 64[,16...]] [--repeats 7]
// (np = 4 for 3 receivers). Rank 0 prints; the ipc part runs on rank 0 while the others sleep.
// What a trainer sends from: --pieces --root-pages 4k (its tensors where it holds them, in 4 KiB
// pages, checksummed as they go out); the receivers' buffers are in 2 MiB pages where THP allows,
// as an engine's staging buffers. --receive pipeline: the bucket pipeline even where a pull applies.
// --json FILE (rank 0 writes it, bench/bench_json.h): rows weight_sync_bcast_<B>mib_gbps (bound: the
// raw MPI_Bcast's GB/s in the same rounds), weight_sync_ipc_gbps (write + open + checksum; bound:
// memcpy's GB/s), checksum64_dram_gbps.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "bench/bench_json.h"
#include "comm/checksum.h"
#include "comm/host_pages.h"
#include "comm/ipc_pull.h"
#include "comm/mpi_group.h"
#include "comm/shm_segment.h"

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using zr::MpiGroup;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

double gbps(size_t bytes, double s) { return s > 0 ? static_cast<double>(bytes) / s / 1e9 : 0; }

void fill_random(char* p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    uint64_t v = x * 0x2545F4914F6CDD1Dull;
    std::memcpy(p + i, &v, 8);
  }
}

void die_if(const zr::Status& s, const char* what) {
  if (s.ok()) return;
  std::fprintf(stderr, "%s: %s\n", what, s.to_string().c_str());
  std::exit(1);
}

// ---- the consumer process of the ipc path ------------------------------------------------------

struct ConsumerReply {
  uint64_t checksum = 0;
  double open_s = 0;
  double checksum_s = 0;
  int ok = 0;
};

// A child forked before MPI_Init (it never touches MPI): for each request line "<name> <bytes>
// <populate>" it opens + maps the segment read-only, checksums it, unmaps, and replies.
struct Consumer {
  pid_t pid = -1;
  int to_child = -1;
  int from_child = -1;

  void start() {
    int down[2], up[2];
    if (::pipe(down) != 0 || ::pipe(up) != 0) std::exit(1);
    pid = ::fork();
    if (pid == 0) {
      ::close(down[1]);
      ::close(up[0]);
      serve(down[0], up[1]);
      ::_exit(0);
    }
    ::close(down[0]);
    ::close(up[1]);
    to_child = down[1];
    from_child = up[0];
  }

  static void serve(int in, int out) {
    char line[512];
    for (;;) {
      ssize_t got = ::read(in, line, sizeof line - 1);  // one short line per request
      if (got <= 0) return;
      line[got] = '\0';
      char name[400];
      size_t bytes = 0;
      int populate = 0;
      if (std::sscanf(line, "%399s %zu %d", name, &bytes, &populate) != 3) return;
      ConsumerReply r;
      auto t0 = Clock::now();
      auto seg = zr::ShmSegment::open(name, bytes, /*read_only=*/true, populate != 0);
      r.open_s = seconds_since(t0);
      if (seg.ok()) {
        auto t1 = Clock::now();
        r.checksum = zr::checksum64(seg->data(), seg->size());
        r.checksum_s = seconds_since(t1);
        r.ok = 1;
      }
      if (::write(out, &r, sizeof r) != static_cast<ssize_t>(sizeof r)) return;
    }
  }

  ConsumerReply request(const std::string& name, size_t bytes, bool populate) {
    std::string line = name + " " + std::to_string(bytes) + " " + (populate ? "1" : "0");
    ConsumerReply r;
    if (::write(to_child, line.data(), line.size()) != static_cast<ssize_t>(line.size())) return r;
    if (::read(from_child, &r, sizeof r) != static_cast<ssize_t>(sizeof r)) r.ok = 0;
    return r;
  }

  void stop() {
    if (pid <= 0) return;
    ::close(to_child);
    ::close(from_child);
    ::waitpid(pid, nullptr, 0);
    pid = -1;
  }
};

// ---- ipc and checksum (rank 0 only) -------------------------------------------------------------

void bench_checksum(std::span<const char> src, zr::bench::JsonRows& rows) {
  std::vector<double> hot, cold, par;
  const size_t small = size_t{256} << 10;
  for (int r = 0; r < 9; ++r) {
    auto t0 = Clock::now();
    uint64_t sink = 0;
    for (int i = 0; i < 64; ++i) sink += zr::checksum64(src.data(), small);
    hot.push_back(seconds_since(t0) / 64);
    t0 = Clock::now();
    sink += zr::checksum64(src.data(), src.size());
    cold.push_back(seconds_since(t0));
    t0 = Clock::now();
    sink += zr::checksum64_parallel(src.data(), src.size(), 2);
    par.push_back(seconds_since(t0));
    if (sink == 42) std::puts("");
  }
  rows.add({"checksum64_dram_gbps", gbps(src.size(), median(cold)), "GB/s", 0});
  std::printf(
      "checksum64: %.1f GB/s on 256 KiB in cache (1 thread), %.1f GB/s over %zu MiB (1 thread), "
      "%.1f GB/s (2 threads)\n",
      gbps(small, median(hot)), gbps(src.size(), median(cold)), src.size() >> 20, gbps(src.size(), median(par)));
}

void bench_ipc(Consumer& consumer, std::span<const char> src, int repeats, zr::bench::JsonRows& rows) {
  const size_t n = src.size();
  const uint64_t want = zr::checksum64(src.data(), n);
  std::vector<char> dst(n, 1);  // pre-faulted
  auto seg = zr::ShmSegment::create("bench", n);
  die_if(seg.status(), "ShmSegment::create");
  std::vector<double> copy, write, open_pop, cks_pop, total_pop, open_lazy, cks_lazy, total_lazy, create;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = Clock::now();
    std::memcpy(dst.data(), src.data(), n);
    copy.push_back(seconds_since(t0));
    for (bool populate : {true, false}) {
      t0 = Clock::now();
      std::memcpy(seg->data(), src.data(), n);
      double w = seconds_since(t0);
      ConsumerReply rep = consumer.request(seg->name(), n, populate);
      double total = seconds_since(t0);
      if (!rep.ok || rep.checksum != want) die_if(zr::make_error(zr::ErrorCode::checksum_mismatch, "consumer"), "ipc");
      write.push_back(w);
      (populate ? open_pop : open_lazy).push_back(rep.open_s);
      (populate ? cks_pop : cks_lazy).push_back(rep.checksum_s);
      (populate ? total_pop : total_lazy).push_back(total);
    }
    t0 = Clock::now();
    auto fresh = zr::ShmSegment::create("bench-fresh", n);
    create.push_back(seconds_since(t0));
    die_if(fresh.status(), "ShmSegment::create");
  }
  const double m = median(copy);
  std::printf(
      "\nipc path, %zu MiB, medians of %d (consumer = another process, checksum64 on 1 thread); segment in %s\n",
      n >> 20, repeats, zr::mapping_pages(seg->data()).describe().c_str());
  std::printf("  memcpy baseline            %8.2f ms  %6.1f GB/s\n", m * 1e3, gbps(n, m));
  std::printf("  producer write into shm    %8.2f ms  %6.1f GB/s\n", median(write) * 1e3, gbps(n, median(write)));
  std::printf("  consumer open+map populate %8.2f ms, checksum %8.2f ms; write+open+checksum %8.2f ms = %.2fx memcpy\n",
              median(open_pop) * 1e3, median(cks_pop) * 1e3, median(total_pop) * 1e3, median(total_pop) / m);
  std::printf("  consumer open+map lazy     %8.2f ms, checksum %8.2f ms; write+open+checksum %8.2f ms = %.2fx memcpy\n",
              median(open_lazy) * 1e3, median(cks_lazy) * 1e3, median(total_lazy) * 1e3, median(total_lazy) / m);
  rows.add({"weight_sync_ipc_gbps", gbps(n, median(total_pop)), "GB/s", gbps(n, m)});
  std::printf("  a fresh segment (create: fallocate + populate) %8.2f ms = %.2fx memcpy, paid once if reused\n",
              median(create) * 1e3, median(create) / m);
}

// Other ranks wait here (sleeping, not spinning) while rank 0 runs single-process benchmarks.
void park_until_rank0(MpiGroup& world) {
  char token[64] = {};
  die_if(world.bcast_buckets(token, sizeof token, 0, 64, milliseconds(600000)), "park");
}

// ---- broadcast ---------------------------------------------------------------------------------

double slowest(MpiGroup& world, double local) {
  auto all = world.allgather_strings(std::to_string(local));
  die_if(all.status(), "allgather");
  double worst = 0;
  for (const auto& s : *all) worst = std::max(worst, std::stod(s));
  return worst;
}

struct BcastTimes {
  std::vector<double> raw, bucketed;
  std::vector<MpiGroup::BcastPhases> phases;  // this rank's, per bucketed run
  size_t mismatches = 0;
};

// This rank's per-phase medians over the bucketed runs, one line (see MpiGroup::BcastPhases).
std::string phase_line(const std::vector<MpiGroup::BcastPhases>& runs) {
  auto med = [&](double MpiGroup::BcastPhases::*f) {
    std::vector<double> v;
    for (const auto& p : runs) v.push_back(p.*f);
    return median(v) * 1e3;
  };
  char line[320];
  std::snprintf(line, sizeof line,
                "total %6.1f = wait %6.1f + copy %5.1f + checksum %5.1f ms (caller); helper: MPI_Ibcast or pull %5.1f, "
                "MPI_Test %6.1f ms",
                med(&MpiGroup::BcastPhases::total), med(&MpiGroup::BcastPhases::wait),
                med(&MpiGroup::BcastPhases::copy_out), med(&MpiGroup::BcastPhases::on_segment),
                med(&MpiGroup::BcastPhases::post), med(&MpiGroup::BcastPhases::test));
  return line;
}

// --pieces: the root sends as the trainer does (MpiGroup::bcast_buckets_from over the tensors where
// they lie, checksumming each segment once it went out, for the trailer); the pieces are cut from
// its buffer in the sizes of a stories110M layer's f32 tensors (q/k/v/o 2.25 MiB, w1/w2/w3 6 MiB,
// a norm 3 KiB), so every rank's bytes are the buffer's.
std::vector<MpiGroup::RootPiece> trainer_pieces(std::span<char> buf) {
  static constexpr size_t kSizes[] = {size_t{9} << 18, size_t{9} << 18, size_t{9} << 18, size_t{9} << 18,
                                      size_t{6} << 20, size_t{6} << 20, size_t{6} << 20, 3072};
  std::vector<MpiGroup::RootPiece> out;
  for (size_t off = 0, i = 0; off < buf.size(); ++i) {
    const size_t n = std::min(kSizes[i % std::size(kSizes)], buf.size() - off);
    out.push_back({buf.data() + off, n});
    off += n;
  }
  return out;
}

double timed_bcast(MpiGroup& world, std::span<char> buf, bool bucketed, size_t bucket,
                   const std::vector<uint64_t>& expected, size_t& mismatches,
                   std::vector<MpiGroup::BcastPhases>* phases = nullptr, bool pieces = false) {
  const bool root = world.rank() == 0;
  if (!root) std::memset(buf.data(), 0, buf.size());  // same cache state for both variants
  die_if(world.barrier(), "barrier");
  auto t0 = Clock::now();
  if (bucketed && pieces && root) {
    uint64_t sent = 0;  // the trainer's trailer: checksums of what went out, per segment
    auto on_segment = [&](size_t off, size_t len, const void* bytes) {
      sent += zr::checksum64_partial(bytes, len, off);
    };
    const auto from = trainer_pieces(buf);
    die_if(world.bcast_buckets_from(from, 0, bucket, milliseconds(60000), on_segment), "bcast_buckets_from");
    if (sent == 42) std::puts("");
    if (phases) phases->push_back(world.last_bcast_phases());
  } else if (bucketed) {
    uint64_t sum = 0;  // of the current bucket, from its segments (as TransferVerifier does per tensor)
    auto on_segment = [&](size_t off, size_t len, const void* bytes) {
      if (root) return;
      const size_t start = off / bucket * bucket, end = std::min(buf.size(), start + bucket);
      sum += zr::checksum64_partial(bytes, len, off - start);
      if (off + len < end) return;
      if (zr::checksum64_finish(sum, end - start) != expected[off / bucket]) ++mismatches;
      sum = 0;
    };
    die_if(world.bcast_buckets(buf.data(), buf.size(), 0, bucket, milliseconds(60000), on_segment), "bcast_buckets");
    if (phases) phases->push_back(world.last_bcast_phases());
  } else {
    die_if(world.bcast_blocking(buf.data(), buf.size(), 0), "bcast_blocking");
  }
  return slowest(world, seconds_since(t0));
}

BcastTimes bench_bcast(MpiGroup& world, std::span<char> buf, size_t bucket, int repeats, bool pieces) {
  std::string sums;  // per-bucket checksums, computed by the root, sent as metadata
  if (world.rank() == 0)
    for (size_t off = 0; off < buf.size(); off += bucket) {
      uint64_t c = zr::checksum64(buf.data() + off, std::min(bucket, buf.size() - off));
      sums.append(reinterpret_cast<const char*>(&c), 8);
    }
  die_if(world.bcast_small(sums, 0), "bcast_small");
  std::vector<uint64_t> expected(sums.size() / 8);
  std::memcpy(expected.data(), sums.data(), sums.size());
  BcastTimes t;
  size_t mismatches = 0;
  timed_bcast(world, buf, false, bucket, expected, mismatches);  // warm-up both paths
  timed_bcast(world, buf, true, bucket, expected, mismatches, nullptr, pieces);
  for (int r = 0; r < repeats; ++r) {
    bool bucketed_first = r % 2 == 1;
    for (int i = 0; i < 2; ++i) {
      bool bucketed = (i == 0) == bucketed_first;
      (bucketed ? t.bucketed : t.raw)
          .push_back(timed_bcast(world, buf, bucketed, bucket, expected, mismatches, &t.phases, pieces));
    }
  }
  t.mismatches = mismatches;
  return t;
}

void report_bcast(MpiGroup& world, const BcastTimes& t, size_t bytes, size_t bucket, const std::string& buffer_pages,
                  zr::bench::JsonRows& rows) {
  auto all = world.allgather_strings(std::to_string(t.mismatches));
  // How each receiver took the bytes, and in what pages its ring and buffer were.
  auto ring = world.allgather_strings(world.last_bcast_phases().pull ? "pulled (process_vm_readv) into " + buffer_pages
                                      : world.receives_through_ring(0)
                                          ? "ring in " + world.receive_ring_pages() + " into " + buffer_pages
                                          : "in place into " + buffer_pages);
  auto phases = world.allgather_strings(phase_line(t.phases));
  if (world.rank() != 0) return;
  std::string modes;
  for (size_t r = 1; r < ring->size(); ++r) modes += (r > 1 ? ", " : "") + (*ring)[r];
  size_t bad = 0;
  for (const auto& s : *all) bad += std::stoul(s);
  std::vector<double> ratios;
  for (size_t i = 0; i < t.raw.size(); ++i) ratios.push_back(t.raw[i] / t.bucketed[i]);
  std::printf(
      "\nbroadcast, %zu MiB from rank 0 to %d receivers (receiving %s), medians of %zu (time = slowest rank):\n",
      bytes >> 20, world.size() - 1, modes.c_str(), t.raw.size());
  std::printf("  MPI_Bcast (one call)                         %8.2f ms  %6.2f GB/s\n", median(t.raw) * 1e3,
              gbps(bytes, median(t.raw)));
  std::printf("  bcast_buckets %3zu MiB + receivers' checksums  %8.2f ms  %6.2f GB/s\n", bucket >> 20,
              median(t.bucketed) * 1e3, gbps(bytes, median(t.bucketed)));
  std::printf("  ratio bucketed/raw: %.1f%% (median of paired runs %.1f%%); checksum mismatches: %zu\n",
              100 * median(t.raw) / median(t.bucketed), 100 * median(ratios), bad);
  rows.add({"weight_sync_bcast_" + std::to_string(bucket >> 20) + "mib_gbps", gbps(bytes, median(t.bucketed)), "GB/s",
            gbps(bytes, median(t.raw))});
  std::printf("  per phase, bucketed (medians; root: posts and waits):\n");
  for (size_t r = 0; r < phases->size(); ++r) std::printf("    rank %zu: %s\n", r, (*phases)[r].c_str());
}

}  // namespace

int main(int argc, char** argv) {
  size_t mib = 512;
  std::vector<size_t> bucket_mibs = {64};
  int repeats = 7;
  bool ipc = true;
  // Rank 0 (known from mpirun's environment before MPI starts) forks the ipc consumer now, so
  // the child never inherits an initialized MPI.
  const char* env_rank = std::getenv("OMPI_COMM_WORLD_RANK");
  Consumer consumer;
  if (!env_rank || std::string(env_rank) == "0") consumer.start();

  auto world = MpiGroup::init(&argc, &argv);
  die_if(world.status(), "MpiGroup::init");
  CLI::App app{"zrollout weight-sync benchmark (run under mpirun)"};
  app.add_option("--mib", mib, "transfer size in MiB");
  app.add_option("--bucket-mib", bucket_mibs,
                 "bcast_buckets bucket size in MiB; several (64,16) run one after the other")
      ->delimiter(',');
  app.add_option("--repeats", repeats, "timed repeats (medians are printed)");
  app.add_flag("!--no-ipc", ipc, "skip the shared-memory part");
  std::string json_path;
  app.add_option("--json", json_path, "rank 0 writes result rows to FILE (bench/bench_json.h)");
  std::string receive = "auto";
  app.add_option(
         "--receive", receive,
         "how receivers land segments: auto (pull where it can) | pipeline (ring or in place) | ring | in-place | "
         "pull (MpiGroup::set_receive_mode)")
      ->check(CLI::IsMember({"auto", "pipeline", "ring", "in-place", "pull"}));
  std::string root_pages = "huge";
  app.add_option("--root-pages", root_pages,
                 "pages of the root's buffer: huge (2 MiB where THP allows, as the receivers' staging buffers) | "
                 "4k (as a trainer's tensors: torch's allocator, a checkpoint's file mapping)")
      ->check(CLI::IsMember({"huge", "4k"}));
  bool pieces = false;
  app.add_flag("--pieces", pieces,
               "the root sends from tensor-sized pieces of its buffer and checksums what went out, as the trainer "
               "does (bcast_buckets_from)");
  CLI11_PARSE(app, argc, argv);
  zr::bench::JsonRows rows(world->rank() == 0 ? json_path : "");
  const size_t bytes = mib << 20;
  world->set_receive_mode(receive == "ring"       ? MpiGroup::ReceiveMode::ring
                          : receive == "in-place" ? MpiGroup::ReceiveMode::in_place
                          : receive == "pull"     ? MpiGroup::ReceiveMode::pull
                          : receive == "pipeline" ? MpiGroup::ReceiveMode::pipeline
                                                  : MpiGroup::ReceiveMode::automatic);
  std::string bucket_list;
  for (size_t b : bucket_mibs) bucket_list += (bucket_list.empty() ? "" : ",") + std::to_string(b);

  // Pre-faulted on every rank, in 2 MiB pages where THP allows (4 KiB under ZR_NO_HUGEPAGES), as
  // the trainer's transfer buffer and the engines' staging buffers are.
  zr::PullBuffer mem;
  std::span<char> buf;
  if (world->rank() == 0 && root_pages == "4k") {  // advised before the first touch; unmapped at exit
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die_if(zr::make_error(zr::ErrorCode::io_error, "mmap"), "buffer");
    (void)::madvise(p, bytes, MADV_NOHUGEPAGE);
    buf = std::span<char>(static_cast<char*>(p), bytes);
  } else {
    die_if(mem.reserve(bytes), "buffer");
    buf = std::span<char>(reinterpret_cast<char*>(mem.data()), bytes);
  }
  std::memset(buf.data(), 0, bytes);
  if (world->rank() == 0) {
    fill_random(buf.data(), bytes, 42);
    std::printf("bench_weight_sync: np=%d, %zu MiB, buckets %s MiB, %d repeats, %s; host %s%s; root's buffer in %s%s\n",
                world->size(), mib, bucket_list.c_str(), repeats, MpiGroup::thread_level_name(world->thread_level()),
                zr::thp_line().c_str(), zr::huge_pages_wanted() ? "" : " (ZR_NO_HUGEPAGES)",
                zr::mapping_pages(buf.data()).describe().c_str(),
                pieces ? ", sent from tensor-sized pieces with the trainer's checksums (--pieces)" : "");
    bench_checksum(buf, rows);
    if (ipc && consumer.pid > 0) bench_ipc(consumer, buf, repeats, rows);
    std::fflush(stdout);
  }
  consumer.stop();
  park_until_rank0(*world);
  for (size_t b : bucket_mibs) {  // each against raw MPI_Bcast timed in the same rounds
    BcastTimes t = bench_bcast(*world, buf, b << 20, repeats, pieces);
    report_bcast(*world, t, bytes, b << 20, zr::mapping_pages(buf.data()).describe(), rows);
  }
  return rows.write() ? 0 : 1;
}
