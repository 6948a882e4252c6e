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
    if (!router_.alive(k)) continue;
    const uint64_t id = next_id_++;
    awaiting_.insert(id);
    router_.call_engine(k, "trainer", "get_weight_version", wire::encode_req_id_only(id), SteadyClock::now());
    asked.emplace_back(k, id);
  }
  // The router declares an engine dead after heartbeat_liveness silent intervals from the last
  // message it heard. Wait for each engine's answer or that verdict; the cap is a second liveness
  // window, so a trainer that was starved of CPU (the verdict is reached at its next tick) still
  // hears it. Whatever is silent past the cap stays alive (it answers heartbeats, late): the
  // broadcast's own deadline covers it.
  const auto t0 = SteadyClock::now();
  const auto window = heartbeat_interval_ * (2 * heartbeat_liveness_);
  (void)pump(
      [&] {
        return std::all_of(asked.begin(), asked.end(),
                           [&](const auto& a) { return answered(a.second) || !router_.alive(a.first); });
      },
      t0 + window);
  const double waited = std::chrono::duration<double>(SteadyClock::now() - t0).count();
  for (const auto& [k, id] : asked)
    if (!answered(id))
      spdlog::log(router_.alive(k) ? spdlog::level::warn : spdlog::level::info,
                  "broadcast probe: engine {} ({}) did not answer get_weight_version within {:.2f} s: {}", k,
                  endpoints_[k], waited,
                  router_.alive(k) ? "still alive for its heartbeats, kept in the group" : "declared dead");
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
    if (!router_.alive(k)) dead.push_back(k);
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
      (router_.alive(k) ? members : left_out).push_back(rank);
    }
  std::sort(members.begin(), members.end());
  if (members.size() == 1)
    return make_error(ErrorCode::unavailable, "broadcast: every engine stopped answering heartbeats");
  if (bcast_epoch_ > 0 && members == bcast_members_ && !bcast_failed_) return {};  // the survivors' group of last time
  ++bcast_epoch_;
  bcast_members_ = members;
  std::vector<std::string> names;
  for (int k : dead) names.push_back(std::to_string(k) + " (" + endpoints_[k] + ")");
  std::string engines_text;
  for (size_t i = 0; i < names.size(); ++i) engines_text += (i ? ", " : "") + names[i];
  spdlog::warn(
      "broadcast v{}: re-forming the broadcast group over {} of {} ranks (epoch {}); left out: rank(s) {} "
      "(world rank(s) {}) of engine(s) {}, which stopped answering heartbeats",
      version, members.size(), group.size(), bcast_epoch_, left_out.empty() ? "none" : join(left_out),
      left_out.empty() ? "none" : join(group.world_ranks_of(left_out)), dead.empty() ? "none" : engines_text);
  return {};
}

}  // namespace zr
