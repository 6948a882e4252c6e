// MpiGroup::bcast_buckets: the weight broadcast as pipelined MPI_Ibcast segments, received in place
// or through a cache-sized ring (see SegmentPlan), with per-segment verification callbacks.
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
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "comm/host_pages.h"
#include "comm/mpi_group_internal.h"

namespace zr {

using namespace mpi_detail;

namespace {

// State shared by the caller (copies out, runs on_segment) and the helper thread (every MPI call).
struct PipelineState {
  std::mutex mu;
  std::condition_variable cv;
  size_t completed = 0;   // segments whose broadcast completed (helper writes)
  size_t consumed = 0;    // segments whose on_segment returned (caller writes)
  bool stop = false;      // the caller gave up: post nothing more
  bool finished = false;  // the helper is done (success or error)
  Status error;
};

// How the root waits for its segments to complete. Over shared memory (vader with CMA) a receiver
// copies a segment out of the root's memory itself, inside its own MPI call; the root only posts
// segments (a window ahead) and notices completions, so it polls with short sleeps instead of
// spinning: a spinning root took a whole core (~128 ms of CPU per 512 MiB transfer) from a
// receiver whose copy (MPI) and checksum run on two threads. The sleep is scaled to the posted
// window: ~1/10 of its time at 32 GB/s, at most 200 us (a tcp root then still refills its socket
// buffers often enough for ~20 GB/s); windows too small for a 10 us sleep keep the spinning Backoff.
std::chrono::microseconds root_poll_interval(size_t window_bytes) {
  constexpr size_t kBytesPerMicrosecond = 32 * 1000;  // 32 GB/s
  auto us = std::chrono::microseconds(std::min<size_t>(200, window_bytes / kBytesPerMicrosecond / 10));
  return us >= std::chrono::microseconds(10) ? us : std::chrono::microseconds(0);
}

// n bytes from src to dst; on x86 with non-temporal stores: the destination is not read for
// ownership and does not evict the ring (or the weights being served) from the cache.
void copy_streaming(char* dst, const char* src, size_t n) {
#if defined(__x86_64__) || defined(__SSE2__)
  size_t head = std::min(n, (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16);
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 64 <= n; i += 64) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  std::memcpy(dst + i, src + i, n - i);
  _mm_sfence();  // the streamed bytes are ordered before whatever the caller publishes next
#else
  std::memcpy(dst, src, n);
#endif
}

// Runs on the helper thread: posts one MPI_Ibcast per segment (into or from `data`, or into ring
// slots), keeping at most plan.window() posted and not yet consumed, and tests the oldest one
// until it completes or the deadline passes. Every rank posts the first min(n, window) at once.
class SegmentBroadcaster {
 public:
  SegmentBroadcaster(MPI_Comm comm, char* data, char* ring, SegmentPlan plan, int root, bool is_root,
                     milliseconds timeout, PipelineState& st)
      : comm_(comm),
        data_(data),
        ring_(ring),
        plan_(plan),
        root_(root),
        timeout_(timeout),
        st_(st),
        window_(plan.window()),
        root_poll_(is_root ? root_poll_interval(window_ * plan.segment) : std::chrono::microseconds(0)) {}

  // The root of bcast_buckets_from: segments come from `source`, assembled (when they must be) in
  // `scratch`, window() slots of one segment. A slot is reused by the segment window() later, which
  // is posted only once this one is consumed (so completed).
  void set_source(const std::function<const char*(size_t, size_t, char*)>* source, char* scratch) {
    source_ = source;
    scratch_ = scratch;
    sent_at_.assign(window_, nullptr);
  }
  // Where the root of bcast_buckets_from sent segment k from (in place or a scratch slot); valid
  // from its completion until it is consumed (the slot's next segment is posted only after that).
  const char* sent_at(size_t k) const { return sent_at_[k % window_]; }

