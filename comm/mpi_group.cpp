// MpiGroup: the communicator, its collectives for small data, liveness (poisoning, abort).
// The bucketed weight broadcast is in mpi_bcast_buckets.cpp; both include mpi.h through
// mpi_group_internal.h, and no other file does.
#include "comm/mpi_group.h"

#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>

#if defined(__x86_64__) || defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "comm/mpi_group_internal.h"

namespace zr {

using namespace mpi_detail;

namespace mpi_detail {

Status mpi_status(int rc, const std::string& what) {
  if (rc == MPI_SUCCESS) return Status::ok_status();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return make_error(ErrorCode::unavailable, what + " failed: " + std::string(text, static_cast<size_t>(len)));
}

std::string size_text(size_t b) {
  char buf[64];
  constexpr size_t kMiB = size_t{1} << 20;
  if (b >= kMiB && b % kMiB == 0) std::snprintf(buf, sizeof buf, "%zu MiB", b / kMiB);
  else if (b >= kMiB) std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(b) / kMiB);
  else std::snprintf(buf, sizeof buf, "%zu bytes", b);
  return buf;
}

// Which ranks of `comm` share this process's host (collective over comm).
std::vector<char> ranks_on_this_host(MPI_Comm comm) {
  int size = 0;
  MPI_Comm_size(comm, &size);
  std::vector<char> here(static_cast<size_t>(size), 0);
  MPI_Comm node = MPI_COMM_NULL;
  if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS) return here;
  MPI_Group all, local;
  MPI_Comm_group(comm, &all);
  MPI_Comm_group(node, &local);
  std::vector<int> ranks(here.size()), mapped(here.size());
  for (int r = 0; r < size; ++r) ranks[static_cast<size_t>(r)] = r;
  MPI_Group_translate_ranks(all, size, ranks.data(), local, mapped.data());
  for (size_t r = 0; r < here.size(); ++r) here[r] = mapped[r] != MPI_UNDEFINED;
  MPI_Group_free(&all);
  MPI_Group_free(&local);
  MPI_Comm_free(&node);
  return here;
}

}  // namespace mpi_detail

namespace {

std::atomic<bool> g_world_alive{false};

MpiGroup::ThreadLevel to_level(int provided) {
  if (provided >= MPI_THREAD_MULTIPLE) return MpiGroup::ThreadLevel::multiple;
  if (provided >= MPI_THREAD_SERIALIZED) return MpiGroup::ThreadLevel::serialized;
  if (provided >= MPI_THREAD_FUNNELED) return MpiGroup::ThreadLevel::funneled;
  return MpiGroup::ThreadLevel::single;
}

}  // namespace

MpiGroup::MpiGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MpiGroup::MpiGroup(MpiGroup&& other) noexcept = default;

MpiGroup& MpiGroup::operator=(MpiGroup&& other) noexcept {
  if (this != &other) {
    MpiGroup dying(std::move(*this));  // releases what this held
    impl_ = std::move(other.impl_);
  }
  return *this;
}

Result<MpiGroup> MpiGroup::init(int* argc, char*** argv) {
  if (g_world_alive.exchange(true))
    return make_error(ErrorCode::invalid_argument, "MpiGroup::init: a world group is already alive");
  int initialized = 0, provided = MPI_THREAD_SINGLE;
  MPI_Initialized(&initialized);
  if (!initialized) {
    if (int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided); rc != MPI_SUCCESS) {
      g_world_alive = false;
      return mpi_status(rc, "MPI_Init_thread");
    }
  } else {
    MPI_Query_thread(&provided);
  }
  if (provided < MPI_THREAD_SERIALIZED) {
    if (!initialized) MPI_Finalize();
    g_world_alive = false;
    return make_error(ErrorCode::unsupported,
                      "MPI provides thread level " + std::to_string(provided) +
                          "; zrollout needs MPI_THREAD_SERIALIZED or better (build MPI with thread support)");
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  auto impl = std::make_unique<Impl>();
  impl->comm = MPI_COMM_WORLD;
  impl->is_world = true;
  impl->finalize_on_destroy = !initialized;
  impl->level = to_level(provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &impl->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &impl->size);
  impl->world_rank = impl->rank;
  impl->on_this_host = ranks_on_this_host(MPI_COMM_WORLD);
  return MpiGroup(std::move(impl));
}

MpiGroup::MpiGroup() = default;

