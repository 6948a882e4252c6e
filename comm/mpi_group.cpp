// The only file that includes mpi.h (see comm/mpi_group.h).
#include "comm/mpi_group.h"

#include <mpi.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

namespace zr {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct MpiGroup::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  bool is_world = false;
  bool finalize_on_destroy = false;  // init() called MPI_Init_thread
  int rank = -1;
  int size = 0;
  int world_rank = -1;
  ThreadLevel level = ThreadLevel::single;
  bool poisoned = false;
  std::string poison_reason;
  std::vector<MPI_Request> pending;  // broadcasts posted by a failed bcast_buckets, not completed
};

namespace {

std::atomic<bool> g_world_alive{false};

Status mpi_status(int rc, const std::string& what) {
  if (rc == MPI_SUCCESS) return Status::ok_status();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return make_error(ErrorCode::unavailable, what + " failed: " + std::string(text, static_cast<size_t>(len)));
}

MpiGroup::ThreadLevel to_level(int provided) {
  if (provided >= MPI_THREAD_MULTIPLE) return MpiGroup::ThreadLevel::multiple;
  if (provided >= MPI_THREAD_SERIALIZED) return MpiGroup::ThreadLevel::serialized;
  if (provided >= MPI_THREAD_FUNNELED) return MpiGroup::ThreadLevel::funneled;
  return MpiGroup::ThreadLevel::single;
}

std::string size_text(size_t b) {
  char buf[64];
  constexpr size_t kMiB = size_t{1} << 20;
  if (b >= kMiB && b % kMiB == 0) std::snprintf(buf, sizeof buf, "%zu MiB", b / kMiB);
  else if (b >= kMiB) std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(b) / kMiB);
  else std::snprintf(buf, sizeof buf, "%zu bytes", b);
  return buf;
}

// Waiting for MPI: spin on MPI_Test first (MPI makes progress only inside its calls), yield the
// core once nothing moved for a while (oversubscribed hosts), sleep when a peer is clearly late.
class Backoff {
 public:
  void reset() { spins_ = 0; }
  void pause(Clock::duration idle) {
    if (++spins_ < 64) return;
    if (idle < milliseconds(50)) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(200));
  }

 private:
  int spins_ = 0;
};

struct BucketPlan {
  size_t bytes;
  size_t bucket;
  size_t count() const { return (bytes + bucket - 1) / bucket; }
  size_t offset(size_t k) const { return k * bucket; }
  size_t length(size_t k) const { return std::min(bucket, bytes - k * bucket); }
};

// State shared by the caller (runs on_bucket) and the helper thread (makes every MPI call).
struct PipelineState {
  std::mutex mu;
  std::condition_variable cv;
  size_t completed = 0;   // buckets whose broadcast completed (helper writes)
  size_t consumed = 0;    // buckets whose on_bucket returned (caller writes)
  bool stop = false;      // the caller gave up: post nothing more
  bool finished = false;  // the helper is done (success or error)
  Status error;
};

constexpr size_t kMaxInFlight = 2;

// How the root waits for its buckets to complete. Over shared memory (vader with CMA) a receiver
// copies a bucket out of the root's memory itself, inside its own MPI call; the root only posts
// buckets (kMaxInFlight, i.e. one bucket's transfer time ahead) and notices completions, so it polls
// with short sleeps instead of spinning: a spinning root took a whole core (~128 ms of CPU per
// 512 MiB transfer) from a receiver whose copy (MPI) and on_bucket checksum run on two threads, and
// on a 2-core host that cost np=2 10-20% against one plain MPI_Bcast (bench/bench_weight_sync.cpp).
// The sleep is scaled to the bucket: ~1/10 of its time at 32 GB/s, at most
// 200 us (a tcp root then still refills its socket buffers often enough for ~20 GB/s); buckets too
// small for a 10 us sleep keep the spinning Backoff.
std::chrono::microseconds root_poll_interval(size_t bucket_bytes) {
  constexpr size_t kBytesPerMicrosecond = 32 * 1000;  // 32 GB/s
  auto us = std::chrono::microseconds(std::min<size_t>(200, bucket_bytes / kBytesPerMicrosecond / 10));
  return us >= std::chrono::microseconds(10) ? us : std::chrono::microseconds(0);
}

