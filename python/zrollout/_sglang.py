"""SGLang's ``Engine.generate`` arguments and results, translated to and from the wire.

SGLang takes one prompt or a batch in parallel lists (``prompt=[...]`` or ``input_ids=[[...]]``
with ``sampling_params``, ``rid``, ``return_logprob``... each a scalar for all or a list, one per
prompt) and answers a dict for one prompt, a list for a batch (and for ``n > 1``: prompt-major,
as the wire does). Names SGLang has and the wire does not:

- translated: ``sampling_seed`` -> ``seed``; ``session_params={"id": s}`` -> ``session_id``;
  ``max_new_tokens=None`` -> the context length; a temperature below 1e-6 -> 0 (greedy);
  ``stop_token_ids`` as a set -> a sorted list.
- honoured here: ``no_stop_trim`` (the matched stop string is put back at the end of ``text``);
  ``stream_interval`` (a stream yields every k-th token's chunk, and the last);
  ``return_text_in_logprobs`` (passed on: the server decodes each entry's token, as SGLang does);
  ``spaces_between_special_tokens`` when it changes nothing (True, or special tokens skipped).
- refused with :class:`zrollout.errors.Unsupported` naming the field, never dropped: ``image_data``,
  ``audio_data``, ``video_data``, ``input_embeds``, ``lora_path``, ``return_hidden_states``,
  ``json_schema``, ``regex``, ``ebnf``, ``structural_tag``, ``stop_regex``, ``custom_params``,
  ``session_params`` beyond ``id``, ``priority``, disaggregation and data-parallel routing fields,
  and any other keyword with a non-default value.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from . import errors

# Request-level keywords the wire cannot honour: a value other than the default is refused.
_UNSUPPORTED_FIELDS = ("image_data", "audio_data", "video_data", "input_embeds", "lora_path", "return_hidden_states",
                       "bootstrap_host", "bootstrap_port", "bootstrap_room", "data_parallel_rank", "routed_dp_rank",
                       "disagg_prefill_dp_rank", "priority", "return_routed_experts", "require_reasoning",
                       "mm_hashes", "cache_salt", "external_trace_header", "kv_router_hint", "modalities")
_UNSUPPORTED_SAMPLING = ("json_schema", "regex", "ebnf", "structural_tag", "stop_regex", "custom_params")
_PER_REQUEST = ("return_logprob", "logprob_start_len", "top_logprobs_num", "token_ids_logprob",
                "custom_logit_processor", "rid", "sampling_params", "return_text_in_logprobs")
_GREEDY_BELOW = 1e-6  # SGLang's _SAMPLING_EPS: a smaller temperature samples greedily


def _is_batch(prompt: Any, input_ids: Any) -> bool:
    if prompt is not None:
        return not isinstance(prompt, str)
    if input_ids is None:
        raise errors.invalid("prompt", "give a prompt or input_ids")
    if hasattr(input_ids, "ndim"):
        return input_ids.ndim == 2
    return len(input_ids) > 0 and not isinstance(input_ids[0], int) and hasattr(input_ids[0], "__len__")


def _pick(value: Any, i: int, batch: int, name: str, listy: bool = False) -> Any:
    """Element i of a parallel-list argument, or the scalar itself (``listy``: a list value is a scalar
    unless it is a list of lists, e.g. ``token_ids_logprob``)."""
    is_list = isinstance(value, (list, tuple)) and (not listy or (value and isinstance(value[0], (list, tuple))))
    if isinstance(value, dict) or value is None or not is_list:
        return value
    if len(value) != batch:
        raise errors.invalid(name, f"a list of {len(value)} for a batch of {batch}")
    return value[i]


class Translation:
    """The wire requests of one SGLang generate call, and what to do with the replies."""

    def __init__(self):
        self.requests: list[dict] = []
        self.single = True          # answer a dict, not a list
        self.no_stop_trim: list[bool] = []  # per request
        self.stream_interval = 1
        self.keep_text = True


def sampling_params(sp: dict | None, *, context_length: int, rng: random.Random | None, field: str) -> tuple[dict, bool, int]:
    """SGLang sampling params -> (wire params, no_stop_trim, stream_interval)."""
    out: dict = {}
    no_stop_trim, stream_interval = False, 1
    for key, value in (sp or {}).items():
        name = f"{field}.{key}"
        if key in _UNSUPPORTED_SAMPLING:
            if value is not None:
                raise errors.unsupported(name, "constrained decoding is not available in zrollout")
        elif key == "sampling_seed":
            if value is not None:
                if (sp or {}).get("seed") is not None:
                    raise errors.invalid(name, "give seed or sampling_seed, not both")
                out["seed"] = int(value)
        elif key == "no_stop_trim":
            no_stop_trim = bool(value)
        elif key == "stream_interval":
            if value is not None:
                if int(value) < 1:
                    raise errors.invalid(name, "must be >= 1")
                stream_interval = int(value)
        elif key == "spaces_between_special_tokens":
            if value is False and (sp or {}).get("skip_special_tokens", True) is not True:
                raise errors.unsupported(name, "special tokens are always joined without spaces")
        elif key == "max_new_tokens":
            out[key] = context_length if value is None else value
        elif key == "temperature":
            if value is not None:
                out[key] = 0.0 if 0 <= value < _GREEDY_BELOW else float(value)
        elif key == "stop_token_ids":
            if value:
                out[key] = sorted(int(t) for t in value)
        elif key == "logit_bias":
            if value:
                out[key] = {str(k): float(v) for k, v in value.items()}
        elif value is not None:
            out[key] = value  # the server checks names and types, and names the field if wrong
    if rng is not None and "seed" not in out and out.get("temperature", 1.0) != 0.0:
        out["seed"] = rng.getrandbits(63)  # Engine(random_seed=...): the same calls draw the same tokens
    return out, no_stop_trim, stream_interval


def check_unsupported(extra: dict) -> None:
    for key in _UNSUPPORTED_FIELDS:
        if extra.pop(key, None) not in (None, False, [], {}):
            raise errors.unsupported(key, "not available in zrollout (text-only CPU engine, one data-parallel rank)")
    for key, value in extra.items():
        if value not in (None, False):
            raise errors.unsupported(key, "not an Engine.generate argument zrollout can honour")


def translate(*, prompt=None, input_ids=None, sampling_params_arg=None, stream=False, session_params=None,
              session_id=None, context_length: int, rng: random.Random | None, skip_tokenizer_init: bool,
              per_request: dict, extra: dict) -> Translation:
    """One SGLang ``generate`` call -> wire requests (see the module comment)."""
    check_unsupported(dict(extra))
    if prompt is not None and input_ids is not None:
        raise errors.invalid("input_ids", "give either prompt (text) or input_ids, not both")
    if skip_tokenizer_init and prompt is not None:
        raise errors.invalid("prompt", "skip_tokenizer_init=True: give input_ids")
    if session_params:
        unknown = {k for k, v in session_params.items() if k != "id" and v not in (None, False, -1, 0)}
        if unknown:
            key = sorted(unknown)[0]
            raise errors.unsupported(f"session_params.{key}", "zrollout sessions only append turns")
        session_id = session_params.get("id") or session_id
    t = Translation()
    t.keep_text = not skip_tokenizer_init
    t.single = not _is_batch(prompt, input_ids)
    prompts = [prompt] if (prompt is not None and t.single) else prompt
    ids = [input_ids] if (input_ids is not None and t.single) else input_ids
    batch = len(prompts if prompts is not None else ids)
    if batch == 0:
        raise errors.invalid("prompt" if prompts is not None else "input_ids", "an empty batch")
    for i in range(batch):
        field = "sampling_params" if t.single else f"sampling_params[{i}]"
        sp = _pick(sampling_params_arg, i, batch, "sampling_params")
        wire_sp, no_trim, interval = sampling_params(sp, context_length=context_length, rng=rng, field=field)
        req: dict = {"sampling_params": wire_sp}
        if prompts is not None:
            req["text"] = prompts[i]
        else:
            req["input_ids"] = ids[i]
        for key in ("return_logprob", "logprob_start_len", "top_logprobs_num", "custom_logit_processor"):
            v = _pick(per_request.get(key), i, batch, key)
            if v is not None:
                req[key] = v
        # SGLang's Engine makes one too; here it also maps stream chunks back to their prompt.
        req["rid"] = _pick(per_request.get("rid"), i, batch, "rid") or uuid.uuid4().hex
        til = _pick(per_request.get("token_ids_logprob"), i, batch, "token_ids_logprob", listy=True)
        if til:
            req["token_ids_logprob"] = list(til)
        if _pick(per_request.get("return_text_in_logprobs"), i, batch, "return_text_in_logprobs"):
            req["return_text_in_logprobs"] = True  # the server fills the text of every logprob entry
        if req.get("logprob_start_len") is None:
            req.pop("logprob_start_len", None)
        if session_id:
            req["session_id"] = session_id
        if stream:
            req["stream"] = True
        t.requests.append(req)
        t.no_stop_trim.append(no_trim)
        t.stream_interval = max(t.stream_interval, interval)
    t.single = t.single and all(r["sampling_params"].get("n", 1) == 1 for r in t.requests)
    return t


def _tuples(rows: Any) -> Any:
    """[[lp, id, text], ...] -> [(lp, id, text), ...]; nested per-position lists likewise."""
    if not isinstance(rows, list):
        return rows
    return [tuple(r) if isinstance(r, list) and len(r) == 3 and not isinstance(r[0], list) else _tuples(r)
            for r in rows]


_LOGPROB_KEYS = ("output_token_logprobs", "input_token_logprobs", "output_top_logprobs", "input_top_logprobs",
                 "output_token_ids_logprobs", "input_token_ids_logprobs")


def sample_output(out: dict, no_stop_trim: bool, keep_text: bool) -> dict:
    """One wire SampleOutput -> SGLang's ``{"text", "output_ids", "meta_info"}``."""
    meta = dict(out.get("meta_info") or {})
    for key in _LOGPROB_KEYS:
        if key in meta:
            meta[key] = _tuples(meta[key])
    text = out.get("text", "")
    fr = meta.get("finish_reason") or {}
    if no_stop_trim and fr.get("type") == "stop" and isinstance(fr.get("matched"), str):
        text += fr["matched"]
    res = {"text": text, "output_ids": list(out.get("output_ids", [])), "meta_info": meta}
    if not keep_text:
        del res["text"]
    return res


