// Every message zrollout exchanges, as plain structs (names follow SGLang's Engine.generate so
// existing client code reads our replies). No serialization library is included here: the JSON
// codec (comm/json_codec) and the msgpack codec map these structs field by field and report the
// offending field by name. docs/protocol.md documents each field and default.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "comm/weight_transfer.h"

namespace zr {

enum class LogprobMode { default_mode, raw, processed };

struct TemperatureSchedule {
  float initial = 1.0f;
  float final = 1.0f;
  int warmup_tokens = 0;  // linear from initial to final over this many generated tokens
};

// Typed logit processors (also reachable through the string form custom_logit_processor:
// "rl_action_mask:1,2,3" or "disallowed_tokens:4,5").
struct LogitProcessors {
  std::optional<std::vector<int>> allowed_token_ids;  // action mask: only these may be sampled
  std::vector<int> disallowed_token_ids;
  std::optional<TemperatureSchedule> temperature_schedule;
};

struct SamplingParams {
  int max_new_tokens = 128;
  int min_new_tokens = 0;
  float temperature = 1.0f;  // 0 = greedy
  float top_p = 1.0f;
  int top_k = -1;  // -1 = off
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  std::vector<std::string> stop;
  std::vector<int> stop_token_ids;
  bool ignore_eos = false;
  bool skip_special_tokens = true;
  bool no_stop_trim = false;  // text keeps the stop string that ended it (SGLang)
  int n = 1;
  std::optional<uint64_t> seed;  // sample i of n uses seed + i
  std::vector<std::pair<int, float>> logit_bias;
  LogitProcessors processors;
};

struct GenerateRequest {
  std::string rid;
  std::optional<std::string> text;  // tokenized with BOS when input_ids is empty
  std::vector<int> input_ids;
  SamplingParams sampling_params;
  bool return_logprob = false;
  int logprob_start_len = -1;  // -1: no input logprobs
  int top_logprobs_num = 0;
  std::vector<int> token_ids_logprob;
  LogprobMode logprob_mode = LogprobMode::default_mode;
  bool stream = false;
  std::string session_id;
  // false: output ids are not decoded (text fields empty, stop strings refused); RLinf's
  // detokenize option. A serve option (EngineOptions::detokenize) turns it off for every request.
  bool detokenize = true;
  // SGLang's return_text_in_logprobs: every [logprob, token_id, text] of the reply's logprob lists
  // (input, output, top, token_ids) carries the token decoded alone, special tokens kept (SGLang
  // decodes each id with tokenizer.batch_decode); otherwise text is null.
  bool return_text_in_logprobs = false;
};

struct TokenLogprob {
  std::optional<float> logprob;  // null for the first prompt position
  int token_id = 0;
  std::optional<std::string> text;
};

struct FinishReason {
  enum class Type { none, stop, length, abort } type = Type::none;
  std::variant<std::monostate, int, std::string> matched;  // stop: token id or stop string
  int length = 0;                                          // length: completion tokens
  std::string message;                                     // abort: why
};

struct WeightVersionSpan {
  int first_token_index = 0;
  int64_t version = 0;
};

struct MetaInfo {
  std::string id;
  FinishReason finish_reason;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
  std::vector<TokenLogprob> output_token_logprobs;
  std::vector<TokenLogprob> input_token_logprobs;
  std::vector<std::vector<TokenLogprob>> output_top_logprobs;
  std::vector<std::vector<TokenLogprob>> input_top_logprobs;
  std::vector<std::vector<TokenLogprob>> output_token_ids_logprobs;
  std::vector<std::vector<TokenLogprob>> input_token_ids_logprobs;
  int64_t weight_version = 0;
  std::vector<WeightVersionSpan> weight_version_spans;
  double e2e_latency = 0.0;  // seconds
};

// One sample of one request; a request with n samples yields n of these, index 0..n-1.
struct SampleOutput {
  std::string rid;
  int index = 0;
  std::string text;
  std::vector<int> output_ids;
  MetaInfo meta_info;
  bool return_logprob = false;  // which meta_info logprob fields are meaningful
  bool has_input_logprobs = false;
  bool has_top = false;
  bool has_ids = false;
};

// Teacher-forced scoring (Tunix get_per_token_logps).
struct ScoreRequest {
  std::string rid;
  std::vector<int> input_ids;       // the prompt
  std::vector<int> completion_ids;  // scored tokens
  float temperature = 1.0f;
  int top_logprobs_num = 0;
};

struct ScoreOutput {
  std::string rid;
  std::vector<float> logprobs;                                   // one per completion token
  std::vector<std::vector<std::pair<int, float>>> top_logprobs;  // when top_logprobs_num > 0
  int64_t weight_version = 0;
};

}  // namespace zr

