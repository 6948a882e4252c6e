// Trainer: which ranks a broadcast publish goes to. After an engine died (or stopped) the whole
// weight group can never complete a collective again (Open MPI 4.1 has no ULFM), so the trainer
// learns who is alive from its liveness pings over ZeroMQ and re-forms the group over the
// survivors (MpiGroup::survivors), sending the member list with the update (docs/cluster.md,
// Failures).
#include <spdlog/spdlog.h>

#include <algorithm>

#include "actors/trainer.h"
#include "comm/wire_weights.h"

namespace zr {

namespace {

std::string join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

void Trainer::probe_engines() {
  std::vector<std::pair<int, uint64_t>> asked;
  for (int k = 0; k < static_cast<int>(endpoints_.size()); ++k) {
    if (!router_->alive(k)) continue;
    const uint64_t id = next_id_++;
    awaiting_.insert(id);
    router_->call_engine(k, "trainer", "get_weight_version", wire::encode_req_id_only(id), SteadyClock::now());
    asked.emplace_back(k, id);
  }
  // The router declares an engine dead after heartbeat_liveness silent intervals; one more
  // interval of slack, then whatever is still unanswered stays alive (it answers heartbeats late
  // but answers: the broadcast's own deadline covers it).
  const auto window = heartbeat_interval_ * (heartbeat_liveness_ + 1);
  (void)pump(
      [&] {
        return std::all_of(asked.begin(), asked.end(),
                           [&](const auto& a) { return answered(a.second) || !router_->alive(a.first); });
      },
      SteadyClock::now() + window);
  for (const auto& [k, id] : asked) {
    awaiting_.erase(id);
    replies_.erase(id);
  }
}

Status Trainer::choose_broadcast_group(MpiGroup& group, int64_t version) {
  const int engines = static_cast<int>(endpoints_.size());
  const int others = group.size() - 1;
  std::vector<int> dead;
  for (int k = 0; k < engines; ++k)
    if (!router_->alive(k)) dead.push_back(k);
  if (dead.empty() && bcast_epoch_ == 0 && !bcast_failed_ && !group.poisoned()) return {};  // the whole group
  if (engines == 0 || others % engines != 0)
    return make_error(ErrorCode::unavailable, "broadcast: the weight group's " + std::to_string(others) +
                                                  " engine ranks do not split evenly over " + std::to_string(engines) +
                                                  " engines, so the survivors' ranks are unknown");
  const int per_engine = others / engines;
  std::vector<int> members{group.rank()}, left_out;
  for (int k = 0, r = 0; k < engines; ++k)
    for (int i = 0; i < per_engine; ++i, ++r) {
      const int rank = r < group.rank() ? r : r + 1;  // the trainer's rank is not an engine's
      (router_->alive(k) ? members : left_out).push_back(rank);
    }
  std::sort(members.begin(), members.end());
  if (members.size() == 1) return make_error(ErrorCode::unavailable, "broadcast: every engine stopped answering heartbeats");
  if (bcast_epoch_ > 0 && members == bcast_members_ && !bcast_failed_) return {};  // the survivors' group of last time
  ++bcast_epoch_;
  bcast_members_ = members;
  std::vector<std::string> names;
  for (int k : dead) names.push_back(std::to_string(k) + " (" + endpoints_[k] + ")");
  std::string engines_text;
  for (size_t i = 0; i < names.size(); ++i) engines_text += (i ? ", " : "") + names[i];
  spdlog::warn("broadcast v{}: re-forming the broadcast group over {} of {} ranks (epoch {}); left out: rank(s) {} "
               "(world rank(s) {}) of engine(s) {}, which stopped answering heartbeats",
               version, members.size(), group.size(), bcast_epoch_, left_out.empty() ? "none" : join(left_out),
               left_out.empty() ? "none" : join(group.world_ranks_of(left_out)), dead.empty() ? "none" : engines_text);
  return {};
}

}  // namespace zr
