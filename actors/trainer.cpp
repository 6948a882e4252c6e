#include "actors/trainer.h"

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <future>
#include <optional>

#include "actors/engine/weight_staging.h"
#include "comm/checksum.h"
#include "comm/host_pages.h"
#include "comm/phase_probe.h"
#include "comm/shm_segment.h"
#include "comm/shm_stream.h"
#include "comm/wire_codec.h"
#include "comm/wire_weights.h"

namespace zr {

namespace {

using Clock = std::chrono::steady_clock;

const std::string kCaller = "trainer";  // the Trainer's calls, as the embedded router sees them

// The reply to one of the trainer's calls as T, or the error it carried (naming the engine).
template <class T, class F>
Result<T> parse_reply(const Result<RouterMessage>& m, const std::string& engine, F parse) {
  if (!m.ok()) return make_error(m.status().code, "engine " + engine + ": " + m.status().message);
  auto j = wire::unpack_body(m->body);
  if (!j.ok()) return make_error(j.status().code, "engine " + engine + ": " + j.status().message);
  if (m->op == "error") {
    Status st = wire::status_from_error_json(*j);
    return make_error(st.code, "engine " + engine + ": " + st.message);
  }
  return parse(*j);
}

ActorOptions trainer_actor_options() {
  ActorOptions a;
  a.linger_ms = 0;            // what the engines were not sent when the trainer goes is not wanted
  a.any_owner_thread = true;  // Python calls it from whichever thread holds the publisher's lock
  return a;
}

}  // namespace

Trainer::Trainer(Context& ctx, const std::vector<std::string>& endpoints, TrainerOptions opt)
    : endpoints_(endpoints),
      heartbeat_interval_(opt.router.heartbeat_interval),
      heartbeat_liveness_(opt.router.heartbeat_liveness),
      actor_(ctx, kCaller, trainer_actor_options()),
      router_(endpoints, opt.router, actor_.now()),
      driver_(actor_, router_, opt.router.heartbeat_interval, [this](RouterMessage& m) { on_answer(m); }),
      last_pump_(actor_.now()),
      shm_in_use_(endpoints.size()) {}

Trainer::~Trainer() = default;

Result<std::unique_ptr<Trainer>> Trainer::connect(Context& ctx, const std::vector<std::string>& endpoints,
                                                  TrainerOptions opt) {
  if (endpoints.empty()) return make_error(ErrorCode::invalid_argument, "engines: give at least one endpoint");
  auto curve_for = opt.curve_for;
  auto t = std::unique_ptr<Trainer>(new Trainer(ctx, endpoints, std::move(opt)));
  ZR_RETURN_IF_ERROR(t->driver_.connect(endpoints, curve_for));
  return t;
}

// ---- the embedded router

void Trainer::on_answer(RouterMessage& m) {
  const uint64_t id = wire::peek_req_id(m.body);
  if (m.op != "generate.chunk" && awaiting_.erase(id)) replies_[id] = std::move(m);
}

Status Trainer::pump(const std::function<bool()>& done, SteadyClock::time_point deadline) {
  auto now = actor_.now();
  if (now - last_pump_ > heartbeat_interval_) router_.restart_heartbeats(now);
  flush();
  while (!done()) {
    now = actor_.now();
    if (now >= deadline) {
      last_pump_ = now;
      return make_error(ErrorCode::timeout, "no reply before the deadline");
    }
    actor_.run_once(std::clamp(std::chrono::ceil<Millis>(deadline - now), Millis{0}, Millis{1000}));
  }
  last_pump_ = actor_.now();
  return {};
}

Result<RouterMessage> Trainer::call(int engine, const std::string& op, std::string body, uint64_t req_id,
                                    std::chrono::milliseconds timeout) {
  awaiting_.insert(req_id);
  if (engine < 0) router_.on_call(kCaller, op, std::move(body), SteadyClock::now());
  else router_.call_engine(engine, kCaller, op, std::move(body), SteadyClock::now());
  Status st = pump([&] { return answered(req_id); }, SteadyClock::now() + timeout);
  if (!st.ok()) {
    awaiting_.erase(req_id);
    return make_error(st.code, op + ": no reply within " + std::to_string(timeout.count()) + " ms");
  }
  RouterMessage m = std::move(replies_.at(req_id));
  replies_.erase(req_id);
  return m;
}

// ---- weights

std::vector<std::pair<int, uint64_t>> Trainer::start_update(UpdateWeightsCall call, PublishResult& res,
                                                            const std::vector<int>* only) {
  std::vector<std::pair<int, uint64_t>> sent;
  for (int k = 0; k < static_cast<int>(endpoints_.size()); ++k) {
    if (only && std::find(only->begin(), only->end(), k) == only->end()) continue;
    if (!router_.alive(k)) {
      spdlog::warn("publish v{}: skipping engine {} ({}): it stopped answering heartbeats", call.version, k,
                   endpoints_[k]);
      res.dead.push_back(k);
      continue;
    }
    call.req_id = next_id_++;
    awaiting_.insert(call.req_id);
    router_.call_engine(k, kCaller, "update_weights", wire::encode(call), SteadyClock::now());
    sent.emplace_back(k, call.req_id);
  }
  return sent;
}

Status Trainer::collect_acks(const std::vector<std::pair<int, uint64_t>>& sent, SteadyClock::time_point deadline,
                             PublishResult& res, std::vector<std::pair<int, Status>>* refused) {
  (void)pump([&] { return std::all_of(sent.begin(), sent.end(), [&](auto& s) { return answered(s.second); }); },
             deadline);
  phase_mark("trainer: last ack received");
  Status first_error;
  for (const auto& [k, id] : sent) {
    auto it = replies_.find(id);
    Result<RouterMessage> m = it != replies_.end()
                                  ? Result<RouterMessage>(std::move(it->second))
                                  : Result<RouterMessage>(make_error(ErrorCode::timeout, "no ack before the deadline"));
    if (it != replies_.end()) replies_.erase(it);
    awaiting_.erase(id);
    auto ack = parse_reply<UpdateWeightsReply>(m, endpoints_[k], wire::update_weights_reply_from_json);
    if (ack.ok()) {
      res.bytes = std::max(res.bytes, ack->bytes);
      res.acks.push_back(*ack);
      res.acked.push_back(k);
    } else if (!router_.alive(k)) {  // died during the publish: dropped, like an engine dead before it
      spdlog::warn("publish v{}: engine {} ({}) stopped answering heartbeats before it acked", res.version, k,
                   endpoints_[k]);
      res.dead.push_back(k);
    } else {
      if (refused) refused->emplace_back(k, ack.status());
      if (first_error.ok()) first_error = ack.status();
    }
  }
  if (!first_error.ok()) return first_error;
  if (res.acks.empty()) return make_error(ErrorCode::unavailable, "publish: no live engine acked");
  return {};
}

Result<PublishResult> Trainer::send_update(UpdateWeightsCall call, std::chrono::milliseconds timeout) {
  auto t0 = Clock::now();
  PublishResult res;
  res.version = call.version;
  auto sent = start_update(std::move(call), res);
  if (sent.empty()) return make_error(ErrorCode::unavailable, "publish: every engine stopped answering heartbeats");
  ZR_RETURN_IF_ERROR(collect_acks(sent, SteadyClock::now() + timeout, res));
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return res;
}

// The fields every update of a publish carries.
UpdateWeightsCall Trainer::base_call(WeightPath path, int64_t version, const PublishOptions& opt) {
  UpdateWeightsCall call;
  call.version = version;
  call.path = path;
  call.in_flight = opt.in_flight;
  call.flush_cache = opt.flush_cache;
  call.bucket_bytes = opt.bucket_bytes;
  return call;
}

// ipc: each engine gets the transfer by pull or through a segment (IpcMode); see publish().
Result<PublishResult> Trainer::publish_ipc(Layout& l, int64_t version, const PublishOptions& opt) {
  PublishResult res;
  res.version = version;
  std::vector<int> to;
  for (int k = 0; k < static_cast<int>(endpoints_.size()); ++k) {
    if (router_.alive(k)) {
      to.push_back(k);
      continue;
    }
    spdlog::warn("publish v{}: skipping engine {} ({}): it stopped answering heartbeats", version, k, endpoints_[k]);
    res.dead.push_back(k);  // left out, and said so (as start_update does for the other paths)
  }
  refresh_guessed_in_use();
  phase_mark("trainer: publish_ipc start");
  const auto t0 = Clock::now();
  std::vector<int> segment_to = to;
  if (resolve_ipc_mode(opt.ipc_mode) == IpcMode::pull) {
    std::vector<int> pullers, cannot;
    segment_to.clear();
    for (int k : to) (no_pull_.count(k) ? segment_to : pullers).push_back(k);
    if (!pullers.empty()) {
      const auto deadline = SteadyClock::now() + opt.timeout;
      ZR_RETURN_IF_ERROR(push_pull(l, base_call(WeightPath::ipc, version, opt), pullers, deadline, res, &cannot));
      res.ipc_mode = "pull";
    }
    for (int k : cannot) {
      spdlog::warn(
          "publish v{}: engine {} ({}) cannot pull from this trainer; it gets shared-memory segments from now on",
          version, k, endpoints_[k]);
      no_pull_.insert(k);
      segment_to.push_back(k);
    }
  }
  if (!segment_to.empty()) {
    ZR_RETURN_IF_ERROR(publish_segment(l, version, opt, segment_to, res));
    res.ipc_mode = res.ipc_mode.empty() ? "segment" : "pull+segment";
  }
  if (res.acks.empty()) return make_error(ErrorCode::unavailable, "publish: no live engine acked");
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  phase_mark("trainer: publish_ipc end");
  res.tensors = l.metas;
  return res;
}

IpcMode Trainer::resolve_ipc_mode(IpcMode asked) {
  IpcMode mode = asked;
  std::string why = "asked for (PublishOptions::ipc_mode)";
  if (const char* env = std::getenv("ZR_IPC_MODE"); env && asked == IpcMode::automatic) {
    const std::string e = env;
    if (e == "pull" || e == "segment") {
      mode = e == "pull" ? IpcMode::pull : IpcMode::segment;
      why = "ZR_IPC_MODE=" + e;
    }
  }
  if (mode == IpcMode::automatic) {
    // Measured on a host with shmem THP never (README, weight sync): there a segment runs in 4 KiB
    // pages, and its first pushes fault ~900 MB of fresh shared memory (~30x one memcpy), while a
    // pull copies the caller's tensors straight into staging buffers the engine backed ahead of
    // need (first push ~7x, steady state no slower). Where shmem THP is on, segments get 2 MiB
    // pages and engines serve from them in place, without a copy.
    const std::string shmem = thp_setting("shmem_enabled");
    const bool huge_segments = shmem_thp_available() && huge_pages_wanted();
    mode = huge_segments ? IpcMode::segment : IpcMode::pull;
    why = huge_segments ? "shmem THP is [" + shmem + "]: segments get 2 MiB pages and engines serve from them in place"
                        : "shmem THP is [" + shmem +
                              "]: segments would run in 4 KiB pages (a new one costs ~30x one memcpy; "
                              "shmem_enabled=advise fixes that); engines copy the tensors with process_vm_readv "
                              "(an engine that may not gets segments)";
  }
  const std::string line = std::string(mode == IpcMode::pull ? "pull" : "segment") + ": " + why;
  if (line != ipc_mode_logged_) {
    spdlog::info("ipc weight path: {}", line);
    ipc_mode_logged_ = line;
  }
  return mode;
}

Status Trainer::push_pull(Layout& l, const UpdateWeightsCall& base, const std::vector<int>& to,
                          SteadyClock::time_point deadline, PublishResult& res, std::vector<int>* cannot) {
  // The engines copy each tensor straight from where the caller holds it (pull_addrs), so no
  // transfer buffer is filled here: a first push faults no fresh memory on this side (on this
  // kind of host that cost ~1 s for 438 MB). pull_buf_ holds only the header: the version and the
  // checksums, which this thread computes while the engines copy.
  const uint64_t offset = shm_stream_offset(l.metas.size());
  ZR_RETURN_IF_ERROR(pull_buf_.reserve(offset));
  UpdateWeightsCall call = base;
  call.tensors = l.metas;
  call.shm_bytes = l.bytes;
  call.shm_offset = offset;
  call.shm_stream = true;  // the engines wait for the checksums through the header
  call.pull_pid = static_cast<int64_t>(::getpid());
  call.pull_addr = reinterpret_cast<uint64_t>(pull_buf_.data());
  for (const void* src : l.src) call.pull_addrs.push_back(reinterpret_cast<uint64_t>(src));
  for (const PooledSegment& q : shm_pool_) call.shm_pool.push_back(q.seg.name());
  ShmStreamWriter writer(pull_buf_.data(), offset, call.version);
  const size_t acks_before = res.acks.size();
  auto sent = start_update(std::move(call), res, &to);
  if (sent.empty()) return {};                          // every one dead: res.dead says so
  (void)pump([] { return true; }, SteadyClock::now());  // the message goes out before the bytes
  const auto t0 = Clock::now();
  {
    PhaseProbe probe("trainer: checksum the tensors the engines pull");
    l.checksum(1);  // one core: the engines' copies run on the others
    for (size_t i = 0; i < l.metas.size(); ++i) writer.mark(i, l.metas[i], l.metas[i].checksum);
  }
  res.write_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<std::pair<int, Status>> refused;
  Status st = collect_acks(sent, deadline, res, &refused);
  // smaps costs 16-48 ms to read: once per place the tensors live (a kept archive stays put)
  if (pull_pages_src_ != l.src[0]) {
    pull_pages_ = mapping_pages(l.src[0]).describe() + " (the caller's tensors, pulled in place)";
    pull_pages_src_ = l.src[0];
  }
  res.pages = pull_pages_;
  for (size_t i = acks_before; i < res.acks.size(); ++i) {  // they serve from their own copy now
    shm_in_use_[res.acked[i]] = std::set<std::string>(res.acks[i].shm_in_use.begin(), res.acks[i].shm_in_use.end());
    in_use_guessed_.erase(res.acked[i]);
  }
  bool other = false;
  for (const auto& [k, e] : refused) {
    if (e.code == ErrorCode::unsupported && e.message.find("ipc pull") != std::string::npos) cannot->push_back(k);
    else other = true;
  }
  return other || cannot->size() != refused.size() ? st : Status{};
}

// Lays the tensors out in one shared-memory segment, checksums them, and sends only the segment's
// name and the tensor list; engines map it and serve from it in place.
Status Trainer::publish_segment(Layout& l, int64_t version, const PublishOptions& opt, const std::vector<int>& to,
                                PublishResult& res) {
  bool reused = false;
  const uint64_t need = shm_stream_offset(l.metas.size()) + l.bytes;
  auto idx = segment_for(need, to, opt.reuse_segments, version, &reused);
  if (!idx.ok()) return idx.status();
  const auto deadline = SteadyClock::now() + opt.timeout;
  res.shm_segment = shm_pool_[*idx].seg.name();
  res.shm_reused = reused;
  UpdateWeightsCall base = base_call(WeightPath::ipc, version, opt);
  std::vector<std::pair<int, Status>> refused;
  Status st = push_segment(*idx, l, base, &to, deadline, res, refused);  // dead engines go to res.dead
  // An engine without the kept mapping (it restarted) cannot reach a reused segment by its name:
  // send those engines the same version in a fresh segment.
  std::vector<int> lost;
  for (const auto& [k, e] : refused)
    if (reused && e.code == ErrorCode::not_found) lost.push_back(k);
  if (!lost.empty() && lost.size() == refused.size()) {
    for (int k : lost) {
      spdlog::warn("publish v{}: engine {} ({}) no longer maps segment {}: sending it a fresh one", version, k,
                   endpoints_[k], res.shm_segment);
      for (auto& p : shm_pool_) p.mapped_by.erase(k);
    }
    bool again = false;
    auto fresh = segment_for(need, lost, /*reuse=*/false, version, &again);
    if (!fresh.ok()) return fresh.status();
    refused.clear();
    res.shm_segment = shm_pool_[*fresh].seg.name();
    res.shm_reused = false;
    st = push_segment(*fresh, l, base, &lost, deadline, res, refused);
  }
  // Keep every segment an engine serves from, and one idle one (the largest) for the next publish.
  const PooledSegment* spare = nullptr;
  for (const PooledSegment& p : shm_pool_)
    if (!segment_in_use(p.seg.name()) && (!spare || p.seg.size() > spare->seg.size())) spare = &p;
  std::erase_if(shm_pool_, [&](const PooledSegment& p) { return &p != spare && !segment_in_use(p.seg.name()); });
  return st;
}

bool Trainer::segment_in_use(const std::string& name) const {
  return std::any_of(shm_in_use_.begin(), shm_in_use_.end(), [&](const auto& s) { return s.count(name) > 0; });
}

Result<size_t> Trainer::segment_for(uint64_t bytes, const std::vector<int>& to, bool reuse, int64_t version,
                                    bool* reused) {
  std::optional<size_t> best;
  for (size_t i = 0; reuse && i < shm_pool_.size(); ++i) {
    const PooledSegment& p = shm_pool_[i];
    bool mapped = std::all_of(to.begin(), to.end(), [&](int k) { return p.mapped_by.count(k) > 0; });
    if (p.seg.size() >= bytes && mapped && !segment_in_use(p.seg.name()) &&
        (!best || p.seg.size() < shm_pool_[*best].seg.size()))
      best = i;
  }
  *reused = best.has_value();
  if (best) return *best;
  auto seg = ShmSegment::create("zrollout-w" + std::to_string(version), bytes);
  if (!seg.ok()) return seg.status();
  shm_pool_.push_back(PooledSegment{std::move(seg).value(), {}, {}});
  return shm_pool_.size() - 1;
}

Status Trainer::push_segment(size_t idx, Layout& l, const UpdateWeightsCall& base, const std::vector<int>* to,
                             SteadyClock::time_point deadline, PublishResult& res,
                             std::vector<std::pair<int, Status>>& refused) {
  PooledSegment& p = shm_pool_[idx];
  UpdateWeightsCall call = base;
  call.tensors = l.metas;
  call.shm_name = p.seg.name();
  call.shm_bytes = l.bytes;
  call.shm_offset = shm_stream_offset(l.metas.size());
  call.shm_stream = true;  // the engines verify behind the writer (comm/shm_stream.h)
  call.shm_keep = true;
  for (const PooledSegment& q : shm_pool_) call.shm_pool.push_back(q.seg.name());
  auto* seg = static_cast<uint8_t*>(p.seg.data());
  ShmStreamWriter writer(seg, call.shm_offset, call.version);
  const size_t acks_before = res.acks.size();
  phase_mark("trainer: segment header ready");
  auto sent = start_update(std::move(call), res, to);
  if (sent.empty()) {
    (void)p.seg.unlink();
    return make_error(ErrorCode::unavailable, "publish: every engine stopped answering heartbeats");
  }
  (void)pump([] { return true; }, SteadyClock::now());  // the message goes out before the bytes
  phase_mark("trainer: update_weights sent");
  const auto t0 = Clock::now();
  // The checksums reach the engines through the segment's header; they are kept in the layout so
  // that a resend of this version (below, in publish_ipc) carries them in the message too.
  {
    PhaseProbe probe("trainer: copy + checksum into the segment");
    for (size_t i = 0; i < l.metas.size(); ++i)
      l.metas[i].checksum = writer.write(i, l.metas[i], l.src[i], l.claimed[i]);
  }
  phase_mark("trainer: segment written");
  res.write_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  Status st = collect_acks(sent, deadline, res, &refused);
  (void)p.seg.unlink();  // every engine has mapped it (or failed); mappings outlive the name
  if (p.pages.empty()) p.pages = mapping_pages(seg).describe();
  res.pages = p.pages;
  std::set<int> acked;
  for (size_t i = acks_before; i < res.acks.size(); ++i) {
    const int k = res.acked[i];
    shm_in_use_[k] = std::set<std::string>(res.acks[i].shm_in_use.begin(), res.acks[i].shm_in_use.end());
    in_use_guessed_.erase(k);
    p.mapped_by.insert(k);
    acked.insert(k);
  }
  // Every engine that did not ack (refused, timed out, lost) may serve from the segment all the
  // same: one that commits after the deadline, or a router whose other engines committed. Kept
  // as in use until that engine's next ack, or its get_weight_version before the next publish
  // (refresh_guessed_in_use), says otherwise.
  for (const auto& [k, id] : sent)
    if (!acked.count(k)) {
      shm_in_use_[k].insert(p.seg.name());
      in_use_guessed_.insert(k);
    }
  return st;
}

void Trainer::refresh_guessed_in_use() {
  for (int k : std::vector<int>(in_use_guessed_.begin(), in_use_guessed_.end())) {
    if (!router_.alive(k)) continue;
    const uint64_t id = next_id_++;
    auto m = call(k, "get_weight_version", wire::encode_req_id_only(id), id, std::chrono::seconds(5));
    auto r = parse_reply<WeightVersionReply>(m, endpoints_[k], wire::weight_version_reply_from_json);
    if (!r.ok()) {  // keep the guess: the segments stay held until the engine answers
      spdlog::debug("engine {} ({}): cannot tell which segments it serves from: {}", k, endpoints_[k],
                    r.status().to_string());
      continue;
    }
    shm_in_use_[k] = std::set<std::string>(r->shm_in_use.begin(), r->shm_in_use.end());
    in_use_guessed_.erase(k);
  }
}

Result<std::vector<SampleOutput>> Trainer::generate(const std::vector<GenerateRequest>& reqs,
                                                    std::chrono::milliseconds timeout) {
  std::vector<uint64_t> ids;
  for (const GenerateRequest& r : reqs) {
    const uint64_t id = next_id_++;
    awaiting_.insert(id);
    router_.on_call(kCaller, "generate", wire::encode(GenerateCall{id, {r}}), SteadyClock::now());
    ids.push_back(id);
  }
  Status st = pump([&] { return std::all_of(ids.begin(), ids.end(), [&](uint64_t id) { return answered(id); }); },
                   SteadyClock::now() + timeout);
  std::vector<SampleOutput> out;
  Status first;
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = replies_.find(ids[i]);
    if (it == replies_.end()) {
      awaiting_.erase(ids[i]);
      if (first.ok())
        first =
            make_error(st.code, "rid " + reqs[i].rid + ": no reply within " + std::to_string(timeout.count()) + " ms");
      continue;
    }
    RouterMessage m = std::move(it->second);
    replies_.erase(it);
    auto j = wire::unpack_body(m.body);
    Result<GenerateReply> r = !j.ok()           ? Result<GenerateReply>(j.status())
                              : m.op == "error" ? Result<GenerateReply>(wire::status_from_error_json(*j))
                                                : wire::generate_reply_from_json(*j);
    if (!r.ok()) {
      if (first.ok()) first = make_error(r.status().code, "rid " + reqs[i].rid + ": " + r.status().message);
      continue;
    }
    for (auto& o : r->outputs) out.push_back(std::move(o));
  }
  if (!first.ok()) {  // what is still running is not wanted any more
    if (!st.ok())
      router_.on_call(kCaller, "abort", wire::encode(AbortCall{next_id_++, "", "", true}), SteadyClock::now());
    flush();
    return first;
  }
  return out;
}

