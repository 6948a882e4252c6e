#include "actors/engine/tp_group.h"

#include <spdlog/spdlog.h>

#include <msgpack.hpp>

#include <algorithm>
#include <sstream>

#include "comm/checksum.h"

namespace zr {

namespace {

constexpr auto kFollowerMaxSleep = std::chrono::microseconds(2000);

// Adds the scope's duration to a Stats counter.
class Timed {
 public:
  explicit Timed(double& sink) : sink_(sink), t0_(std::chrono::steady_clock::now()) {}
  ~Timed() { sink_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  double& sink_;
  std::chrono::steady_clock::time_point t0_;
};

struct WireCommand {
  int kind = 0;
  int64_t version = 0;
  std::vector<int32_t> ints;
  std::string blob;
  MSGPACK_DEFINE(kind, version, ints, blob);
};

}  // namespace

std::vector<int32_t> encode_forward(std::span<const SeqChunk> chunks, const std::vector<std::pair<int, int>>& copies) {
  std::vector<int32_t> v;
  v.push_back(static_cast<int32_t>(copies.size()));
  for (auto [src, dst] : copies) {
    v.push_back(src);
    v.push_back(dst);
  }
  v.push_back(static_cast<int32_t>(chunks.size()));
  for (const SeqChunk& c : chunks) {
    const int blocks = static_cast<int>(c.block_table->size());
    v.insert(v.end(), {c.num_tokens, c.start_pos, c.logits_begin, blocks});
    v.insert(v.end(), c.tokens, c.tokens + c.num_tokens);
    v.insert(v.end(), c.block_table->begin(), c.block_table->end());
  }
  return v;
}

Result<ForwardPlan> decode_forward(const std::vector<int32_t>& v) {
  ForwardPlan p;
  size_t at = 0;
  auto take = [&](size_t n) { return at + n <= v.size(); };
  auto bad = [] { return make_error(ErrorCode::bad_message, "tp forward plan: truncated"); };
  if (!take(1)) return bad();
  const int n_copies = v[at++];
  if (n_copies < 0 || !take(2 * static_cast<size_t>(n_copies) + 1)) return bad();
  for (int i = 0; i < n_copies; ++i, at += 2) p.copies.emplace_back(v[at], v[at + 1]);
  const int n_chunks = v[at++];
  if (n_chunks < 0) return bad();
  p.tokens.resize(n_chunks);
  p.tables.resize(n_chunks);
  for (int i = 0; i < n_chunks; ++i) {
    if (!take(4)) return bad();
    const int n = v[at], start = v[at + 1], begin = v[at + 2], blocks = v[at + 3];
    at += 4;
    if (n < 0 || blocks < 0 || !take(static_cast<size_t>(n) + blocks)) return bad();
    p.tokens[i].assign(v.begin() + at, v.begin() + at + n);
    at += n;
    p.tables[i].assign(v.begin() + at, v.begin() + at + blocks);
    at += blocks;
    p.chunks.push_back(SeqChunk{nullptr, n, start, nullptr, begin});
  }
  for (int i = 0; i < n_chunks; ++i) {  // pointers once the vectors no longer move
    p.chunks[i].tokens = p.tokens[i].data();
    p.chunks[i].block_table = &p.tables[i];
  }
  return p;
}

TpGroup::TpGroup(MpiGroup group) : group_(std::move(group)) {}

void TpGroup::fail(const Status& st, const char* what) {
  if (peers_alive_ && group_.poisoned()) peer_gone();  // abandoned: this rank's engine is gone
  spdlog::critical("tensor parallel {} failed on TP rank {}: {}; ending the job (the engine's ranks are out of step)",
                   what, group_.rank(), st.to_string());
  group_.abort_group(70);
}

void TpGroup::allreduce_sum(float* data, size_t n) {
  Timed t(stats_.allreduce_s);
  ++stats_.allreduce_calls;
  stats_.allreduce_bytes += n * sizeof(float);
  const int T = group_.size();
  parts_.resize(n * T);
  if (Status st = group_.allgather_bytes(data, n * sizeof(float), parts_.data(), peers_alive_); !st.ok())
    fail(st, "allreduce");
  std::copy_n(parts_.data(), n, data);
  for (int r = 1; r < T; ++r) {
    const float* p = parts_.data() + n * r;
    for (size_t i = 0; i < n; ++i) data[i] += p[i];
  }
}

void TpGroup::gather_to_leader(const float* local, std::span<const size_t> counts, float* out) {
  Timed t(stats_.gather_s);
  std::vector<size_t> bytes(counts.begin(), counts.end());
  for (size_t& b : bytes) b *= sizeof(float);
  if (Status st = group_.gather_bytes(local, bytes, out, 0, peers_alive_); !st.ok()) fail(st, "logits gather");
}

void TpGroup::send(const TpCommand& cmd) {
  Timed t(stats_.command_s);
  msgpack::sbuffer buf;
  msgpack::pack(buf, WireCommand{static_cast<int>(cmd.kind), cmd.version, cmd.ints, cmd.blob});
  std::string s(buf.data(), buf.size());
  if (Status st = group_.bcast_small_idle(s, 0, kFollowerMaxSleep, peers_alive_); !st.ok())
    fail(st, "command broadcast");
}

void TpGroup::peer_gone() {
  // Only this engine is lost: the rest of the job (other engines, the trainer) goes on, so no
  // MPI_Abort, and no MPI_Finalize either (it would wait for the dead peer).
  spdlog::critical("tp rank {}: {} stopped answering; this engine is gone, exiting", group_.rank(),
                   leader() ? "a follower" : "the leader");
  spdlog::default_logger()->flush();
  std::_Exit(3);
}

TpCommand TpGroup::receive() {
  std::string s;
  if (Status st = group_.bcast_small_idle(s, 0, kFollowerMaxSleep, peers_alive_); !st.ok())
    fail(st, "command broadcast");
  WireCommand w;
  try {
    msgpack::object_handle oh = msgpack::unpack(s.data(), s.size());
    oh.get().convert(w);
  } catch (const std::exception& e) {
    fail(make_error(ErrorCode::bad_message, e.what()), "command decode");
  }
  return TpCommand{static_cast<TpCommand::Kind>(w.kind), w.version, std::move(w.ints), std::move(w.blob)};
}

std::vector<std::string> TpGroup::gather_strings(const std::string& local) {
  auto all = group_.allgather_strings(local);
  if (!all.ok()) fail(all.status(), "gather");
  return std::move(all).value();
}

std::vector<TensorChecksum> shard_checksums(const ModelWeights& w, const std::vector<std::string>& names, int tp_rank) {
  std::vector<TensorChecksum> out;
  for (const TensorSpec& s : w.specs()) {
    if (!names.empty() && std::find(names.begin(), names.end(), s.name) == names.end()) continue;
    const Weight* t = w.find(s.name);
    if (!t || !t->data) continue;
    out.push_back({s.name, dtype_name(t->dtype), checksum64(t->data, t->nbytes()), tp_rank});
  }
  return out;
}

std::string format_checksums(const std::vector<TensorChecksum>& sums) {
  std::string s;
  for (const auto& t : sums) s += t.name + " " + t.dtype + " " + std::to_string(t.checksum) + "\n";
  return s;
}

std::vector<TensorChecksum> parse_checksums(const std::string& text, int tp_rank) {
  std::vector<TensorChecksum> out;
  std::istringstream in(text);
  TensorChecksum t;
  while (in >> t.name >> t.dtype >> t.checksum) {
    t.tp_rank = tp_rank;
    out.push_back(t);
  }
  return out;
}

std::string status_line(const Status& st) {
  if (st.ok()) return "";
  return std::to_string(static_cast<int>(st.code)) + " " + st.message;
}

Status status_from_line(const std::string& line) {
  if (line.empty()) return {};
  size_t sp = line.find(' ');
  int code = std::atoi(line.substr(0, sp).c_str());
  return make_error(static_cast<ErrorCode>(code), sp == std::string::npos ? "" : line.substr(sp + 1));
}

}  // namespace zr