namespace {

// MPI_Finalize synchronizes with every rank of the job; when a rank died (a killed engine, with
// mpirun's orte_enable_recovery keeping the rest alive) it never returns. This process has done its
// work by then, so after kFinalizeDeadline it exits without it.
constexpr auto kFinalizeDeadline = std::chrono::seconds(10);

void finalize_with_deadline() {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock lock(m);
    if (cv.wait_for(lock, kFinalizeDeadline, [&] { return done; })) return;
    spdlog::warn("MPI_Finalize did not return within {} s (did a rank of the job die?): exiting without it",
                 kFinalizeDeadline.count());
    spdlog::default_logger()->flush();
    std::_Exit(0);
  });
  MPI_Finalize();
  {
    std::lock_guard lock(m);
    done = true;
  }
  cv.notify_one();
  watchdog.join();
}

}  // namespace

MpiGroup::~MpiGroup() {
  if (!impl_) return;
  Impl& g = *impl_;
  g.survivors.reset();       // a sub-group of this one: freed first
  if (!g.pending.empty()) {  // undrained receives may still write into these
    (void)g.ring.release();
    (void)g.agreement.release();
  }
  if (!g.is_world) {
    if (g.comm == MPI_COMM_NULL) return;
    if (g.pending.empty()) MPI_Comm_free(&g.comm);
    else
      spdlog::warn("MpiGroup: leaking a communicator with {} undrained broadcasts ({})", g.pending.size(),
                   g.poison_reason);
    return;
  }
  if (!g.pending.empty())
    spdlog::warn("MpiGroup: finalizing with {} undrained broadcasts on the world group ({})", g.pending.size(),
                 g.poison_reason);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g.finalize_on_destroy && !finalized) finalize_with_deadline();
  g_world_alive = false;
}

bool MpiGroup::valid() const { return impl_ && impl_->comm != MPI_COMM_NULL; }
int MpiGroup::rank() const { return valid() ? impl_->rank : -1; }
int MpiGroup::size() const { return valid() ? impl_->size : 0; }
int MpiGroup::world_rank() const { return impl_ ? impl_->world_rank : -1; }
MpiGroup::ThreadLevel MpiGroup::thread_level() const { return impl_ ? impl_->level : ThreadLevel::single; }
bool MpiGroup::poisoned() const { return impl_ && impl_->poisoned; }

const std::string& MpiGroup::poison_reason() const {
  static const std::string kNone;
  return impl_ ? impl_->poison_reason : kNone;
}

const char* MpiGroup::thread_level_name(ThreadLevel level) {
  switch (level) {
    case ThreadLevel::single:
      return "MPI_THREAD_SINGLE";
    case ThreadLevel::funneled:
      return "MPI_THREAD_FUNNELED";
    case ThreadLevel::serialized:
      return "MPI_THREAD_SERIALIZED";
    case ThreadLevel::multiple:
      return "MPI_THREAD_MULTIPLE";
  }
  return "?";
}

Status MpiGroup::usable(const char* what) const {
  if (!valid()) return make_error(ErrorCode::invalid_argument, std::string(what) + " on an invalid MpiGroup");
  if (impl_->poisoned)
    return make_error(ErrorCode::unavailable,
                      std::string(what) + ": group unusable after an earlier failure (" + impl_->poison_reason + ")");
  return Status::ok_status();
}

Result<MpiGroup> MpiGroup::split(int color, int key) {
  ZR_RETURN_IF_ERROR(usable("split"));
  MPI_Comm comm = MPI_COMM_NULL;
  ZR_RETURN_IF_ERROR(
      mpi_status(MPI_Comm_split(impl_->comm, color < 0 ? MPI_UNDEFINED : color, key, &comm), "MPI_Comm_split"));
  auto impl = std::make_unique<Impl>();
  impl->level = impl_->level;
  impl->world_rank = impl_->world_rank;
  impl->comm = comm;
  if (comm != MPI_COMM_NULL) {
    MPI_Comm_rank(comm, &impl->rank);
    MPI_Comm_size(comm, &impl->size);
    impl->on_this_host = ranks_on_this_host(comm);
  }
  return MpiGroup(std::move(impl));
}

