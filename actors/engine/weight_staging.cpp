#include "actors/engine/weight_staging.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "comm/checksum.h"
#include "comm/host_pages.h"
#include "comm/ipc_pull.h"
#include "comm/phase_probe.h"
#include "comm/shm_segment.h"
#include "comm/shm_stream.h"
#include "model/safetensors.h"

namespace zr {

namespace {

// Staging runs beside generation on the same cores: below the compute threads' priority, so a
// push slows decoding as little as possible (the commit itself is a pointer swap).
void lower_priority() { setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10); }

// Runs a stage on its own thread at that priority, then builds its packs; src.on_done is called as
// it finishes. `current` (the serving weights) must not change until the future is ready.
// f(streamed) stages; it may set `streamed` to the packer that packed its bytes as they arrived
// (the packs it built are taken by the staged version, or go back to the pool with it).
template <class F>
std::future<Result<StagedWeights>> run_staging(const StageSources& src, const ModelWeights* current, F f) {
  return std::async(std::launch::async, [f = std::move(f), src, current]() mutable {
    struct Notify {  // also when f throws: the future then holds the exception
      const std::function<void()>& fn;
      ~Notify() {
        if (fn) fn();
      }
    } notify{src.on_done};
    lower_priority();
    std::unique_ptr<StreamingPacker> streamed;
    Result<StagedWeights> r = f(streamed);
    if (r.ok()) build_staged_packs(src.build_packs, *current, *r, streamed.get());
    return r;
  });
}

// A packer for the matmul weights of this transfer (null when staging builds no packs).
std::unique_ptr<StreamingPacker> stream_packer(const StageSources& src, const ModelWeights& current,
                                               const std::vector<TensorMeta>& metas) {
  if (!src.build_packs) return nullptr;
  std::vector<StreamedTensor> tensors;
  tensors.reserve(metas.size());
  for (const TensorMeta& m : metas)  // validated: every dtype is known
    tensors.push_back({m.name, dtype_from_name(m.dtype).value_or(DType::f16), m.shape, m.offset});
  return src.build_packs.streaming(current, std::move(tensors));
}

// Bytes of tensor i to take at a time: ~`target`, whole groups of rows where it is packed.
uint64_t piece_of(const StreamingPacker* packer, size_t i, uint64_t target) {
  return packer ? packer->piece_bytes(i, target) : target;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

const TensorSpec* spec_of(const ModelWeights& w, const std::string& name) {
  for (const TensorSpec& s : w.specs())
    if (s.name == name) return &s;
  return nullptr;
}

// The served tensor has a dtype to convert to: it is loaded, or released (release_memory keeps dtype
// and shape, so an update that arrives while released converts like any other).
bool serves_dtype(const Weight* cur) { return cur && (cur->data || !cur->shape.empty()); }

// Copies `w` into a heap buffer of dtype `want` (bf16 <-> f32).
Weight convert(const Weight& w, DType want) {
  size_t n = w.nbytes() / dtype_size(w.dtype);
  auto buf = std::shared_ptr<uint8_t[]>(new uint8_t[n * dtype_size(want)]);
  if (want == DType::f32) {
    float* out = reinterpret_cast<float*>(buf.get());
    for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(w.bf16()[i]);
  } else {
    uint16_t* out = reinterpret_cast<uint16_t*>(buf.get());
    for (size_t i = 0; i < n; ++i) out[i] = f32_to_bf16(w.f32()[i]);
  }
  Weight c;
  c.dtype = want;
  c.shape = w.shape;
  c.data = buf.get();
  c.owner = std::shared_ptr<const void>(buf, buf.get());
  return c;
}

// The tensors rank share.rank of share.size verifies: byte-balanced, tensor i goes to the rank its
// middle falls in.
std::vector<bool> my_share(const std::vector<TensorMeta>& metas, TpShard share) {
  std::vector<bool> mine(metas.size());
  uint64_t total = 0;
  for (const TensorMeta& m : metas) total += m.nbytes;
  uint64_t before = 0;
  for (size_t i = 0; i < metas.size(); ++i) {
    uint64_t mid = before + metas[i].nbytes / 2;
    int owner = total ? static_cast<int>(std::min<uint64_t>(share.size - 1, mid * share.size / total)) : 0;
    mine[i] = owner == share.rank;
    before += metas[i].nbytes;
  }
  return mine;
}

// checksum64 of every tensor, on two threads splitting the bytes evenly (the pages of a lazily
// mapped segment are faulted in by both), each piece also packed while in the cache (`packer`).
// The checksums of the tensors this rank verifies (the others keep their expected value).
std::vector<uint64_t> checksums(const std::vector<TensorMeta>& metas, const uint8_t* base, TpShard share,
                                StreamingPacker* packer) {
  std::vector<uint64_t> sums(metas.size());
  for (size_t i = 0; i < metas.size(); ++i) sums[i] = metas[i].checksum;
  const std::vector<bool> mine = my_share(metas, share);
  uint64_t my_total = 0;
  for (size_t i = 0; i < metas.size(); ++i)
    if (mine[i]) my_total += metas[i].nbytes;
  size_t split = 0;
  for (uint64_t acc = 0; split < metas.size() && acc < my_total / 2; ++split)
    if (mine[split]) acc += metas[split].nbytes;
  auto run = [&](size_t a, size_t b) {
    for (size_t i = a; i < b; ++i) {
      if (!mine[i]) continue;
      const uint8_t* p = base + metas[i].offset;
      uint64_t sum = 0;
      for (uint64_t done = 0, piece = piece_of(packer, i, uint64_t{512} << 10); done < metas[i].nbytes;) {
        const uint64_t n = std::min(piece, metas[i].nbytes - done);
        sum += checksum64_partial(p + done, n, done);
        if (packer) packer->arrived(i, p, done, done + n);
        done += n;
      }
      sums[i] = checksum64_finish(sum, metas[i].nbytes);
    }
  };
  std::thread second(run, split, metas.size());
  run(0, split);
  second.join();
  return sums;
}

// A streamed segment (comm/shm_stream.h): follows the trainer's progress, verifying this rank's
// share of the tensors against the checksums the trainer wrote beside them, and waits for the
// rest to be written. Returns the metas with those checksums filled in.
Result<std::vector<TensorMeta>> follow_stream(std::vector<TensorMeta> metas, const uint8_t* segment,
                                              const uint8_t* base, int64_t version, std::chrono::milliseconds stall,
                                              TpShard share, StreamingPacker* packer) {
  constexpr uint64_t kPiece = uint64_t{512} << 10;  // half of L2: checksum and pack read it from cache
  ShmStreamReader reader(segment, version, stall);
  const std::vector<bool> mine = my_share(metas, share);
  for (size_t i = 0; i < metas.size(); ++i) {
    TensorMeta& m = metas[i];
    uint64_t sum = 0;
    for (uint64_t done = 0, piece = piece_of(packer, i, kPiece); mine[i] && done < m.nbytes;) {
      const uint64_t n = std::min(piece, m.nbytes - done);
      ZR_RETURN_IF_ERROR(reader.wait_for(m.offset + done + n));
      sum += checksum64_partial(base + m.offset + done, n, done);
      if (packer) packer->arrived(i, base + m.offset, done, done + n);
      done += n;
    }
    ZR_RETURN_IF_ERROR(reader.wait_for(m.offset + m.nbytes));
    const uint64_t expected = reader.checksum(i);
    if (uint64_t got = checksum64_finish(sum, m.nbytes); mine[i] && got != expected)
      return make_error(ErrorCode::checksum_mismatch,
                        "tensor " + m.name + ": checksum " + std::to_string(got) + " != " + std::to_string(expected));
    m.checksum = expected;
  }
  return metas;
}

// An ipc pull (comm/ipc_pull.h): copies the trainer's transfer into `dst` piece by piece behind
// its writer and checksums each piece while it is still in the cache, then compares every tensor
// with the checksum the trainer wrote into its header. Every rank of a TP engine pulls and checks
// all of it (its copy is its own). With `sources` (one trainer address per tensor: its caller's
// own tensors) the bytes are all there from the start: two threads copy byte-balanced halves (the
// trainer only checksums meanwhile, so a core is free), waiting only for the checksums at the end.
// Returns the metas with those checksums filled in.
// Each piece is also packed while in the cache (`packer`, may be null).
Result<std::vector<TensorMeta>> follow_pull(std::vector<TensorMeta> metas, PullReader& reader, uint64_t remote_base,
                                            const std::vector<uint64_t>& sources, uint8_t* dst,
                                            StreamingPacker* packer) {
  constexpr uint64_t kPiece = uint64_t{512} << 10;  // half of L2: the checksum reads it from cache
  std::vector<uint64_t> sums(metas.size(), 0);
  auto copy = [&](size_t a, size_t b) -> Status {
    for (size_t i = a; i < b; ++i) {
      const TensorMeta& m = metas[i];
      const uint64_t from = sources.empty() ? remote_base + m.offset : sources[i];
      for (uint64_t done = 0, piece = piece_of(packer, i, kPiece); done < m.nbytes;) {
        const uint64_t n = std::min(piece, m.nbytes - done);
        if (sources.empty()) ZR_RETURN_IF_ERROR(reader.wait_for(m.offset + done + n));
        ZR_RETURN_IF_ERROR(reader.read(dst + m.offset + done, from + done, n));
        sums[i] += checksum64_partial(dst + m.offset + done, n, done);
        if (packer) packer->arrived(i, dst + m.offset, done, done + n);
        done += n;
      }
    }
    return {};
  };
  size_t split = metas.size();
  if (!sources.empty()) {
    const uint64_t half = transfer_bytes(metas) / 2;
    split = 0;
    while (split < metas.size() && metas[split].offset + metas[split].nbytes / 2 < half) ++split;
  }
  Status second_st;
  std::thread second;
  if (split < metas.size()) second = std::thread([&] { second_st = copy(split, metas.size()); });
  Status first_st = copy(0, split);
  if (second.joinable()) second.join();
  ZR_RETURN_IF_ERROR(first_st);
  ZR_RETURN_IF_ERROR(second_st);
  ZR_RETURN_IF_ERROR(reader.wait_for(transfer_bytes(metas)));
  auto expected = reader.checksums(metas.size());
  if (!expected.ok()) return expected.status();
  for (size_t i = 0; i < metas.size(); ++i) {
    TensorMeta& m = metas[i];
    if (uint64_t got = checksum64_finish(sums[i], m.nbytes); got != (*expected)[i])
      return make_error(ErrorCode::checksum_mismatch, "tensor " + m.name + ": checksum " + std::to_string(got) +
                                                          " != " + std::to_string((*expected)[i]));
    m.checksum = (*expected)[i];
  }
  return metas;
}

}  // namespace

Status validate_update_meta(const ModelWeights& current, const std::vector<TensorMeta>& metas, uint64_t buffer_bytes) {
  if (metas.empty()) return make_error(ErrorCode::invalid_argument, "tensors: empty update");
  std::unordered_set<std::string> seen;
  for (const TensorMeta& m : metas) {
    const TensorSpec* spec = spec_of(current, m.name);
    if (!spec) return make_error(ErrorCode::weight_mismatch, "tensor " + m.name + ": not a tensor of this model");
    if (!seen.insert(m.name).second)
      return make_error(ErrorCode::weight_mismatch, "tensor " + m.name + ": listed twice");
    if (m.shape != spec->shape)
      return make_error(ErrorCode::weight_mismatch, "tensor " + m.name + ": expected shape " + shape_str(spec->shape) +
                                                        ", got " + shape_str(m.shape));
    auto dt = dtype_from_name(m.dtype);
    if (!dt) return make_error(ErrorCode::unsupported, "tensor " + m.name + ": dtype '" + m.dtype + "'");
    uint64_t numel = 1;
    for (int64_t d : m.shape) numel *= static_cast<uint64_t>(d);
    if (m.nbytes != numel * dtype_size(*dt))
      return make_error(ErrorCode::weight_mismatch, "tensor " + m.name + ": nbytes " + std::to_string(m.nbytes) +
                                                        " does not match dtype and shape");
    if (m.offset + m.nbytes > buffer_bytes || m.offset + m.nbytes < m.offset)
      return make_error(ErrorCode::weight_mismatch, "tensor " + m.name + ": bytes outside the transfer");
  }
  return {};
}

// The staged tensors are swapped into a copy of the registry (copies share bytes) to see what the
// commit will serve. A registry that refuses them leaves the packs to the commit, which refuses too.
void build_staged_packs(const PackStager& build_packs, const ModelWeights& current, StagedWeights& staged,
                        StreamingPacker* streamed) {
  if (!build_packs) return;
  ModelWeights next = current;
  if (!next.replace(staged.tensors).ok()) return;
  PhaseProbe probe("engine: packs of the staged version built");
  staged.packs = build_packs(current, next, streamed);
}

Result<StagedWeights> stage_from_buffer(const ModelWeights& current, const std::vector<TensorMeta>& metas,
                                        const uint8_t* base, std::shared_ptr<const void> owner, int64_t version,
                                        bool verify_checksums, TpShard verify_share, StreamingPacker* packer) {
  StagedWeights out;
  out.version = version;
  out.received = metas;
  std::vector<uint64_t> sums =
      verify_checksums ? checksums(metas, base, verify_share, packer) : std::vector<uint64_t>{};
  for (size_t i = 0; i < metas.size(); ++i) {
    const TensorMeta& m = metas[i];
    const uint8_t* p = base + m.offset;
    if (uint64_t sum = verify_checksums ? sums[i] : m.checksum; sum != m.checksum)
      return make_error(ErrorCode::checksum_mismatch,
                        "tensor " + m.name + ": checksum " + std::to_string(sum) + " != " + std::to_string(m.checksum));
    TensorView view{m.name, *dtype_from_name(m.dtype), m.shape, p, m.nbytes, owner};
    auto w = current.make_local(*spec_of(current, m.name), view);  // this rank's shard under TP
    if (!w.ok()) return w.status();
    const Weight* cur = current.find(m.name);
    Weight staged = std::move(w).value();
    if (serves_dtype(cur) && staged.dtype != cur->dtype) staged = convert(staged, cur->dtype);
    const auto* at = static_cast<const uint8_t*>(staged.data);
    out.zero_copy += at >= p && at < p + m.nbytes;
    out.bytes += m.nbytes;
    out.tensors.emplace_back(m.name, std::move(staged));
  }
  return out;
}

uint64_t transfer_bytes(const std::vector<TensorMeta>& metas) {
  uint64_t end = 0;
  for (const TensorMeta& m : metas) end = std::max(end, m.offset + m.nbytes);
  return end;
}

namespace {

// A private buffer of `bytes` in huge pages (weights served zero-copy from here are streamed every
// step); prefault faults every page in now (MADV_POPULATE_WRITE, Linux 5.14; else a memset).
std::shared_ptr<uint8_t> map_buffer(uint64_t bytes, bool prefault) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  madvise(p, bytes, huge_pages_wanted() ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
  if (prefault && madvise(p, bytes, MADV_POPULATE_WRITE) != 0) std::memset(p, 0, bytes);
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [bytes](uint8_t* q) { munmap(q, bytes); });
}

}  // namespace