  // One more broadcast after the segments (`bytes` at `at`), posted once this rank consumed the
  // last segment: on the root, its on_segment has filled it by then (e.g. the checksums of what
  // it sent).
  void set_trailer(char* at, size_t bytes) {
    trailer_ = at;
    trailer_bytes_ = bytes;
  }

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
      while (!stop && posted_ < n && posted_ - consumed < window_) {
        if (!post()) return;
        last = Clock::now();
      }
      if (inflight_.empty()) {
        if (completed_ == n + (trailer_ ? 1 : 0) || stop) return finish(Status::ok_status());
        if (completed_ == n && consumed == n) {  // every segment consumed: the trailer goes now
          if (!post_trailer()) return;
          last = Clock::now();
          continue;
        }
        std::unique_lock lk(st_.mu);  // every slot holds a completed segment: wait for the caller
        st_.cv.wait(lk, [&] { return st_.consumed != consumed || st_.stop; });
        last = Clock::now();
        continue;
      }
      int done = 0;
      const auto t_test = Clock::now();
      int rc = MPI_Test(&inflight_.front(), &done, MPI_STATUS_IGNORE);
      test_s_ += seconds_since(t_test);
      if (rc != MPI_SUCCESS) return finish(mpi_status(rc, "MPI_Test of " + segment_text(completed_)));
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
  // Seconds inside MPI_Ibcast and MPI_Test; read after run() returned.
  double post_seconds() const { return post_s_; }
  double test_seconds() const { return test_s_; }
  bool all_posted() const { return posted_ == plan_.count() && (!trailer_ || trailer_posted_); }

 private:
  bool post() {
    MPI_Request req = MPI_REQUEST_NULL;
    char* at = plan_.ring ? plan_.slot(ring_, posted_) : data_ + plan_.offset(posted_);
    const auto t0 = Clock::now();
    if (source_)  // MPI reads the root's buffer only
      at = const_cast<char*>(
          (*source_)(plan_.offset(posted_), plan_.length(posted_), scratch_ + (posted_ % window_) * plan_.segment));
    if (source_) sent_at_[posted_ % window_] = at;
    int rc = MPI_Ibcast(at, static_cast<int>(plan_.length(posted_)), MPI_BYTE, root_, comm_, &req);
    post_s_ += seconds_since(t0);
    if (rc != MPI_SUCCESS) {
      finish(mpi_status(rc, "MPI_Ibcast of " + segment_text(posted_)));
      return false;
    }
    inflight_.push_back(req);
    ++posted_;
    return true;
  }

