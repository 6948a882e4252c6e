#include "actors/engine/request_validation.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace zr {

namespace {

Status bad(const std::string& field, const std::string& what) {
  return make_error(ErrorCode::invalid_argument, field + ": " + what);
}

Status check_ids(const std::vector<int>& ids, int vocab, const std::string& field) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      return make_error(ErrorCode::out_of_range, field + "[" + std::to_string(i) + "]: token id " +
                                                     std::to_string(ids[i]) + " is outside the vocabulary [0, " +
                                                     std::to_string(vocab) + ")");
  return {};
}

bool finite(float v) { return std::isfinite(v); }

Status check_prompt_fits(size_t prompt_len, int min_extra, const ModelConfig& cfg, const std::string& field) {
  if (prompt_len == 0) return bad(field, "empty prompt");
  if (static_cast<int64_t>(prompt_len) + min_extra > cfg.max_position_embeddings)
    return make_error(ErrorCode::too_long, field + ": " + std::to_string(prompt_len) + " tokens (+" +
                                               std::to_string(min_extra) + " to generate) exceed the context length " +
                                               std::to_string(cfg.max_position_embeddings));
  return {};
}

}  // namespace

Status validate_sampling(const SamplingParams& p, int vocab) {
  const std::string f = "sampling_params.";
  if (p.max_new_tokens < 0) return bad(f + "max_new_tokens", "must be >= 0");
  if (p.min_new_tokens < 0 || p.min_new_tokens > p.max_new_tokens)
    return bad(f + "min_new_tokens", "must be in [0, max_new_tokens]");
  if (!finite(p.temperature) || p.temperature < 0) return bad(f + "temperature", "must be a finite number >= 0");
  if (!finite(p.top_p) || p.top_p <= 0 || p.top_p > 1) return bad(f + "top_p", "must be in (0, 1]");
  if (p.top_k == 0 || p.top_k < -1) return bad(f + "top_k", "must be -1 (off) or >= 1");
  if (!finite(p.min_p) || p.min_p < 0 || p.min_p > 1) return bad(f + "min_p", "must be in [0, 1]");
  if (!finite(p.repetition_penalty) || p.repetition_penalty <= 0) return bad(f + "repetition_penalty", "must be > 0");
  if (!finite(p.frequency_penalty) || std::fabs(p.frequency_penalty) > 2)
    return bad(f + "frequency_penalty", "must be in [-2, 2]");
  if (!finite(p.presence_penalty) || std::fabs(p.presence_penalty) > 2)
    return bad(f + "presence_penalty", "must be in [-2, 2]");
  if (p.n < 1 || p.n > kMaxSamplesPerRequest)
    return bad(f + "n", "must be in [1, " + std::to_string(kMaxSamplesPerRequest) + "]");
  for (size_t i = 0; i < p.stop.size(); ++i)
    if (p.stop[i].empty()) return bad(f + "stop[" + std::to_string(i) + "]", "empty stop string");
  ZR_RETURN_IF_ERROR(check_ids(p.stop_token_ids, vocab, f + "stop_token_ids"));
  for (const auto& [id, b] : p.logit_bias) {
    if (id < 0 || id >= vocab)
      return make_error(ErrorCode::out_of_range,
                        f + "logit_bias: token id " + std::to_string(id) + " is outside the vocabulary");
    if (!finite(b)) return bad(f + "logit_bias[" + std::to_string(id) + "]", "must be finite");
  }
  const LogitProcessors& lp = p.processors;
  if (lp.allowed_token_ids) {
    if (lp.allowed_token_ids->empty()) return bad(f + "allowed_token_ids", "empty action mask");
    ZR_RETURN_IF_ERROR(check_ids(*lp.allowed_token_ids, vocab, f + "allowed_token_ids"));
  }
  ZR_RETURN_IF_ERROR(check_ids(lp.disallowed_token_ids, vocab, f + "disallowed_token_ids"));
  if (lp.temperature_schedule) {
    const TemperatureSchedule& s = *lp.temperature_schedule;
    if (!finite(s.initial) || s.initial < 0 || !finite(s.final) || s.final < 0)
      return bad(f + "temperature_schedule", "initial and final must be finite and >= 0");
    if (s.warmup_tokens < 0) return bad(f + "temperature_schedule.warmup_tokens", "must be >= 0");
  }
  return {};
}