StagingPool::~StagingPool() { take_prepared(/*wait=*/true); }

void StagingPool::prepare(uint64_t bytes, int count, std::function<void()> also) {
  if (preparing_.valid() || bytes == 0 || count <= 0 || std::getenv("ZR_NO_STAGING_PREFAULT")) return;
  preparing_ = std::async(std::launch::async, [bytes, count, also = std::move(also)] {
    lower_priority();
    const auto t0 = std::chrono::steady_clock::now();
    Prepared out;
    for (int i = 0; i < count; ++i)
      if (auto buf = map_buffer(bytes, /*prefault=*/true)) out.buffers.emplace_back(std::move(buf), bytes);
    if (also) also();
    out.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    spdlog::info("staging: {} buffer(s) of {:.1f} MiB{} faulted in ahead of the next update in {:.0f} ms",
                 out.buffers.size(), bytes / 1048576.0, also ? " and the packs" : "", out.ms);
    return out;
  });
}

void StagingPool::refill(uint64_t bytes) {
  take_prepared(/*wait=*/false);
  if (buffers_.size() < 2) prepare(bytes, 1);
}

void StagingPool::take_prepared(bool wait) {
  if (!preparing_.valid()) return;
  if (!wait && preparing_.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return;
  Prepared p = preparing_.get();
  prepared_ms_ = p.ms;
  for (auto& b : p.buffers) buffers_.push_back(std::move(b));
  // A refill that finished after an update mapped its own buffer: keep two (double buffering).
  while (buffers_.size() > 2) {
    auto idle = std::find_if(buffers_.begin(), buffers_.end(), [](const auto& b) { return b.first.use_count() == 1; });
    if (idle == buffers_.end()) break;
    buffers_.erase(idle);
  }
}

double StagingPool::wait_prepared() {
  take_prepared(/*wait=*/true);
  return prepared_ms_;
}

std::shared_ptr<uint8_t> StagingPool::get(uint64_t bytes, bool prefault) {
  take_prepared(/*wait=*/false);
  for (auto& [buf, size] : buffers_)
    if (buf.use_count() == 1 && size >= bytes) return buf;  // no served weight points into it
  std::shared_ptr<uint8_t> buf = map_buffer(bytes, prefault);
  if (!buf) return nullptr;
  buffers_.emplace_back(buf, bytes);
  if (buffers_.size() > 2) {  // keep at most two idle buffers (double buffering)
    auto idle = std::find_if(buffers_.begin(), buffers_.end(),
                             [&](const auto& b) { return b.first.use_count() == 1 && b.first != buf; });
    if (idle != buffers_.end()) buffers_.erase(idle);
  }
  return buf;
}

namespace {

bool serves_from(const ModelWeights& w, const ShmSegment& seg) {
  auto lo = static_cast<const uint8_t*>(seg.data());
  auto hi = lo + seg.size();
  for (const TensorSpec& s : w.specs())
    if (const Weight* t = w.find(s.name); t && t->data)
      if (auto p = static_cast<const uint8_t*>(t->data); p >= lo && p < hi) return true;
  return false;
}

}  // namespace

Result<std::shared_ptr<ShmSegment>> ShmMappings::acquire(const std::string& name, uint64_t bytes, bool keep,
                                                         const std::vector<std::string>& pool,
                                                         const ModelWeights& serving) {
  retain(pool);
  auto it = std::find_if(kept_.begin(), kept_.end(), [&](const auto& seg) { return seg->name() == name; });
  const bool was_kept = it != kept_.end();
  std::shared_ptr<ShmSegment> seg;
  if (was_kept) {
    seg = *it;
    if (serves_from(serving, *seg))
      return make_error(ErrorCode::invalid_argument,
                        "shm_name: segment " + name +
                            " still holds the serving weights; the trainer must write a new "
                            "version into a segment no engine lists in shm_in_use");
  } else {
    auto opened = ShmSegment::open(name, keep ? 0 : bytes, /*read_only=*/true, /*populate=*/false);
    if (!opened.ok() && opened.status().code == ErrorCode::not_found)
      return make_error(ErrorCode::not_found, "shm_name: no segment " + name + " (and no kept mapping of it here)");
    if (!opened.ok()) return opened.status();
    seg = std::make_shared<ShmSegment>(std::move(opened).value());
  }
  if (seg->size() < bytes)
    return make_error(ErrorCode::invalid_argument, "shm_bytes: " + std::to_string(bytes) + " but segment " + name +
                                                       " holds " + std::to_string(seg->size()));
  if (keep && !was_kept) kept_.push_back(seg);
  if (!keep && was_kept) kept_.erase(it);
  if (!keep) {
    std::erase_if(unkept_, [](const auto& w) { return w.expired(); });
    unkept_.push_back(seg);
  }
  return seg;
}

void ShmMappings::retain(const std::vector<std::string>& pool) {
  std::erase_if(kept_, [&](const auto& seg) { return std::find(pool.begin(), pool.end(), seg->name()) == pool.end(); });
}

std::vector<std::string> ShmMappings::in_use(const ModelWeights& serving) const {
  std::vector<std::string> names;
  for (const auto& seg : kept_)
    if (serves_from(serving, *seg)) names.push_back(seg->name());
  for (const auto& weak : unkept_)
    if (auto seg = weak.lock();
        seg && serves_from(serving, *seg) && std::find(names.begin(), names.end(), seg->name()) == names.end())
      names.push_back(seg->name());
  return names;
}

Result<StagedWeights> stage_from_disk(const ModelWeights& current, const std::string& dir, int64_t version) {
  auto cfg = ModelConfig::from_dir(dir);
  if (!cfg.ok()) return cfg.status();
  auto loaded = ModelWeights::load_dir(*cfg, dir);
  if (!loaded.ok()) return loaded.status();
  StagedWeights out;
  out.version = version;
  for (const TensorSpec& s : loaded->specs()) {
    const TensorSpec* mine = spec_of(current, s.name);
    if (!mine) return make_error(ErrorCode::weight_mismatch, "tensor " + s.name + ": not a tensor of this model");
    if (mine->shape != s.shape)
      return make_error(ErrorCode::weight_mismatch, "tensor " + s.name + ": expected shape " + shape_str(mine->shape) +
                                                        ", got " + shape_str(s.shape) + " in " + dir);
    const Weight& w = loaded->get(s.role, s.layer);
    const Weight* cur = current.find(s.name);
    Weight staged = shard_weight(s, w, *cfg, current.shard());
    if (serves_dtype(cur) && staged.dtype != cur->dtype) staged = convert(staged, cur->dtype);
    out.bytes += staged.nbytes();
    out.tensors.emplace_back(s.name, std::move(staged));
  }
  return out;
}

Result<StagedWeights> stage_listed_from_disk(const ModelWeights& current, const std::string& dir,
                                             const std::vector<TensorMeta>& metas, int64_t version) {
  auto ar = SafetensorsArchive::open_dir(dir);
  if (!ar.ok()) return ar.status();
  StagedWeights out;
  out.version = version;
  for (const TensorMeta& m : metas) {  // names, shapes and nbytes were checked against the model
    const TensorView* v = ar->find(m.name);
    if (!v) return make_error(ErrorCode::weight_mismatch, "tensor " + m.name + ": listed but not in " + dir);
    if (dtype_name(v->dtype) != m.dtype || v->nbytes != m.nbytes)
      return make_error(ErrorCode::weight_mismatch, "tensor " + m.name + ": " + dir + " holds " + dtype_name(v->dtype) +
                                                        " of " + std::to_string(v->nbytes) +
                                                        " bytes, the update lists " + m.dtype + " of " +
                                                        std::to_string(m.nbytes));
    if (uint64_t sum = checksum64(v->data, v->nbytes); sum != m.checksum)
      return make_error(ErrorCode::checksum_mismatch, "tensor " + m.name + ": checksum " + std::to_string(sum) +
                                                          " != " + std::to_string(m.checksum) + " in " + dir);
    auto w = current.make_local(*spec_of(current, m.name), *v);  // this rank's shard under TP
    if (!w.ok()) return w.status();
    const Weight* cur = current.find(m.name);
    Weight staged = std::move(w).value();
    if (serves_dtype(cur) && staged.dtype != cur->dtype) staged = convert(staged, cur->dtype);
    out.bytes += m.nbytes;
    out.tensors.emplace_back(m.name, std::move(staged));
  }
  return out;
}

namespace {

// The pull form of an ipc update (metadata already validated): refused at once (unsupported)
// when this process may not read the trainer's memory, so the trainer can send a segment instead.
Result<std::future<Result<StagedWeights>>> begin_pull(const UpdateWeightsCall& c, const ModelWeights& current,
                                                      const StageSources& src, uint64_t* bytes) {
  if (!src.pool) return make_error(ErrorCode::unsupported, "pull_pid: this engine has no staging buffers");
  auto reader =
      std::make_shared<PullReader>(static_cast<pid_t>(c.pull_pid), c.pull_addr, c.version, src.transfer_timeout);
  ZR_RETURN_IF_ERROR(reader->probe());
  if (src.shm) src.shm->retain(c.shm_pool);  // segments the trainer no longer holds
  std::shared_ptr<uint8_t> buf = src.pool->get(std::max<uint64_t>(c.shm_bytes, 64), /*prefault=*/false);
  if (!buf)
    return make_error(ErrorCode::unavailable, "staging buffer: cannot map " + std::to_string(c.shm_bytes) + " bytes");
  *bytes = c.shm_bytes;
  const ModelWeights* cur = &current;
  return run_staging(src, cur, [cur, buf, reader, c, src](auto& streamed) -> Result<StagedWeights> {
    streamed = stream_packer(src, *cur, c.tensors);
    auto verified = [&] {
      PhaseProbe probe("engine: pull + verify + pack behind the writer");
      return follow_pull(c.tensors, *reader, c.pull_addr + c.shm_offset, c.pull_addrs, buf.get(), streamed.get());
    }();
    if (!verified.ok()) return verified.status();
    return stage_from_buffer(*cur, *verified, buf.get(), std::shared_ptr<const void>(buf, buf.get()), c.version,
                             /*verify_checksums=*/false);
  });
}

}  // namespace

Result<std::future<Result<StagedWeights>>> begin_stage(const UpdateWeightsCall& c, const ModelWeights& current,
                                                       int64_t serving_version, const StageSources& src,
                                                       uint64_t* bytes) {
  const ModelWeights* cur = &current;
  auto stale = [&] {
    return make_error(ErrorCode::invalid_argument, "version: " + std::to_string(c.version) + " must be greater than " +
                                                       std::to_string(serving_version));
  };
  if (c.path != WeightPath::ipc && src.shm) src.shm->retain({});  // no writer is going to reuse a segment
  if (c.path == WeightPath::broadcast) {
    if (!src.weight_group || !src.pool)
      return make_error(ErrorCode::unsupported, "path: broadcast needs the MPI weight group (cluster launch)");
    const uint64_t n = transfer_bytes(c.tensors);
    *bytes = n;
    Status refuse = validate_update_meta(current, c.tensors, n);
    if (refuse.ok() && c.version <= serving_version) refuse = stale();
    std::shared_ptr<uint8_t> buf = src.pool->get(std::max<uint64_t>(n, 64));
    return run_staging(src, cur, [cur, buf, n, refuse, c, src](auto& streamed) -> Result<StagedWeights> {
      if (!buf) return make_error(ErrorCode::unavailable, "staging buffer: cannot map " + std::to_string(n) + " bytes");
      // Packs each matmul weight's rows as its segments land (pulled or received in place: at
      // their final place, in the cache), so the ack follows the last segment, not a packing pass.
      if (refuse.ok()) streamed = stream_packer(src, *cur, c.tensors);
      // After engines died the trainer names the survivors: the group over them is made here, on the
      // staging thread, since every member blocks in its creation until all have entered.
      auto group = src.weight_group->survivors(c.group_epoch, c.group_ranks, src.transfer_timeout);
      if (!group.ok()) return group.status();
      TransferVerifier verifier(c.tensors);  // checksums each segment from the cache as it arrives
      // With checksum_trailer the expected checksums arrive after the bytes (docs/protocol.md; the
      // wire's little-endian u64s are this host's order: zrollout runs on x86-64 and aarch64 only).
      std::vector<uint64_t> trailer(c.checksum_trailer ? c.tensors.size() : 0);
      Status st = (*group)->bcast_buckets(
          buf.get(), n, c.root, c.bucket_bytes, src.transfer_timeout,
          [&](size_t off, size_t len, const void* seg) {
            verifier.add(seg, off, len);
            if (streamed && seg == buf.get() + off) streamed->arrived_transfer(buf.get(), off, len);
          },
          std::as_writable_bytes(std::span(trailer)));
      if (!st.ok()) return st;
      if (!refuse.ok()) return refuse;
      std::vector<TensorMeta> metas = c.tensors;
      if (c.checksum_trailer) {
        ZR_RETURN_IF_ERROR(verifier.verify(trailer));
        for (size_t i = 0; i < metas.size(); ++i) metas[i].checksum = trailer[i];
      } else {
        ZR_RETURN_IF_ERROR(verifier.verify());
      }
      return stage_from_buffer(*cur, metas, buf.get(), std::shared_ptr<const void>(buf, buf.get()), c.version,
                               /*verify_checksums=*/false);
    });
  }
  if (c.version <= serving_version) return stale();
  if (c.path == WeightPath::disk) {
    if (c.tensors.empty())
      return run_staging(src, cur,
                         [cur, dir = c.disk_path, v = c.version](auto&) { return stage_from_disk(*cur, dir, v); });
    ZR_RETURN_IF_ERROR(validate_update_meta(current, c.tensors, UINT64_MAX));  // offsets mean nothing here
    return run_staging(src, cur, [cur, dir = c.disk_path, metas = c.tensors, v = c.version](auto&) {
      return stage_listed_from_disk(*cur, dir, metas, v);
    });
  }
  // ipc: map the trainer's segment (or reuse the kept mapping) and use its bytes in place where
  // layout allows
  ZR_RETURN_IF_ERROR(validate_update_meta(current, c.tensors, c.shm_bytes));
  const uint64_t need = c.shm_offset + c.shm_bytes;
  if (c.shm_stream)  // the written count is a prefix of the transfer: tensors must come in its order
    for (size_t i = 1; i < c.tensors.size(); ++i)
      if (c.tensors[i].offset < c.tensors[i - 1].offset + c.tensors[i - 1].nbytes)
        return make_error(ErrorCode::invalid_argument,
                          "tensors[" + std::to_string(i) +
                              "].offset: a streamed "
                              "update lists tensors in increasing, non-overlapping offsets");
  if (c.pull_pid != 0) return begin_pull(c, current, src, bytes);
  std::shared_ptr<ShmSegment> owner;
  if (src.shm) {
    auto kept = src.shm->acquire(c.shm_name, need, c.shm_keep, c.shm_pool, current);
    if (!kept.ok()) return kept.status();
    owner = std::move(kept).value();
  } else {
    auto seg = ShmSegment::open(c.shm_name, need, /*read_only=*/true, /*populate=*/false);
    if (!seg.ok()) return seg.status();
    owner = std::make_shared<ShmSegment>(std::move(seg).value());
  }
  *bytes = c.shm_bytes;
  // The ranks of a TP engine map the same segment: each verifies its share of the tensors, and the
  // engine commits only if every rank's share checked out (actors/tp_group.h, stage_result).
  return run_staging(src, cur, [cur, owner, c, src](auto& streamed) {
    auto segment = static_cast<const uint8_t*>(owner->data());
    const uint8_t* base = segment + c.shm_offset;
    std::shared_ptr<const void> keep(owner, base);
    streamed = stream_packer(src, *cur, c.tensors);  // verify and pack in one read of the segment
    if (!c.shm_stream)
      return stage_from_buffer(*cur, c.tensors, base, keep, c.version, /*verify_checksums=*/true, cur->shard(),
                               streamed.get());
    PhaseProbe probe("engine: verify + pack the segment behind the writer");
    auto verified =
        follow_stream(c.tensors, segment, base, c.version, src.transfer_timeout, cur->shard(), streamed.get());
    if (!verified.ok()) return Result<StagedWeights>(verified.status());
    return stage_from_buffer(*cur, *verified, base, keep, c.version, /*verify_checksums=*/false);
  });
}

}  // namespace zr