namespace zr {

// ---- Service operations (docs/protocol.md). Every request body carries `req_id` (a number the
// client picks); every reply to it echoes `req_id`. Reply frames use op "<op>.reply" (and
// "generate.chunk" for streamed pieces); any failure is op "error" with an ErrorReply body.

struct ErrorReply {
  uint64_t req_id = 0;
  std::string code;     // error_code_name(ErrorCode)
  std::string message;  // names the field
};

// op "generate": one request, or a batch in `batch` (then the fields of the single form are absent).
struct GenerateCall {
  uint64_t req_id = 0;
  std::vector<GenerateRequest> batch;
};
// op "generate.chunk" (stream: true): what each sample gained since the last chunk.
struct StreamChunk {
  std::string rid;
  int index = 0;
  std::string text;                                 // new text only
  std::vector<int> output_ids;                      // new ids only
  std::vector<TokenLogprob> output_token_logprobs;  // for the new ids, when return_logprob
};
// op "generate.reply": every sample of every request of the call, once all have finished.
struct GenerateReply {
  uint64_t req_id = 0;
  std::vector<SampleOutput> outputs;  // request order, samples of one request together by index
};

// op "score" -> "score.reply"
struct ScoreCall {
  uint64_t req_id = 0;
  std::vector<ScoreRequest> batch;
};
struct ScoreReply {
  uint64_t req_id = 0;
  std::vector<ScoreOutput> outputs;
};

// op "abort" -> "abort.reply". Exactly one of rid, rid_prefix, all. Aborted requests answer their
// own generate call with partial outputs and finish_reason abort.
struct AbortCall {
  uint64_t req_id = 0;
  std::string rid;
  std::string rid_prefix;
  bool all = false;
};
struct AbortReply {
  uint64_t req_id = 0;
  std::vector<std::string> aborted;  // rids
};

// op "get_load" -> "get_load.reply"
struct LoadReply {
  uint64_t req_id = 0;
  int waiting = 0;
  int running = 0;
  int kv_blocks_used = 0;
  int kv_blocks_total = 0;
  double tokens_per_s = 0;  // generated tokens per second over the last few seconds
};

// op "health" -> "health.reply"
struct HealthReply {
  uint64_t req_id = 0;
  std::string status;  // "serving" | "draining" | "released"
  int64_t weight_version = 0;
};

// op "get_model_info" -> "get_model_info.reply"
struct ModelInfoReply {
  uint64_t req_id = 0;
  std::string architecture;
  int vocab_size = 0;
  int context_length = 0;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  int pad_token_id = -1;
  int64_t weight_version = 0;
  std::string model_path;
  std::string compute = "f32";               // the engine's matmul mode: f32 | bf16
  std::string kv_dtype = "f32";              // the KV cache's element type: f32 | bf16
  std::vector<std::string> weights_roots{};  // folders a disk update may read (--weights-root)
};

// op "tokenize" -> "tokenize.reply": the ids a `text` prompt becomes in generate (with
// add_special_tokens, what the tokenizer adds around a text: Llama's BOS; Qwen adds nothing).
struct TokenizeCall {
  uint64_t req_id = 0;
  std::string text;
  bool add_special_tokens = true;
};
struct TokenizeReply {
  uint64_t req_id = 0;
  std::vector<int> input_ids;
};
// op "detokenize" -> "detokenize.reply": the text generate would give for these ids.
struct DetokenizeCall {
  uint64_t req_id = 0;
  std::vector<int> input_ids;
  bool skip_special_tokens = true;
};
struct DetokenizeReply {
  uint64_t req_id = 0;
  std::string text;
};

// op "flush_cache" -> "flush_cache.reply" {req_id, freed_blocks}
// op "open_session" {req_id} -> "open_session.reply" {req_id, session_id}
// op "close_session" {req_id, session_id} -> "close_session.reply" {req_id}
struct SessionCall {
  uint64_t req_id = 0;
  std::string session_id;
};
struct SimpleReply {  // replies that carry only an acknowledgement and one optional number/string
  uint64_t req_id = 0;
  std::string session_id;
  int64_t value = 0;
};

// ---- Weight operations

// op "update_weights" -> "update_weights.reply" (UpdateWeightsReply) or "error" naming the tensor
// and the rank. The bytes never travel in this message: path broadcast (MPI buckets from the
// trainer rank), ipc (a POSIX shared-memory segment named shm_name), disk (a checkpoint folder).
struct UpdateWeightsCall {
  uint64_t req_id = 0;
  int64_t version = 0;                               // must be greater than the serving version
  WeightPath path = WeightPath::ipc;                 // on the wire: "broadcast" | "ipc" | "disk"
  std::vector<TensorMeta> tensors;                   // broadcast / ipc: what arrives, in transfer order
  InFlightPolicy in_flight = InFlightPolicy::drain;  // on the wire: "drain" | "abort" | "continue" | "recompute"
  bool flush_cache = false;
  std::string shm_name;     // ipc
  uint64_t shm_bytes = 0;   // ipc: bytes of the transfer (the segment may be larger)
  uint64_t shm_offset = 0;  // ipc: where the transfer starts in the segment (a multiple of 64)
  // ipc: the trainer is still writing the segment (comm/shm_stream.h): its header says how far it
  // got and carries the checksums (TensorMeta::checksum is not used); the engine verifies behind it.
  bool shm_stream = false;
  // ipc segment reuse: shm_keep asks the engine to keep its mapping of shm_name after the update,
  // because the trainer will write a later version into the same segment (sending the same name,
  // by then unlinked); shm_pool lists every segment the trainer still holds, and the engine drops
  // its kept mappings of any other. The trainer rewrites a segment only once no engine's reply
  // lists it in shm_in_use.
  bool shm_keep = false;
  std::vector<std::string> shm_pool;
  // ipc, pull form (comm/ipc_pull.h; then shm_name is empty and shm_stream true): the engine
  // copies the transfer with process_vm_readv from process pull_pid, where the streamed layout
  // (header, then the transfer at shm_offset) starts at address pull_addr. pull_addrs, when not
  // empty (one per tensor), says where each tensor's bytes are in that process instead (the
  // caller's own tensors, no transfer buffer): the header at pull_addr then carries only the
  // checksums, `written` reaching a tensor's end once its checksum is there.
  int64_t pull_pid = 0;
  uint64_t pull_addr = 0;
  std::vector<uint64_t> pull_addrs;
  std::string disk_path;                       // disk
  uint64_t bucket_bytes = uint64_t{64} << 20;  // broadcast
  int root = 0;                                // broadcast: the sender's rank in the broadcast group (below)
  // broadcast: the group the bytes go over. Epoch 0: the whole weight group (trainer + every serve
  // rank). After engines died, the trainer re-forms it over the survivors under a new epoch:
  // group_ranks lists the members (ranks of the weight group, increasing), and only they take part
  // (comm/mpi_group.h, survivors()).
  uint64_t group_epoch = 0;
  std::vector<int> group_ranks;
  // broadcast: the checksums come after the bytes, as a trailer broadcast (8 bytes per tensor,
  // checksum64 little-endian, in list order; MpiGroup::bcast_buckets' trailer), not in
  // tensors[].checksum: the root checksums each segment as it goes out instead of in a pass over
  // every byte before the metadata. Engines verify against the trailer before they commit.
  bool checksum_trailer = false;
};
struct UpdateWeightsReply {
  uint64_t req_id = 0;
  int64_t version = 0;                  // now serving
  uint64_t bytes = 0;                   // bytes received and verified
  double stage_seconds = 0;             // receive + verify
  double commit_seconds = 0;            // waiting for the step boundary (drain: the running batch) + swap
  int zero_copy_tensors = 0;            // tensors served in place from the transfer buffer
  std::vector<std::string> shm_in_use;  // ipc: kept segments the serving weights still point into
};

// op "get_weight_version" {req_id} -> "get_weight_version.reply" {req_id, version, shm_in_use}
struct WeightVersionReply {
  uint64_t req_id = 0;
  int64_t version = 0;
  std::vector<std::string> shm_in_use;  // ipc: kept segments the serving weights point into (as in
                                        // update_weights.reply; a router: the union)
};

// op "get_weights_checksum" {req_id, names?} -> "get_weights_checksum.reply"
struct TensorChecksum {
  std::string name;
  std::string dtype;      // as served (matrices keep f32/bf16; norms and biases are f32)
  uint64_t checksum = 0;  // checksum64 of the served bytes
  int tp_rank = 0;        // tensor parallelism: the rank whose shard this is (model/tp.h)
};
struct WeightsChecksumCall {
  uint64_t req_id = 0;
  std::vector<std::string> names;  // empty: every tensor
};
struct WeightsChecksumReply {
  uint64_t req_id = 0;
  int rank = 0;
  int64_t version = 0;
  int tp_size = 1;  // > 1: each tensor appears once per TP rank, checksum of that rank's shard
  std::vector<TensorChecksum> tensors;
};

// op "release_memory" / "resume_memory" {req_id, tags: ["weights", "kv_cache"]}
//   -> "<op>.reply" {req_id, bytes, version, released}: bytes released (release) or brought back
//   (resume); version: the weight version now served, null while the weights are released (after
//   a resume, weights that came from a push stay released until the next update commits: only the
//   model folder's version 0 can be reloaded); released: the tags still released.
struct MemoryCall {
  uint64_t req_id = 0;
  std::vector<std::string> tags;
};
struct MemoryReply {
  uint64_t req_id = 0;
  uint64_t bytes = 0;
  std::optional<int64_t> version;     // nullopt (null on the wire): no weights are served
  std::vector<std::string> released;  // "weights", "kv_cache": what is still released
};

// op "shutdown" {req_id} -> "shutdown.reply" {req_id}; the server drains and exits 0.

// ---- Router operations (a router answers every op above like an engine, plus this one)

// One engine behind a router, as the router sees it.
struct EngineState {
  int index = 0;
  std::string endpoint;
  bool alive = true;      // false once it stopped answering heartbeats (never used again)
  bool updating = false;  // a weight update is in flight to it: new requests go elsewhere
  std::string status;     // its last health status ("serving", "draining", "released"; "" before any)
  int in_flight = 0;      // requests the router has on it (a re-routed sample counts as one)
  int in_flight_samples = 0;
  int waiting = 0, running = 0;  // its last get_load
  int64_t weight_version = 0;    // its last health reply
  int rerouted = 0;              // requests moved to other engines when it stopped answering
  int finished = 0;              // requests (or re-routed samples) it completed for the router
  int sessions = 0;              // sessions open on it through the router
};
// op "get_engines" {req_id} -> "get_engines.reply" {req_id, engines: [EngineState]}
struct EnginesReply {
  uint64_t req_id = 0;
  std::vector<EngineState> engines;
};

}  // namespace zr
