// MpiGroup::bcast_buckets, pull form: when the root and its receivers share a host, each receiver
// copies the transfer straight out of the root's memory with process_vm_readv (one copy, as Open
// MPI's single-copy CMA transport does inside MPI_Bcast) on a helper thread, while its calling
// thread runs on_segment over each segment just copied (still in the cache). No MPI call per
// segment, no ring, no second copy: the receive costs what one MPI_Bcast costs, and the checksums
// run beside it on the other core. The root's bytes may be one buffer or pieces
// (bcast_buckets_from: a trainer's tensors where it holds them, zero padding between them): the
// receivers read each piece where it is, so the root copies nothing either.
//
// The default where it applies (ReceiveMode::automatic, mpi_group.h). Every rank agrees on the
// form first, bounded by the timeout: the root offers its pid and its regions (one small
// MPI_Ibcast, a second with the region list), each receiver says whether it wants and may pull
// (probe read), and the minimum (MPI_Iallreduce) decides. After the pull, the trailer (if any)
// goes as one MPI_Ibcast and an MPI_Ibarrier tells the root the receivers are done with its memory.
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "comm/mpi_group.h"
#include "comm/mpi_group_internal.h"

namespace zr {

using namespace mpi_detail;

namespace {

// Waits for `req` to complete, at most `timeout`; else timeout naming `what`. poll > 0: sleeps
// that long between tests (the root while its receivers pull: spinning took a core from their
// two threads).
Status wait_request(MPI_Request& req, milliseconds timeout, const std::string& what,
                    std::chrono::microseconds poll = std::chrono::microseconds(0)) {
  const auto start = Clock::now();
  Backoff backoff;
  for (;;) {
    int done = 0;
    ZR_RETURN_IF_ERROR(mpi_status(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test of " + what));
    if (done) return Status::ok_status();
    const auto idle = Clock::now() - start;
    if (idle >= timeout)
      return make_error(ErrorCode::timeout,
                        what + " did not complete within " + std::to_string(timeout.count()) + " ms");
    if (poll.count() > 0) std::this_thread::sleep_for(poll);
    else backoff.pause(idle);
  }
}

// Copies n bytes at `remote` in process pid to dst (process_vm_readv may return short).
Status pull_bytes(pid_t pid, char* dst, uint64_t remote, size_t n) {
  while (n > 0) {
    iovec local{dst, n};
    iovec from{reinterpret_cast<void*>(remote), n};
    const ssize_t got = process_vm_readv(pid, &local, 1, &from, 1, 0);
    if (got <= 0)
      return make_error(ErrorCode::io_error, std::string("process_vm_readv from the broadcast root (pid ") +
                                                 std::to_string(pid) +
                                                 "): " + (got < 0 ? std::strerror(errno) : "0 bytes"));
    dst += got, remote += static_cast<uint64_t>(got), n -= static_cast<size_t>(got);
  }
  return Status::ok_status();
}

bool pull_disabled_here() {
  const char* v = std::getenv("ZR_NO_BCAST_PULL");
  return v && *v && std::strcmp(v, "0") != 0;
}

using Region = PullAgreement::Region;
constexpr size_t kMaxRegions = size_t{1} << 20;  // the region list is one MPI_Ibcast (int count)

// The root's regions laid end to end, read in order: copy(dst, off, len) copies transfer bytes
// [off, off + len) into dst (zeros where a region has no address). Used by one thread.
class RegionReader {
 public:
  RegionReader(pid_t pid, const std::vector<Region>& regions) : pid_(pid), regions_(regions) {
    uint64_t at = 0;
    for (const Region& r : regions_) starts_.push_back(at), at += r.bytes;
  }
  Status copy(char* dst, uint64_t off, size_t len) const {
    // The last region starting at or before off: never an empty one (it shares its start with the next).
    size_t i = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), off) - starts_.begin()) - 1;
    for (size_t done = 0; done < len && i < regions_.size(); ++i) {
      const uint64_t from = off + done - starts_[i];
      const size_t n = static_cast<size_t>(std::min<uint64_t>(len - done, regions_[i].bytes - from));
      if (regions_[i].addr == 0) std::memset(dst + done, 0, n);
      else ZR_RETURN_IF_ERROR(pull_bytes(pid_, dst + done, regions_[i].addr + from, n));
      done += n;
    }
    return Status::ok_status();
  }
  // Whether this process may read the root's memory (one byte of its first non-empty region).
  bool probe() const {
    char byte = 0;
    for (const Region& r : regions_)
      if (r.addr != 0 && r.bytes > 0) return pull_bytes(pid_, &byte, r.addr, 1).ok();
    return true;
  }