// Runs on the helper thread: posts one MPI_Ibcast per bucket, keeping at most kMaxInFlight posted
// and not yet consumed, and tests the oldest one until it completes or the deadline passes.
// Every rank posts the first min(n, kMaxInFlight) at once: a rank that fails early has then posted
// the same broadcasts as its peers, which drain() relies on.
class BucketBroadcaster {
 public:
  BucketBroadcaster(MPI_Comm comm, char* data, BucketPlan plan, int root, bool is_root, milliseconds timeout,
                    PipelineState& st)
      : comm_(comm), data_(data), plan_(plan), root_(root), timeout_(timeout), st_(st),
        root_poll_(is_root ? root_poll_interval(plan.bucket) : std::chrono::microseconds(0)) {}

  void run() {
    const size_t n = plan_.count();
    Clock::time_point last = Clock::now();
    Backoff backoff;
    for (;;) {
      size_t consumed;
      bool stop;
      {
        std::lock_guard lk(st_.mu);
        consumed = st_.consumed;
        stop = st_.stop;
      }
      while (!stop && posted_ < n && posted_ - consumed < kMaxInFlight) {
        if (!post()) return;
        last = Clock::now();
      }
      if (inflight_.empty()) {
        if (completed_ == n || stop) return finish(Status::ok_status());
        std::unique_lock lk(st_.mu);  // both slots hold completed buckets: wait for the caller
        st_.cv.wait(lk, [&] { return st_.consumed != consumed || st_.stop; });
        last = Clock::now();
        continue;
      }
      int done = 0;
      if (int rc = MPI_Test(&inflight_.front(), &done, MPI_STATUS_IGNORE); rc != MPI_SUCCESS)
        return finish(mpi_status(rc, "MPI_Test of " + bucket_text(completed_)));
      if (done) {
        inflight_.pop_front();
        complete_one();
        last = Clock::now();
        backoff.reset();
        continue;
      }
      Clock::duration idle = Clock::now() - last;
      if (idle >= timeout_) return finish(make_error(ErrorCode::timeout, timeout_text()));
      if (root_poll_.count() > 0) std::this_thread::sleep_for(root_poll_);
      else backoff.pause(idle);
    }
  }

  std::vector<MPI_Request> take_pending() { return {inflight_.begin(), inflight_.end()}; }
  bool all_posted() const { return posted_ == plan_.count(); }

 private:
  bool post() {
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Ibcast(data_ + plan_.offset(posted_), static_cast<int>(plan_.length(posted_)), MPI_BYTE, root_,
                        comm_, &req);
    if (rc != MPI_SUCCESS) {
      finish(mpi_status(rc, "MPI_Ibcast of " + bucket_text(posted_)));
      return false;
    }
    inflight_.push_back(req);
    ++posted_;
    return true;
  }

  void complete_one() {
    ++completed_;
    {
      std::lock_guard lk(st_.mu);
      st_.completed = completed_;
    }
    st_.cv.notify_all();
  }

  void finish(Status s) {
    {
      std::lock_guard lk(st_.mu);
      st_.error = std::move(s);
      st_.finished = true;
    }
    st_.cv.notify_all();
  }

  std::string bucket_text(size_t k) const {
    return "bucket " + std::to_string(k + 1) + "/" + std::to_string(plan_.count()) + " (" +
           size_text(plan_.length(k)) + " at offset " + std::to_string(plan_.offset(k)) + ")";
  }

  std::string timeout_text() const {
    return "broadcast of " + bucket_text(completed_) + " from rank " + std::to_string(root_) +
           " did not complete within " + std::to_string(timeout_.count()) + " ms";
  }

