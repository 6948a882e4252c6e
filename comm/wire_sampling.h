// The sampling_params fields the wire carries, listed once for both encoders (the json form in
// wire_codec.cpp and the direct msgpack writer in wire_pack.cpp): only fields that differ from
// SamplingParams' defaults, floats as json_float rounds them. `put(key, value)` is called with an
// int, a double, a bool, a uint64_t, a vector of strings or ints, or the logit_bias list.
#pragma once

#include "comm/json_codec.h"
#include "comm/messages.h"

namespace zr::wire {

template <class Put>
void for_each_sampling_field(const SamplingParams& p, Put&& put) {
  const SamplingParams d;
  auto num = [&](const char* k, int v, int dv) {
    if (v != dv) put(k, v);
  };
  auto real = [&](const char* k, float v, float dv) {
    if (v != dv) put(k, json_float(v));
  };
  num("max_new_tokens", p.max_new_tokens, d.max_new_tokens);
  num("min_new_tokens", p.min_new_tokens, d.min_new_tokens);
  real("temperature", p.temperature, d.temperature);
  real("top_p", p.top_p, d.top_p);
  num("top_k", p.top_k, d.top_k);
  real("min_p", p.min_p, d.min_p);
  real("repetition_penalty", p.repetition_penalty, d.repetition_penalty);
  real("frequency_penalty", p.frequency_penalty, d.frequency_penalty);
  real("presence_penalty", p.presence_penalty, d.presence_penalty);
  if (!p.stop.empty()) put("stop", p.stop);
  if (!p.stop_token_ids.empty()) put("stop_token_ids", p.stop_token_ids);
  if (p.ignore_eos != d.ignore_eos) put("ignore_eos", p.ignore_eos);
  if (p.skip_special_tokens != d.skip_special_tokens) put("skip_special_tokens", p.skip_special_tokens);
  if (p.no_stop_trim != d.no_stop_trim) put("no_stop_trim", p.no_stop_trim);
  num("n", p.n, d.n);
  if (p.seed) put("seed", *p.seed);
  if (!p.logit_bias.empty()) put("logit_bias", p.logit_bias);
}

}  // namespace zr::wire