Result<std::vector<std::string>> MpiGroup::allgather_strings(const std::string& local) {
  ZR_RETURN_IF_ERROR(usable("allgather_strings"));
  if (local.size() > INT_MAX) return make_error(ErrorCode::invalid_argument, "allgather_strings: string over 2 GiB");
  int len = static_cast<int>(local.size());
  std::vector<int> lens(static_cast<size_t>(impl_->size)), displs(lens.size());
  ZR_RETURN_IF_ERROR(
      mpi_status(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, impl_->comm), "MPI_Allgather"));
  long long total = 0;
  for (size_t i = 0; i < lens.size(); ++i) {
    displs[i] = static_cast<int>(total);
    total += lens[i];
    if (total > INT_MAX) return make_error(ErrorCode::invalid_argument, "allgather_strings: over 2 GiB in total");
  }
  std::string all(static_cast<size_t>(total), '\0');
  ZR_RETURN_IF_ERROR(mpi_status(
      MPI_Allgatherv(local.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, impl_->comm),
      "MPI_Allgatherv"));
  std::vector<std::string> out;
  out.reserve(lens.size());
  for (size_t i = 0; i < lens.size(); ++i)
    out.emplace_back(all, static_cast<size_t>(displs[i]), static_cast<size_t>(lens[i]));
  return out;
}

Status MpiGroup::barrier() {
  ZR_RETURN_IF_ERROR(usable("barrier"));
  return mpi_status(MPI_Barrier(impl_->comm), "MPI_Barrier");
}

Status MpiGroup::allreduce_sum(float* data, size_t n) {
  ZR_RETURN_IF_ERROR(usable("allreduce_sum"));
  constexpr size_t kChunk = size_t{1} << 30;  // MPI counts are int
  for (size_t off = 0; off < n; off += kChunk) {
    int count = static_cast<int>(std::min(kChunk, n - off));
    ZR_RETURN_IF_ERROR(
        mpi_status(MPI_Allreduce(MPI_IN_PLACE, data + off, count, MPI_FLOAT, MPI_SUM, impl_->comm), "MPI_Allreduce"));
  }
  return Status::ok_status();
}

Status MpiGroup::bcast_small(std::string& value, int root) {
  ZR_RETURN_IF_ERROR(usable("bcast_small"));
  if (root < 0 || root >= impl_->size)
    return make_error(ErrorCode::invalid_argument, "bcast_small: root " + std::to_string(root) + " not in the group");
  // Every rank takes part in both broadcasts, so a too-long value fails on every rank alike.
  unsigned long long len = value.size();
  ZR_RETURN_IF_ERROR(mpi_status(MPI_Bcast(&len, 1, MPI_UNSIGNED_LONG_LONG, root, impl_->comm), "MPI_Bcast"));
  if (len > INT_MAX) return make_error(ErrorCode::invalid_argument, "bcast_small: value over 2 GiB");
  value.resize(static_cast<size_t>(len));
  return mpi_status(MPI_Bcast(value.data(), static_cast<int>(len), MPI_CHAR, root, impl_->comm), "MPI_Bcast");
}

namespace {

// Completes a nonblocking collective the way a blocking call would (spinning on MPI_Test), except
// that once it has waited a second, still_wanted is asked once a second; false abandons it (the
// request stays posted, the group is poisoned).
Status wait_or_abandon(MPI_Request& req, const std::function<bool()>& still_wanted, MpiGroup::Impl& g,
                       const char* what) {
  if (!still_wanted) return mpi_status(MPI_Wait(&req, MPI_STATUS_IGNORE), what);
  auto next_check = Clock::now() + std::chrono::seconds(1);
  Backoff backoff;
  const auto start = Clock::now();
  for (;;) {
    int done = 0;
    ZR_RETURN_IF_ERROR(mpi_status(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what));
    if (done) return Status::ok_status();
    if (Clock::now() >= next_check) {
      if (!still_wanted()) {
        g.poisoned = true;
        g.poison_reason = std::string(what) + " abandoned: a peer is gone";
        g.pending.push_back(req);
        return make_error(ErrorCode::unavailable, std::string(what) + ": gave up waiting (a peer is gone)");
      }
      next_check = Clock::now() + std::chrono::seconds(1);
    }
    backoff.pause(Clock::now() - start);
  }
}

}  // namespace