  bool post_trailer() {
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Ibcast(trailer_, static_cast<int>(trailer_bytes_), MPI_BYTE, root_, comm_, &req);
    if (rc != MPI_SUCCESS) {
      finish(mpi_status(rc, "MPI_Ibcast of " + segment_text(plan_.count())));
      return false;
    }
    inflight_.push_back(req);
    trailer_posted_ = true;
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

  std::string segment_text(size_t s) const {
    if (s >= plan_.count()) return "the trailer (" + std::to_string(trailer_bytes_) + " bytes)";
    return segment_name(plan_, s);
  }

  std::string timeout_text() const {
    return "broadcast of " + segment_text(completed_) + " from rank " + std::to_string(root_) +
           " did not complete within " + std::to_string(timeout_.count()) + " ms";
  }

  MPI_Comm comm_;
  char* data_;
  char* ring_;  // receivers only
  SegmentPlan plan_;
  int root_;
  milliseconds timeout_;
  PipelineState& st_;
  size_t window_;
  std::chrono::microseconds root_poll_;  // 0: spin with Backoff
  const std::function<const char*(size_t, size_t, char*)>* source_ = nullptr;
  char* scratch_ = nullptr;
  std::vector<const char*> sent_at_;  // by segment % window_ (root of bcast_buckets_from)
  char* trailer_ = nullptr;
  size_t trailer_bytes_ = 0;
  bool trailer_posted_ = false;
  std::deque<MPI_Request> inflight_;
  size_t posted_ = 0;
  size_t completed_ = 0;
  double post_s_ = 0, test_s_ = 0;
};

// The receive ring: in 2 MiB huge pages where the kernel allows (THP "madvise" or "always") and
// ZR_NO_HUGEPAGES is not set, faulted in now. With 4 KiB pages, whole runs of bench_weight_sync on this host went 3x slower
// (28-34% of one MPI_Bcast, in about one run in five): the receiver's copy into the ring (the CMA
// read inside MPI) ran at ~2 GB/s instead of 7-12. In 27 runs with huge pages that never happened
// (README). Freed with std::free (aligned_alloc).
char* alloc_ring(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  auto* p = static_cast<char*>(std::aligned_alloc(kHuge, rounded));
  if (!p) return nullptr;
  (void)madvise(p, rounded, huge_pages_wanted() ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  std::memset(p, 0, rounded);
  return p;
}

}  // namespace

Status MpiGroup::bcast_buckets(void* data, size_t bytes, int root, size_t bucket_bytes, milliseconds timeout,
                               const SegmentCallback& on_segment, std::span<std::byte> trailer) {
  ZR_RETURN_IF_ERROR(usable("bcast_buckets"));
  if (root < 0 || root >= impl_->size)
    return make_error(ErrorCode::invalid_argument, "bcast_buckets: root " + std::to_string(root) + " not in the group");
  if (bucket_bytes == 0 || bucket_bytes % 64 != 0 || bucket_bytes > (size_t{1} << 30))
    return make_error(ErrorCode::invalid_argument, "bcast_buckets: bucket_bytes " + std::to_string(bucket_bytes) +
                                                       " must be a multiple of 64 in (0, 1 GiB]");
  if (timeout.count() <= 0) return make_error(ErrorCode::invalid_argument, "bcast_buckets: timeout must be > 0");
  if (trailer.size() > kMaxTrailerBytes)
    return make_error(ErrorCode::invalid_argument, "bcast_buckets: trailer of " + std::to_string(trailer.size()) +
                                                       " bytes is over " + std::to_string(kMaxTrailerBytes));
  if (bytes == 0) return Status::ok_status();
  if (!data) return make_error(ErrorCode::invalid_argument, "bcast_buckets: null data");
  if (pull_tried(bytes)) {  // the same answer on every rank (mpi_group.h)
    const RootPiece whole{data, bytes};
    auto pull = agree_on_pull(impl_->rank == root ? std::span(&whole, 1) : std::span<const RootPiece>{}, bytes, root,
                              bucket_bytes, timeout);
    if (!pull.ok()) return pull.status();
    if (*pull) return run_pull(static_cast<char*>(data), bytes, root, bucket_bytes, timeout, on_segment, trailer);
  }
  return run_bucket_pipeline(static_cast<char*>(data), bytes, root, bucket_bytes, timeout, on_segment, trailer);
}

Status MpiGroup::run_bucket_pipeline(char* data, size_t bytes, int root, size_t bucket_bytes, milliseconds timeout,
                                     const SegmentCallback& on_segment, std::span<std::byte> trailer,
                                     const SegmentSource& source) {
  const bool is_root = impl_->rank == root;
  SegmentPlan plan{bytes, bucket_bytes, receives_through_ring(root)};
  const size_t ring_bytes = kRingSlots * plan.segment;
  if (plan.ring && impl_->ring_bytes < ring_bytes) {  // not poisoned (usable() checked): nothing pending
    impl_->ring.reset(alloc_ring(ring_bytes));
    impl_->ring_bytes = impl_->ring ? ring_bytes : 0;
    plan.ring = impl_->ring != nullptr;  // else in place
  }
  char* ring = impl_->ring.get();
  PipelineState st;
  SegmentBroadcaster caster(impl_->comm, data, ring, plan, root, is_root, timeout, st);
  std::unique_ptr<char[]> scratch;
  if (source) {
    scratch.reset(new char[plan.window() * plan.segment]);  // only slots of spanning segments are touched
    caster.set_source(&source, scratch.get());
  }
  if (!trailer.empty()) caster.set_trailer(reinterpret_cast<char*>(trailer.data()), trailer.size());
  std::optional<SplitCores> cores;
  if (plan.ring) cores.emplace(impl_->on_this_host, impl_->rank, root);
  std::thread helper([&caster, &cores] {
    if (cores) cores->place_helper();
    caster.run();
  });
  std::exception_ptr thrown;
  BcastPhases ph;
  ph.ring = plan.ring;
  const auto t_call = Clock::now();
  for (size_t k = 0; k < plan.count(); ++k) {
    auto t = Clock::now();
    {
      std::unique_lock lk(st.mu);
      st.cv.wait(lk, [&] { return st.completed > k || st.finished; });
      if (st.completed <= k) break;  // the helper failed
    }
    ph.wait += seconds_since(t);
    ++ph.segments;
    const size_t off = plan.offset(k), len = plan.length(k);
    const char* bytes_at = data ? data + off : caster.sent_at(k);  // the root of bcast_buckets_from
    if (plan.ring) {
      t = Clock::now();
      bytes_at = plan.slot(ring, k);
      copy_streaming(data + off, bytes_at, len);
      ph.copy_out += seconds_since(t);
    }
    if (on_segment) {
      t = Clock::now();
      try {
        on_segment(off, len, bytes_at);
        ph.on_segment += seconds_since(t);
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
  ph.total = seconds_since(t_call);
  ph.post = caster.post_seconds();
  ph.test = caster.test_seconds();
  impl_->phases = ph;
  impl_->pending = caster.take_pending();
  if (!st.error.ok() || (thrown && (!caster.all_posted() || !impl_->pending.empty()))) {
    impl_->poisoned = true;
    impl_->poison_reason = st.error.ok() ? "on_segment threw during bcast_buckets" : st.error.message;
  }
  if (thrown) std::rethrow_exception(thrown);
  return st.error;
}

Status MpiGroup::bcast_buckets_from(std::span<const RootPiece> pieces, int root, size_t bucket_bytes,
                                    milliseconds timeout, const SegmentCallback& on_segment,
                                    std::span<std::byte> trailer) {
  ZR_RETURN_IF_ERROR(usable("bcast_buckets_from"));
  if (root != impl_->rank)
    return make_error(ErrorCode::invalid_argument, "bcast_buckets_from: rank " + std::to_string(impl_->rank) +
                                                       " is not the root " + std::to_string(root));
  if (bucket_bytes == 0 || bucket_bytes % 64 != 0 || bucket_bytes > (size_t{1} << 30))
    return make_error(ErrorCode::invalid_argument, "bcast_buckets_from: bucket_bytes " + std::to_string(bucket_bytes) +
                                                       " must be a multiple of 64 in (0, 1 GiB]");
  if (timeout.count() <= 0) return make_error(ErrorCode::invalid_argument, "bcast_buckets_from: timeout must be > 0");
  if (trailer.size() > kMaxTrailerBytes)
    return make_error(ErrorCode::invalid_argument, "bcast_buckets_from: trailer of " + std::to_string(trailer.size()) +
                                                       " bytes is over " + std::to_string(kMaxTrailerBytes));
  std::vector<size_t> starts;  // starts[i]: the transfer offset of pieces[i]
  size_t bytes = 0;
  for (const RootPiece& p : pieces) {
    starts.push_back(bytes);
    bytes += p.bytes;
  }
  if (bytes == 0) return Status::ok_status();
  SegmentSource source = [&](size_t off, size_t len, char* scratch) -> const char* {
    // The last piece starting at or before off: never an empty one (it shares its start with the next).
    size_t i = static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), off) - starts.begin()) - 1;
    if (pieces[i].data && off + len <= starts[i] + pieces[i].bytes)
      return static_cast<const char*>(pieces[i].data) + (off - starts[i]);
    for (size_t done = 0; done < len; ++i) {  // spans pieces (or padding): assemble it
      const size_t from = off + done - starts[i];
      const size_t n = std::min(len - done, pieces[i].bytes - from);
      if (pieces[i].data) std::memcpy(scratch + done, static_cast<const char*>(pieces[i].data) + from, n);
      else std::memset(scratch + done, 0, n);
      done += n;
    }
    return scratch;
  };
  if (pull_tried(bytes)) {  // the receivers read the pieces where they are
    auto pull = agree_on_pull(pieces, bytes, root, bucket_bytes, timeout);
    if (!pull.ok()) return pull.status();
    if (*pull) return run_pull(nullptr, bytes, root, bucket_bytes, timeout, on_segment, trailer, source);
  }
  return run_bucket_pipeline(nullptr, bytes, root, bucket_bytes, timeout, on_segment, trailer, source);
}

void MpiGroup::set_receive_mode(ReceiveMode mode) {
  if (impl_) impl_->receive_mode = mode;
}

bool MpiGroup::receives_through_ring(int root) const {
  if (!valid() || impl_->rank == root) return false;
  const ReceiveMode mode = impl_->receive_mode;
  return mode == ReceiveMode::ring || (mode != ReceiveMode::in_place && use_ring(impl_->on_this_host, root));
}

const MpiGroup::BcastPhases& MpiGroup::last_bcast_phases() const {
  static const BcastPhases none;
  return impl_ ? impl_->phases : none;
}

std::string MpiGroup::receive_ring_pages() const {
  if (!impl_ || !impl_->ring) return "none";
  return mapping_pages(impl_->ring.get()).describe();
}

Status MpiGroup::bcast_blocking(void* data, size_t bytes, int root) {
  ZR_RETURN_IF_ERROR(usable("bcast_blocking"));
  if (root < 0 || root >= impl_->size)
    return make_error(ErrorCode::invalid_argument,
                      "bcast_blocking: root " + std::to_string(root) + " not in the group");
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

}  // namespace zr
