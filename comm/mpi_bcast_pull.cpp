// MpiGroup::bcast_buckets, pull form: when the root and its one receiver share a host, the
// receiver copies the transfer straight out of the root's buffer with process_vm_readv (one copy,
// as Open MPI's single-copy CMA transport does inside MPI_Bcast) on a helper thread, while its
// calling thread runs on_segment over each segment just copied (still in the cache). No MPI call
// per segment, no ring, no second copy: the receive costs what one MPI_Bcast costs, and the
// checksums run beside it on the other core.
//
// Opt-in (ReceiveMode::pull on every rank). Every rank agrees on the form first (two small
// collectives, bounded by the timeout): the root offers its pid and buffer address, each receiver
// says whether it wants and may pull (probe read), and the minimum decides. Not offered:
// bcast_buckets_from (the root's bytes are pieces), groups spanning hosts or with more than one
// receiver per two cores (use_ring), ZR_NO_BCAST_PULL set on any rank. After the pull, the trailer (if any) goes as one
// MPI_Ibcast and an MPI_Ibarrier tells the root the receivers are done with its buffer.
#include <spdlog/spdlog.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

#include "comm/mpi_group.h"
#include "comm/mpi_group_internal.h"

namespace zr {

using namespace mpi_detail;

namespace {

// What the root offers (one MPI_Ibcast of this struct as bytes).
struct PullOffer {
  int64_t pid = 0;
  uint64_t addr = 0;
  uint64_t bytes = 0;
  int64_t offered = 0;
};

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

}  // namespace

bool MpiGroup::pull_wanted(int root) const {
  if (pull_disabled_here() || impl_->receive_mode != ReceiveMode::pull) return false;
  for (char here : impl_->on_this_host)
    if (!here) return false;
  return impl_->rank == root || use_ring(impl_->on_this_host, root);
}

Result<bool> MpiGroup::agree_on_pull(char* data, size_t bytes, int root, milliseconds timeout, uint64_t* root_pid,
                                     uint64_t* root_addr) {
  const bool is_root = impl_->rank == root;
  PullOffer offer;
  if (is_root)
    offer = {static_cast<int64_t>(getpid()), reinterpret_cast<uint64_t>(data), bytes,
             data != nullptr && pull_wanted(root)};
  MPI_Request req = MPI_REQUEST_NULL;
  ZR_RETURN_IF_ERROR(mpi_status(MPI_Ibcast(&offer, sizeof offer, MPI_BYTE, root, impl_->comm, &req), "MPI_Ibcast"));
  Status st = wait_request(req, timeout, "the broadcast's pull offer from rank " + std::to_string(root));
  if (!st.ok()) {
    impl_->pending.push_back(req);
    impl_->poisoned = true;
    impl_->poison_reason = st.message;
    return st;
  }
  int mine = offer.offered != 0 && offer.bytes == bytes && pull_wanted(root);
  if (mine && !is_root) {
    char probe = 0;  // may this process read the root's memory?
    mine = pull_bytes(static_cast<pid_t>(offer.pid), &probe, offer.addr, 1).ok();
  }
  int all = 0;
  ZR_RETURN_IF_ERROR(mpi_status(MPI_Iallreduce(&mine, &all, 1, MPI_INT, MPI_MIN, impl_->comm, &req), "MPI_Iallreduce"));
  st = wait_request(req, timeout, "the broadcast's pull agreement");
  if (!st.ok()) {
    impl_->pending.push_back(req);
    impl_->poisoned = true;
    impl_->poison_reason = st.message;
    return st;
  }
  *root_pid = static_cast<uint64_t>(offer.pid);
  *root_addr = offer.addr;
  return all != 0;
}

Status MpiGroup::run_pull(char* data, size_t bytes, int root, size_t bucket_bytes, milliseconds timeout,
                          const SegmentCallback& on_segment, std::span<std::byte> trailer, uint64_t root_pid,
                          uint64_t root_addr) {
  const bool is_root = impl_->rank == root;
  const SegmentPlan plan{bytes, bucket_bytes, false};
  BcastPhases ph;
  ph.pull = true;
  const auto t_call = Clock::now();
  // Receiver: the helper pulls segment after segment into `data`; `pulled` counts them.
  std::mutex mu;
  std::condition_variable cv;
  size_t pulled = 0;
  bool stop = false;
  Status pull_error;
  std::optional<SplitCores> cores;
  std::thread helper;
  if (!is_root) {
    cores.emplace(impl_->on_this_host, impl_->rank, root);
    helper = std::thread([&] {
      cores->place_helper();
      for (size_t k = 0; k < plan.count(); ++k) {
        const auto t = Clock::now();
        Status s =
            pull_bytes(static_cast<pid_t>(root_pid), data + plan.offset(k), root_addr + plan.offset(k), plan.length(k));
        ph.post += seconds_since(t);
        std::lock_guard lk(mu);
        if (!s.ok()) pull_error = std::move(s);
        if (!s.ok() || stop) break;
        pulled = k + 1;
        cv.notify_all();
      }
      std::lock_guard lk(mu);
      stop = true;
      cv.notify_all();
    });
  }
  std::exception_ptr thrown;
  for (size_t k = 0; k < plan.count(); ++k) {
    if (!is_root) {
      auto t = Clock::now();
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return pulled > k || stop; });
      if (pulled <= k) break;
      ph.wait += seconds_since(t);
    }
    ++ph.segments;
    if (!on_segment) continue;
    const auto t = Clock::now();
    try {
      on_segment(plan.offset(k), plan.length(k), data + plan.offset(k));
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
  // The trailer, then a barrier: the root's buffer stays untouched until every receiver is done.
  Status st = Status::ok_status();
  MPI_Request req = MPI_REQUEST_NULL;
  if (!trailer.empty()) {
    st = mpi_status(MPI_Ibcast(trailer.data(), static_cast<int>(trailer.size()), MPI_BYTE, root, impl_->comm, &req),
                    "MPI_Ibcast of the trailer");
    if (st.ok())
      st = wait_request(
          req, timeout,
          "broadcast of the trailer (" + std::to_string(trailer.size()) + " bytes) from rank " + std::to_string(root));
  }
  if (st.ok()) {
    st = mpi_status(MPI_Ibarrier(impl_->comm, &req), "MPI_Ibarrier");
    if (st.ok())
      st = wait_request(req, timeout, "the receivers' end of the pulled broadcast",
                        is_root ? std::chrono::microseconds(200) : std::chrono::microseconds(0));
  }
  ph.total = seconds_since(t_call);
  impl_->phases = ph;
  if (!st.ok()) {
    if (req != MPI_REQUEST_NULL) impl_->pending.push_back(req);
    impl_->poisoned = true;
    impl_->poison_reason = st.message;
  }
  return st;
}

}  // namespace zr