Status MpiGroup::bcast_small_idle(std::string& value, int root, std::chrono::microseconds max_sleep,
                                  const std::function<bool()>& still_wanted) {
  ZR_RETURN_IF_ERROR(usable("bcast_small_idle"));
  if (root < 0 || root >= impl_->size)
    return make_error(ErrorCode::invalid_argument,
                      "bcast_small_idle: root " + std::to_string(root) + " not in the group");
  unsigned long long len = value.size();
  MPI_Request req;
  ZR_RETURN_IF_ERROR(mpi_status(MPI_Ibcast(&len, 1, MPI_UNSIGNED_LONG_LONG, root, impl_->comm, &req), "MPI_Ibcast"));
  // Between two steps of a busy engine the leader samples and schedules (micro- to milliseconds):
  // spin briefly, then poll every 50 us (a wake-up that late delays the step by that much), and
  // only once the leader has been quiet for 20 ms back off towards max_sleep (an idle engine).
  const auto start = Clock::now();
  auto sleep = std::chrono::microseconds(50);
  auto next_check = start + std::chrono::seconds(1);
  for (;;) {
    int done = 0;
    ZR_RETURN_IF_ERROR(mpi_status(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test"));
    if (done) break;
    const auto now = Clock::now();
    if (still_wanted && now >= next_check) {
      if (!still_wanted()) {
        impl_->poisoned = true;
        impl_->poison_reason = "bcast_small_idle abandoned: a peer is gone";
        impl_->pending.push_back(req);
        return make_error(ErrorCode::unavailable, "bcast_small_idle: gave up waiting (a peer is gone)");
      }
      next_check = Clock::now() + std::chrono::seconds(1);
    }
    const auto idle = now - start;
    if (idle < std::chrono::microseconds(50)) continue;
    std::this_thread::sleep_for(sleep);
    if (idle > milliseconds(20)) sleep = std::min(max_sleep, sleep * 2);
  }
  if (len > INT_MAX) return make_error(ErrorCode::invalid_argument, "bcast_small_idle: value over 2 GiB");
  value.resize(static_cast<size_t>(len));
  ZR_RETURN_IF_ERROR(
      mpi_status(MPI_Ibcast(value.data(), static_cast<int>(len), MPI_CHAR, root, impl_->comm, &req), "MPI_Ibcast"));
  // The value is small, but a root cannot finish sending it to a dead rank either.
  return wait_or_abandon(req, still_wanted, *impl_, "MPI_Ibcast");
}

Status MpiGroup::allgather_bytes(const void* in, size_t bytes, void* out, const std::function<bool()>& still_wanted) {
  ZR_RETURN_IF_ERROR(usable("allgather_bytes"));
  if (bytes > INT_MAX) return make_error(ErrorCode::invalid_argument, "allgather_bytes: over 2 GiB");
  // Always the nonblocking form, also without still_wanted: a nonblocking collective never matches
  // a blocking one, and some ranks of a group pass still_wanted while others do not.
  MPI_Request req;
  ZR_RETURN_IF_ERROR(mpi_status(
      MPI_Iallgather(in, static_cast<int>(bytes), MPI_BYTE, out, static_cast<int>(bytes), MPI_BYTE, impl_->comm, &req),
      "MPI_Iallgather"));
  return wait_or_abandon(req, still_wanted, *impl_, "MPI_Iallgather");
}

Status MpiGroup::gather_bytes(const void* in, const std::vector<size_t>& counts, void* out, int root,
                              const std::function<bool()>& still_wanted) {
  ZR_RETURN_IF_ERROR(usable("gather_bytes"));
  if (counts.size() != static_cast<size_t>(impl_->size))
    return make_error(ErrorCode::invalid_argument, "gather_bytes: one count per rank");
  std::vector<int> c(counts.size()), displs(counts.size());
  size_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    displs[i] = static_cast<int>(total);
    c[i] = static_cast<int>(counts[i]);
    total += counts[i];
  }
  if (total > INT_MAX) return make_error(ErrorCode::invalid_argument, "gather_bytes: over 2 GiB");
  MPI_Request req;  // nonblocking form on every rank (see allgather_bytes)
  ZR_RETURN_IF_ERROR(mpi_status(MPI_Igatherv(in, c[static_cast<size_t>(impl_->rank)], MPI_BYTE, out, c.data(),
                                             displs.data(), MPI_BYTE, root, impl_->comm, &req),
                                "MPI_Igatherv"));
  return wait_or_abandon(req, still_wanted, *impl_, "MPI_Igatherv");
}

void MpiGroup::abort_group(int code) {
  MPI_Abort(valid() ? impl_->comm : MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return; this is for the compiler and broken MPIs
}

}  // namespace zr
