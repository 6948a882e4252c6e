// Validation of client requests against a model, before anything is queued. Every error names the
// field (e.g. "sampling_params.top_p: must be in (0, 1], got 1.5").
#pragma once

#include "comm/call_limits.h"
#include "comm/messages.h"
#include "comm/status.h"
#include "model/config.h"

namespace zr {

constexpr int kMaxSamplesPerRequest = 1024;

// Checks sampling parameters and logprob options (ids against vocab_size).
Status validate_sampling(const SamplingParams& p, int vocab_size);
// Checks a request whose prompt is already tokenized into req.input_ids.
Status validate_generate(const GenerateRequest& req, const ModelConfig& cfg);
// After validate_generate: clips sampling_params.max_new_tokens to generation_budget (SGLang's rule;
// kv_positions: the KV cache's positions). too_long naming input_ids when the budget leaves fewer
// than min_new_tokens; a budget of 0 or less with min_new_tokens 0 makes max_new_tokens 0 (the
// request ends at once with finish "length"), which is how a re-routed sample at the end of its
// budget finishes.
Status clip_max_new_tokens(GenerateRequest& req, const ModelConfig& cfg, int kv_positions);
Status validate_score(const ScoreRequest& req, const ModelConfig& cfg);
// Text needs a tokenizer: a text prompt, and stop strings (matched on the output text, so they
// also need `decodes`: the request's output is decoded), and so does return_text_in_logprobs.
Status validate_text_use(const GenerateRequest& req, bool has_tokenizer, bool decodes);

}  // namespace zr