def outputs(t: Translation, reply: dict) -> dict | list[dict]:
    """A ``generate.reply`` -> SGLang's result: a dict for one prompt (n = 1), else a list."""
    index = {r["rid"]: i for i, r in enumerate(t.requests) if "rid" in r}
    res = [sample_output(o, t.no_stop_trim[index.get(o.get("rid"), 0)], t.keep_text) for o in reply["outputs"]]
    return res[0] if t.single else res


class StreamAssembler:
    """Wire chunks -> SGLang's stream items, as SGLang's default (non-incremental) streaming yields
    them: each item is the sample's output so far (cumulative ``text`` and ``output_ids``,
    ``meta_info`` with ``finish_reason`` None), and the sample's last item is its final output
    (``finish_reason`` set). So that the final output replaces the last partial item rather than
    repeating it, each sample's newest item is held until the next one (or the reply) arrives.
    Batch items carry ``index`` (the sample's place in the flattened, prompt-major result).
    """

    def __init__(self, t: Translation):
        self.t = t
        self.rid_index = {r["rid"]: i for i, r in enumerate(t.requests)}
        self.samples: dict[tuple[str, int], dict] = {}
        self.held: dict[tuple[str, int], dict] = {}

    def _position(self, rid: str, index: int) -> int:
        base = sum(r["sampling_params"].get("n", 1) for r in self.t.requests[:self.rid_index.get(rid, 0)])
        return base + index

    def chunk(self, ch: dict) -> dict | None:
        """The item to yield now (the sample's previous one), or None."""
        key = (ch.get("rid", ""), int(ch.get("index", 0)))
        s = self.samples.setdefault(key, {"text": "", "output_ids": [], "logprobs": [], "since": 0})
        s["text"] += ch.get("text", "")
        s["output_ids"] += ch.get("output_ids", [])
        s["logprobs"] += ch.get("output_token_logprobs", [])
        s["since"] += len(ch.get("output_ids", []))
        if s["since"] < self.t.stream_interval:
            return None
        s["since"] = 0
        req = self.t.requests[self.rid_index.get(key[0], 0)]
        meta = {"id": key[0], "finish_reason": None, "completion_tokens": len(s["output_ids"])}
        if req.get("return_logprob"):
            meta["output_token_logprobs"] = _tuples([list(x) for x in s["logprobs"]])
        item = {"text": s["text"], "output_ids": list(s["output_ids"]), "meta_info": meta}
        if not self.t.keep_text:
            del item["text"]
        if not self.t.single:
            item["index"] = self._position(*key)
        previous = self.held.get(key)
        self.held[key] = item
        return previous

    def final(self, reply: dict) -> list[dict]:
        """The items left: held partial items the final outputs do not supersede, then the finals."""
        res = outputs(self.t, reply)
        finals = [res] if isinstance(res, dict) else res
        superseded = set()
        for i, o in enumerate(reply["outputs"]):
            key = (o.get("rid", ""), int(o.get("index", 0)))
            held = self.held.get(key)
            if held is not None and len(held["output_ids"]) == len(o.get("output_ids", [])):
                superseded.add(key)
            if not self.t.single:
                finals[i]["index"] = i
        early = [item for key, item in self.held.items() if key not in superseded]
        return early + finals