 private:
  pid_t pid_;
  const std::vector<Region>& regions_;
  std::vector<uint64_t> starts_;  // starts_[i]: the transfer offset of regions_[i]
};

// The trailer, then a barrier: the root's memory stays untouched until every receiver is done.
Status finish_pull(MpiGroup::Impl& g, const SegmentPlan& plan, int root, milliseconds timeout,
                   std::span<std::byte> trailer, Clock::time_point t_call, MpiGroup::BcastPhases& ph) {
  const bool is_root = g.rank == root;
  const std::string from = " from rank " + std::to_string(root);
  Status st = Status::ok_status();
  MPI_Request req = MPI_REQUEST_NULL;
  if (!trailer.empty()) {
    st = mpi_status(MPI_Ibcast(trailer.data(), static_cast<int>(trailer.size()), MPI_BYTE, root, g.comm, &req),
                    "MPI_Ibcast of the trailer");
    if (st.ok())
      st = wait_request(req, timeout, "broadcast of the trailer (" + std::to_string(trailer.size()) + " bytes)" + from);
  }
  if (st.ok()) {
    st = mpi_status(MPI_Ibarrier(g.comm, &req), "MPI_Ibarrier");
    if (st.ok())  // names the last bucket: the receivers' end of it
      st = wait_request(req, timeout, "broadcast of " + segment_name(plan, plan.count() - 1) + from + " (pulled)",
                        is_root ? std::chrono::microseconds(200) : std::chrono::microseconds(0));
  }
  ph.total = seconds_since(t_call);
  g.phases = ph;
  if (!st.ok()) {
    if (req != MPI_REQUEST_NULL) g.pending.push_back(req);
    g.poisoned = true;
    g.poison_reason = st.message;
  }
  return st;
}

}  // namespace

bool MpiGroup::pull_tried(size_t bytes) const {
  const ReceiveMode mode = impl_->receive_mode;
  if (mode != ReceiveMode::pull && (mode != ReceiveMode::automatic || bytes < kPullMinBytes)) return false;
  for (char here : impl_->on_this_host)  // the same answer on every rank of the group
    if (!here) return false;
  return true;
}

bool MpiGroup::pull_wanted(int root) const {
  if (pull_disabled_here()) return false;
  return impl_->rank == root || use_ring(impl_->on_this_host, root);
}

Result<bool> MpiGroup::agree_on_pull(std::span<const RootPiece> pieces, size_t bytes, int root, size_t bucket_bytes,
                                     milliseconds timeout) {
  const bool is_root = impl_->rank == root;
  PullAgreement& a = *impl_->agreement;  // the group's: a timed-out collective may write into it later
  // While the agreement waits, a deadline names the first bucket, as the pipeline's would.
  const std::string first =
      "broadcast of " + segment_name(SegmentPlan{bytes, bucket_bytes, false}, 0) + " from rank " + std::to_string(root);
  auto fail = [&](MPI_Request req, Status st) -> Status {
    if (req != MPI_REQUEST_NULL) impl_->pending.push_back(req);
    impl_->poisoned = true;
    impl_->poison_reason = st.message;
    return st;
  };
  if (is_root) {
    a.offer = {static_cast<int64_t>(getpid()), bytes, static_cast<int64_t>(pieces.size()), 0};
    a.offer.offered = pieces.size() <= kMaxRegions && pull_wanted(root);
    a.regions.clear();
    for (const RootPiece& p : pieces) a.regions.push_back({reinterpret_cast<uint64_t>(p.data), p.bytes});
#ifdef PR_SET_PTRACER
    // Under Yama ptrace_scope 1 the receivers need this process's consent (as Open MPI's vader asks).
    if (a.offer.offered) (void)::prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
#endif
  }
  MPI_Request req = MPI_REQUEST_NULL;
  ZR_RETURN_IF_ERROR(mpi_status(MPI_Ibcast(&a.offer, sizeof a.offer, MPI_BYTE, root, impl_->comm, &req),
                                "MPI_Ibcast of the pull offer"));
  if (Status st = wait_request(req, timeout, first); !st.ok()) return fail(req, st);
  const bool offered = a.offer.offered != 0 && a.offer.regions > 0 && a.offer.bytes == bytes;
  if (offered) {  // the region list (the root's is already filled)
    if (!is_root) a.regions.assign(static_cast<size_t>(a.offer.regions), Region{});
    ZR_RETURN_IF_ERROR(mpi_status(MPI_Ibcast(a.regions.data(), static_cast<int>(a.regions.size() * sizeof(Region)),
                                             MPI_BYTE, root, impl_->comm, &req),
                                  "MPI_Ibcast of the pull regions"));
    if (Status st = wait_request(req, timeout, first); !st.ok()) return fail(req, st);
  }
  a.mine = offered && pull_wanted(root);
  if (a.mine && !is_root) {
    uint64_t sum = 0;
    for (const Region& r : a.regions) sum += r.bytes;
    a.mine = sum == bytes && RegionReader(static_cast<pid_t>(a.offer.pid), a.regions).probe();
  }
  ZR_RETURN_IF_ERROR(
      mpi_status(MPI_Iallreduce(&a.mine, &a.all, 1, MPI_INT, MPI_MIN, impl_->comm, &req), "MPI_Iallreduce"));
  if (Status st = wait_request(req, timeout, first); !st.ok()) return fail(req, st);
  return a.all != 0;
}

