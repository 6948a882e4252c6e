// Private to the engine's .cpp files: per-request and per-sample state.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "actors/engine/engine.h"
#include "model/text_streamer.h"

namespace zr {

using Clock = std::chrono::steady_clock;

// A multi-turn session: the tokens so far and their KV (positions [0, computed)), kept between
// turns so the next turn prefills only its new tokens.
// The KV itself waits in the scheduler's cache under `key` (evicted under memory pressure or by
// flush_cache: the next turn then recomputes).
struct Engine::Session {
  std::string id;
  int64_t key = 0;  // the scheduler's cache key of its KV
  std::vector<int> tokens;
  int64_t kv_version = 0;  // weights that computed the KV; other versions never reuse it
  bool busy = false;       // a turn is in flight
  Clock::time_point last_used;
};

// State shared by the n samples of one request (or one score request).
struct Engine::Request {
  GenerateRequest gen;  // input_ids filled in
  bool is_score = false;
  ScoreRequest score;
  ScoreOutput score_out;
  uint64_t seed = 0;
  Clock::time_point start;
  bool forked = false;                 // the n samples have been created
  std::shared_ptr<Session> session;    // multi-turn continuation, or null
  bool input_done = false;             // input logprobs computed (never recomputed after preemption)
  std::vector<TokenLogprob> input_lp;  // positions [logprob_start_len, prompt_len)
  std::vector<std::vector<TokenLogprob>> input_top, input_ids;
  int live_samples = 1;
  LogprobOptions lo() const {
    if (is_score) return {true, LogprobMode::default_mode, score.top_logprobs_num, {}};
    return {gen.return_logprob, gen.logprob_mode, gen.top_logprobs_num, gen.token_ids_logprob};
  }
  float lp_temperature() const {
    if (is_score) return score.temperature;
    float t = gen.sampling_params.temperature;
    return t > 0 ? t : 1.0f;
  }
};

struct Engine::Sequence {
  int64_t id = 0;
  std::shared_ptr<Request> req;
  int index = 0;  // sample index within the request
  std::vector<int> tokens;
  int prompt_len = 0;
  std::unique_ptr<TextStreamer> text;  // output text: stop strings, what may be streamed
  MetaInfo meta;
  bool done = false;
  size_t streamed_ids = 0;  // output ids already sent in stream chunks
  int num_outputs() const { return static_cast<int>(tokens.size()) - prompt_len; }
};

struct Engine::PendingUpdate {
  StagedWeights weights;
  UpdateOptions opt;
};

struct Engine::SampleJob {
  enum class Kind { sample, input, score } kind;
  Sequence* seq;
  const float* row;
  int token = -1;  // input / score: the token whose logprob is wanted
  int slot = 0;    // input / score: index in the destination vector
  SampledToken result;
};

// return_text_in_logprobs (engine.cpp): fills the null texts of logprob entries with each token
// decoded alone, special tokens kept (SGLang's batch_decode of the ids).
void fill_logprob_texts(const Tokenizer& tok, std::vector<TokenLogprob>& lps);
void fill_logprob_texts(const Tokenizer& tok, MetaInfo& m);

}  // namespace zr