Result<int64_t> Trainer::weight_version(int engine) {
  if (engine < 0 || engine >= static_cast<int>(endpoints_.size()))
    return make_error(ErrorCode::invalid_argument, "engine: no engine " + std::to_string(engine));
  const uint64_t id = next_id_++;
  auto m = call(engine, "get_weight_version", wire::encode_req_id_only(id), id, std::chrono::seconds(30));
  auto r = parse_reply<WeightVersionReply>(m, endpoints_[engine], wire::weight_version_reply_from_json);
  if (!r.ok()) return r.status();
  return r->version;
}

Result<ModelInfoReply> Trainer::model_info(int engine) {
  const uint64_t id = next_id_++;
  auto m = call(engine, "get_model_info", wire::encode_req_id_only(id), id, std::chrono::seconds(30));
  return parse_reply<ModelInfoReply>(m, endpoints_[engine], wire::model_info_reply_from_json);
}

Status Trainer::shutdown_engines() {
  std::vector<std::pair<int, uint64_t>> sent;
  for (int k = 0; k < static_cast<int>(endpoints_.size()); ++k) {
    if (!router_.alive(k)) {
      spdlog::warn("shutdown: skipping engine {} ({}): it stopped answering heartbeats", k, endpoints_[k]);
      continue;
    }
    const uint64_t id = next_id_++;
    awaiting_.insert(id);
    router_.call_engine(k, kCaller, "shutdown", wire::encode_req_id_only(id), SteadyClock::now());
    sent.emplace_back(k, id);
  }
  (void)pump([&] { return std::all_of(sent.begin(), sent.end(), [&](auto& s) { return answered(s.second); }); },
             SteadyClock::now() + std::chrono::seconds(30));
  Status first;
  for (const auto& [k, id] : sent) {
    auto it = replies_.find(id);
    Result<RouterMessage> m = it != replies_.end() ? Result<RouterMessage>(std::move(it->second))
                                                   : Result<RouterMessage>(make_error(ErrorCode::timeout, "no reply"));
    if (it != replies_.end()) replies_.erase(it);
    awaiting_.erase(id);
    auto r = parse_reply<bool>(m, endpoints_[k], [](const nlohmann::json&) -> Result<bool> { return true; });
    if (!r.ok() && first.ok()) first = r.status();
  }
  return first;
}

}  // namespace zr