Status MpiGroup::run_pull(char* data, size_t bytes, int root, size_t bucket_bytes, milliseconds timeout,
                          const SegmentCallback& on_segment, std::span<std::byte> trailer,
                          const SegmentSource& source) {
  const bool is_root = impl_->rank == root;
  const SegmentPlan plan{bytes, bucket_bytes, false};
  const PullAgreement& a = *impl_->agreement;
  BcastPhases ph;
  ph.pull = true;
  const auto t_call = Clock::now();
  // Receiver: both threads pull (copying 4 KiB pages out of another process costs CPU per page,
  // so one thread fell to ~80% of one MPI_Bcast from a trainer's tensors): the helper takes segment
  // after segment, and the caller, whenever the segment it must hand to on_segment next is not
  // pulled yet, takes the next one itself (at most kLookahead ahead, so what it hands on is still
  // in the cache), then runs on_segment in order.
  constexpr size_t kLookahead = 4;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<char> pulled(is_root ? 0 : plan.count(), 0);
  size_t next = 0;  // the next segment nobody took
  bool stop = false;
  Status pull_error;
  std::optional<RegionReader> reader;
  // Pulls segment s (taken under mu); false if this or another pull failed.
  auto pull = [&](size_t s, std::unique_lock<std::mutex>& lk, double& seconds) {
    lk.unlock();
    const auto t = Clock::now();
    Status st = reader->copy(data + plan.offset(s), plan.offset(s), plan.length(s));
    seconds += seconds_since(t);
    lk.lock();
    if (!st.ok() && pull_error.ok()) pull_error = std::move(st);
    stop = stop || !pull_error.ok();
    pulled[s] = pull_error.ok();
    cv.notify_all();
  };
  std::optional<SplitCores> cores;
  std::thread helper;
  if (!is_root) {
    reader.emplace(static_cast<pid_t>(a.offer.pid), a.regions);
    cores.emplace(impl_->on_this_host, impl_->rank, root);
    helper = std::thread([&] {
      cores->place_helper();
      std::unique_lock lk(mu);
      while (!stop && next < plan.count()) pull(next++, lk, ph.post);
    });
  }
  std::unique_ptr<char[]> scratch(source ? new char[plan.segment] : nullptr);  // the root of pieces
  std::exception_ptr thrown;
  for (size_t k = 0; k < plan.count(); ++k) {
    if (!is_root) {
      std::unique_lock lk(mu);
      while (!pulled[k] && !stop) {
        if (next < plan.count() && next <= k + kLookahead) {
          pull(next++, lk, ph.copy_out);
          continue;
        }
        const auto t = Clock::now();
        cv.wait(lk);
        ph.wait += seconds_since(t);
      }
      if (!pulled[k]) break;
    }
    ++ph.segments;
    if (!on_segment) continue;
    const auto t = Clock::now();
    try {
      const size_t off = plan.offset(k), len = plan.length(k);
      on_segment(off, len, data ? data + off : source(off, len, scratch.get()));
    } catch (...) {
      thrown = std::current_exception();
      break;
    }
    ph.on_segment += seconds_since(t);
  }
  if (helper.joinable()) {
    {
      std::lock_guard lk(mu);
      stop = true;
    }
    helper.join();
  }
  cores.reset();
  if (thrown || !pull_error.ok()) {  // out of step with the peers, as the pipeline would be
    ph.total = seconds_since(t_call);
    impl_->phases = ph;
    impl_->poisoned = true;
    impl_->poison_reason = thrown ? "on_segment threw during bcast_buckets" : pull_error.message;
    if (thrown) std::rethrow_exception(thrown);
    return pull_error;
  }
  return finish_pull(*impl_, plan, root, timeout, trailer, t_call, ph);
}

}  // namespace zr