Status validate_generate(const GenerateRequest& req, const ModelConfig& cfg) {
  if (req.rid.empty()) return bad("rid", "must be a non-empty string");
  ZR_RETURN_IF_ERROR(validate_sampling(req.sampling_params, cfg.vocab_size));
  const char* field = req.text ? "text" : "input_ids";
  ZR_RETURN_IF_ERROR(check_ids(req.input_ids, cfg.vocab_size, "input_ids"));
  ZR_RETURN_IF_ERROR(
      check_prompt_fits(req.input_ids.size(), std::max(1, req.sampling_params.min_new_tokens), cfg, field));
  const int plen = static_cast<int>(req.input_ids.size());
  if (req.logprob_start_len < -1 || req.logprob_start_len >= plen)
    return bad("logprob_start_len", "must be -1 or in [0, prompt length " + std::to_string(plen) + ")");
  if (req.top_logprobs_num < 0 || req.top_logprobs_num > cfg.vocab_size)
    return bad("top_logprobs_num", "must be in [0, vocab_size]");
  ZR_RETURN_IF_ERROR(check_ids(req.token_ids_logprob, cfg.vocab_size, "token_ids_logprob"));
  return {};
}

Status clip_max_new_tokens(GenerateRequest& req, const ModelConfig& cfg, int kv_positions) {
  SamplingParams& sp = req.sampling_params;
  const int prompt = static_cast<int>(req.input_ids.size());
  const int budget = generation_budget(prompt, cfg.max_position_embeddings, kv_positions);
  if (sp.min_new_tokens > std::max(0, budget))
    return make_error(ErrorCode::too_long, std::string(req.text ? "text" : "input_ids") + ": " +
                                               std::to_string(prompt) + " tokens leave room for " +
                                               std::to_string(std::max(0, budget)) + " new tokens (context length " +
                                               std::to_string(cfg.max_position_embeddings) +
                                               " less 2, as SGLang), fewer than sampling_params.min_new_tokens " +
                                               std::to_string(sp.min_new_tokens));
  sp.max_new_tokens = std::min(sp.max_new_tokens, std::max(0, budget));
  return {};
}

Status validate_text_use(const GenerateRequest& req, bool has_tokenizer, bool decodes) {
  const std::string stop = "sampling_params.stop";
  if (req.return_text_in_logprobs && (!has_tokenizer || !decodes))
    return bad("return_text_in_logprobs",
               has_tokenizer ? "token text is off (detokenize: false)" : "this model has no tokenizer");
  if (!has_tokenizer) {
    if (req.text) return bad("text", "this model has no tokenizer; send input_ids");
    if (!req.sampling_params.stop.empty()) return bad(stop, "this model has no tokenizer; use stop_token_ids");
  } else if (!decodes && !req.sampling_params.stop.empty()) {
    return bad(stop, "stop strings need the output text, which is off (detokenize: false); use stop_token_ids");
  }
  return {};
}

Status validate_score(const ScoreRequest& req, const ModelConfig& cfg) {
  if (req.rid.empty()) return bad("rid", "must be a non-empty string");
  ZR_RETURN_IF_ERROR(check_ids(req.input_ids, cfg.vocab_size, "input_ids"));
  ZR_RETURN_IF_ERROR(check_ids(req.completion_ids, cfg.vocab_size, "completion_ids"));
  ZR_RETURN_IF_ERROR(
      check_prompt_fits(req.input_ids.size(), static_cast<int>(req.completion_ids.size()), cfg, "input_ids"));
  if (!std::isfinite(req.temperature) || req.temperature <= 0) return bad("temperature", "must be a finite number > 0");
  if (req.top_logprobs_num < 0 || req.top_logprobs_num > cfg.vocab_size)
    return bad("top_logprobs_num", "must be in [0, vocab_size]");
  return {};
}

}  // namespace zr