  MPI_Comm comm_;
  char* data_;
  BucketPlan plan_;
  int root_;
  milliseconds timeout_;
  PipelineState& st_;
  std::chrono::microseconds root_poll_;  // 0: spin with Backoff
  std::deque<MPI_Request> inflight_;
  size_t posted_ = 0;
  size_t completed_ = 0;
};

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
  if (!g.is_world) {
    if (g.comm == MPI_COMM_NULL) return;
    if (g.pending.empty()) MPI_Comm_free(&g.comm);
    else spdlog::warn("MpiGroup: leaking a communicator with {} undrained broadcasts ({})", g.pending.size(),
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
    case ThreadLevel::single: return "MPI_THREAD_SINGLE";
    case ThreadLevel::funneled: return "MPI_THREAD_FUNNELED";
    case ThreadLevel::serialized: return "MPI_THREAD_SERIALIZED";
    case ThreadLevel::multiple: return "MPI_THREAD_MULTIPLE";
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
  ZR_RETURN_IF_ERROR(mpi_status(MPI_Comm_split(impl_->comm, color < 0 ? MPI_UNDEFINED : color, key, &comm),
                                "MPI_Comm_split"));
  auto impl = std::make_unique<Impl>();
  impl->level = impl_->level;
  impl->world_rank = impl_->world_rank;
  impl->comm = comm;
  if (comm != MPI_COMM_NULL) {
    MPI_Comm_rank(comm, &impl->rank);
    MPI_Comm_size(comm, &impl->size);
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
  ZR_RETURN_IF_ERROR(mpi_status(MPI_Allgatherv(local.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(),
                                               MPI_CHAR, impl_->comm),
                                "MPI_Allgatherv"));
  std::vector<std::string> out;
  out.reserve(lens.size());
  for (size_t i = 0; i < lens.size(); ++i) out.emplace_back(all, static_cast<size_t>(displs[i]), static_cast<size_t>(lens[i]));
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
    ZR_RETURN_IF_ERROR(mpi_status(MPI_Allreduce(MPI_IN_PLACE, data + off, count, MPI_FLOAT, MPI_SUM, impl_->comm),
                                  "MPI_Allreduce"));
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
    return make_error(ErrorCode::invalid_argument, "bcast_small_idle: root " + std::to_string(root) + " not in the group");
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
  ZR_RETURN_IF_ERROR(mpi_status(MPI_Ibcast(value.data(), static_cast<int>(len), MPI_CHAR, root, impl_->comm, &req),
                                "MPI_Ibcast"));
  // The value is small, but a root cannot finish sending it to a dead rank either.
  return wait_or_abandon(req, still_wanted, *impl_, "MPI_Ibcast");
}


Status MpiGroup::allgather_bytes(const void* in, size_t bytes, void* out, const std::function<bool()>& still_wanted) {
  ZR_RETURN_IF_ERROR(usable("allgather_bytes"));
  if (bytes > INT_MAX) return make_error(ErrorCode::invalid_argument, "allgather_bytes: over 2 GiB");
  // Always the nonblocking form, also without still_wanted: a nonblocking collective never matches
  // a blocking one, and some ranks of a group pass still_wanted while others do not.
  MPI_Request req;
  ZR_RETURN_IF_ERROR(mpi_status(MPI_Iallgather(in, static_cast<int>(bytes), MPI_BYTE, out, static_cast<int>(bytes),
                                               MPI_BYTE, impl_->comm, &req),
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

Status MpiGroup::bcast_buckets(void* data, size_t bytes, int root, size_t bucket_bytes, milliseconds timeout,
                               const BucketCallback& on_bucket) {
  ZR_RETURN_IF_ERROR(usable("bcast_buckets"));
  if (root < 0 || root >= impl_->size)
    return make_error(ErrorCode::invalid_argument, "bcast_buckets: root " + std::to_string(root) + " not in the group");
  if (bucket_bytes == 0 || bucket_bytes % 64 != 0 || bucket_bytes > (size_t{1} << 30))
    return make_error(ErrorCode::invalid_argument, "bcast_buckets: bucket_bytes " + std::to_string(bucket_bytes) +
                                                       " must be a multiple of 64 in (0, 1 GiB]");
  if (timeout.count() <= 0) return make_error(ErrorCode::invalid_argument, "bcast_buckets: timeout must be > 0");
  if (bytes == 0) return Status::ok_status();
  if (!data) return make_error(ErrorCode::invalid_argument, "bcast_buckets: null data");
  return run_bucket_pipeline(static_cast<char*>(data), bytes, root, bucket_bytes, timeout, on_bucket);
}

Status MpiGroup::run_bucket_pipeline(char* data, size_t bytes, int root, size_t bucket_bytes, milliseconds timeout,
                                     const BucketCallback& on_bucket) {
  BucketPlan plan{bytes, bucket_bytes};
  PipelineState st;
  BucketBroadcaster caster(impl_->comm, data, plan, root, impl_->rank == root, timeout, st);
  std::thread helper([&caster] { caster.run(); });
  std::exception_ptr thrown;
  for (size_t k = 0; k < plan.count(); ++k) {
    {
      std::unique_lock lk(st.mu);
      st.cv.wait(lk, [&] { return st.completed > k || st.finished; });
      if (st.completed <= k) break;  // the helper failed
    }
    if (on_bucket) {
      try {
        on_bucket(plan.offset(k), plan.length(k));
      } catch (...) {
        thrown = std::current_exception();
        std::lock_guard lk(st.mu);
        st.stop = true;
        break;
      }
    }
    std::lock_guard lk(st.mu);
    st.consumed = k + 1;
    st.cv.notify_all();
  }
  st.cv.notify_all();
  helper.join();
  impl_->pending = caster.take_pending();
  if (!st.error.ok() || (thrown && (!caster.all_posted() || !impl_->pending.empty()))) {
    impl_->poisoned = true;
    impl_->poison_reason = st.error.ok() ? "on_bucket threw during bcast_buckets" : st.error.message;
  }
  if (thrown) std::rethrow_exception(thrown);
  return st.error;
}

Status MpiGroup::bcast_blocking(void* data, size_t bytes, int root) {
  ZR_RETURN_IF_ERROR(usable("bcast_blocking"));
  if (root < 0 || root >= impl_->size)
    return make_error(ErrorCode::invalid_argument, "bcast_blocking: root " + std::to_string(root) + " not in the group");
  constexpr size_t kPiece = size_t{1} << 30;  // MPI counts are int
  auto* p = static_cast<char*>(data);
  for (size_t off = 0; off < bytes; off += kPiece) {
    int count = static_cast<int>(std::min(kPiece, bytes - off));
    ZR_RETURN_IF_ERROR(mpi_status(MPI_Bcast(p + off, count, MPI_BYTE, root, impl_->comm), "MPI_Bcast"));
  }
  return Status::ok_status();
}

Status MpiGroup::drain(milliseconds timeout) {
  if (!impl_ || impl_->pending.empty()) return Status::ok_status();
  auto& pending = impl_->pending;
  Clock::time_point start = Clock::now();
  Backoff backoff;
  for (;;) {
    int done = 0;
    ZR_RETURN_IF_ERROR(mpi_status(
        MPI_Testall(static_cast<int>(pending.size()), pending.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall"));
    if (done) {
      pending.clear();
      return Status::ok_status();
    }
    Clock::duration waited = Clock::now() - start;
    if (waited >= timeout)
      return make_error(ErrorCode::timeout, std::to_string(pending.size()) + " posted broadcasts still pending after " +
                                                std::to_string(timeout.count()) + " ms");
    backoff.pause(waited);
  }
}

void MpiGroup::abort_group(int code) {
  MPI_Abort(valid() ? impl_->comm : MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return; this is for the compiler and broken MPIs
}

}  // namespace zr
