// MpiGroup::survivors: the broadcast group re-formed over the ranks still alive
// (MPI_Comm_create_group, entered by the members only), bounded by a deadline.
#include <mpi.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "comm/mpi_group_internal.h"

namespace zr {

using namespace mpi_detail;

namespace {

// One MPI_Comm_create_group call, shared between the caller and the helper thread that makes it
// (the helper may outlive a caller that stopped waiting).
struct Creation {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  int rc = MPI_SUCCESS;
  MPI_Comm comm = MPI_COMM_NULL;
  std::vector<char> on_host;
};

void create_group(MPI_Comm parent, std::vector<int> members, int tag, const std::shared_ptr<Creation>& c) {
  MPI_Group all = MPI_GROUP_NULL, sub = MPI_GROUP_NULL;
  MPI_Comm_group(parent, &all);
  MPI_Group_incl(all, static_cast<int>(members.size()), members.data(), &sub);
  MPI_Comm comm = MPI_COMM_NULL;
  int rc = MPI_Comm_create_group(parent, sub, tag, &comm);
  MPI_Group_free(&sub);
  MPI_Group_free(&all);
  std::vector<char> here;
  if (rc == MPI_SUCCESS) {
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    here = ranks_on_this_host(comm);  // collective over the new group: every member is in it
  }
  std::lock_guard lock(c->m);
  c->rc = rc;
  c->comm = comm;
  c->on_host = std::move(here);
  c->done = true;
  c->cv.notify_all();
}

std::string ranks_text(const std::vector<int>& ranks) {
  std::string s = "[";
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s + "]";
}

}  // namespace

uint64_t MpiGroup::survivors_epoch() const { return impl_ ? impl_->survivors_epoch : 0; }

std::vector<int> MpiGroup::world_ranks_of(const std::vector<int>& ranks) const {
  std::vector<int> out(ranks.size(), -1);
  if (!valid()) return out;
  MPI_Group mine = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
  MPI_Comm_group(impl_->comm, &mine);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] < 0 || ranks[i] >= impl_->size) continue;
    MPI_Group_translate_ranks(mine, 1, &ranks[i], world, &out[i]);
  }
  MPI_Group_free(&mine);
  MPI_Group_free(&world);
  return out;
}

Result<MpiGroup*> MpiGroup::survivors(uint64_t epoch, const std::vector<int>& members,
                                      std::chrono::milliseconds timeout) {
  if (!valid()) return make_error(ErrorCode::invalid_argument, "survivors on an invalid MpiGroup");
  Impl& g = *impl_;
  const bool everyone = members.empty() || static_cast<int>(members.size()) == g.size;
  if (epoch == 0) {
    if (!everyone)
      return make_error(ErrorCode::invalid_argument, "group_epoch: 0 is the whole group, but group_ranks lists " +
                                                         std::to_string(members.size()) + " of " +
                                                         std::to_string(g.size) + " ranks");
    return this;
  }
  if (epoch == g.survivors_epoch && g.survivors) {
    if (members != g.survivor_members)
      return make_error(ErrorCode::invalid_argument, "group_ranks: epoch " + std::to_string(epoch) + " was " +
                                                         ranks_text(g.survivor_members) + ", now " +
                                                         ranks_text(members));
    return g.survivors.get();
  }
  if (epoch < g.survivors_epoch)
    return make_error(ErrorCode::invalid_argument,
                      "group_epoch: " + std::to_string(epoch) + " is older than " + std::to_string(g.survivors_epoch));
  for (size_t i = 0; i < members.size(); ++i)
    if (members[i] < 0 || members[i] >= g.size || (i > 0 && members[i] <= members[i - 1]))
      return make_error(
          ErrorCode::invalid_argument,
          "group_ranks: " + ranks_text(members) + " are not increasing ranks of a group of " + std::to_string(g.size));
  if (!std::binary_search(members.begin(), members.end(), g.rank))
    return make_error(ErrorCode::invalid_argument,
                      "group_ranks: " + ranks_text(members) + " leave out this rank (" + std::to_string(g.rank) + ")");
  g.survivors.reset();  // the previous epoch's group: nobody broadcasts on it any more
  auto c = std::make_shared<Creation>();
  // MPI tags are at least 0..32767; epochs wrap (two creations in flight at once never share one).
  const int tag = static_cast<int>(epoch % 32767);
  if (g.level == ThreadLevel::multiple) {
    std::thread(create_group, g.comm, members, tag, c).detach();
  } else {
    create_group(g.comm, members, tag, c);  // a stuck helper would then break the caller's MPI calls
  }
  std::unique_lock lock(c->m);
  if (!c->cv.wait_for(lock, timeout, [&] { return c->done; }))
    return make_error(ErrorCode::timeout, "re-forming the broadcast group (epoch " + std::to_string(epoch) +
                                              ", ranks " + ranks_text(members) + "): not every member entered within " +
                                              std::to_string(timeout.count()) + " ms (did one die meanwhile?)");
  ZR_RETURN_IF_ERROR(mpi_status(c->rc, "MPI_Comm_create_group"));
  auto impl = std::make_unique<Impl>();
  impl->level = g.level;
  impl->world_rank = g.world_rank;
  impl->comm = c->comm;
  MPI_Comm_rank(c->comm, &impl->rank);
  MPI_Comm_size(c->comm, &impl->size);
  impl->on_this_host = std::move(c->on_host);
  g.survivors = std::make_unique<MpiGroup>(MpiGroup(std::move(impl)));
  g.survivors_epoch = epoch;
  g.survivor_members = members;
  return g.survivors.get();
}

}  // namespace zr
