"""verl's ``main_generation`` on zrollout: responses for a dataset of prompts, JSONL in and out.

    python3 -m zrollout.main_generation data.path=prompts.jsonl data.output_path=out.jsonl \\
        data.n_samples=4 model.path=/models/stories260K rollout.temperature=1.0 rollout.top_k=50 \\
        rollout.top_p=0.7 rollout.prompt_length=256 rollout.response_length=64 \\
        rollout.tensor_model_parallel_size=1

Overrides are verl's Hydra keys (``verl/trainer/config/generation.yaml``), with its defaults:
``data.prompt_key`` (prompt), ``data.n_samples`` (5), ``data.batch_size`` (128),
``rollout.temperature`` (1.0), ``rollout.top_k`` (50; 0 or -1 is off), ``rollout.top_p`` (0.7),
``rollout.prompt_length`` (1536: longer prompts keep their first tokens, as verl's tokenizer
truncates), ``rollout.response_length`` (512), ``rollout.tensor_model_parallel_size`` (1),
``rollout.ignore_eos``, ``rollout.do_sample`` (False: greedy), ``rollout.gpu_memory_utilization``
(the KV budget, as ``Engine(mem_fraction_static=...)``; default: the server's), ``rollout.max_num_seqs``
(``--max-running``), ``rollout.max_num_batched_tokens`` (``--max-step-tokens``). Keys for GPUs, Ray
and the trainer (``trainer.*``, ``ray_init.*``, ``actor.*``, ``rollout.dtype``...) are accepted and
ignored. zrollout's own: ``rollout.kv_cache_mb``, ``rollout.threads``, ``rollout.seed`` (sample j
of prompt i uses seed + i * n_samples + j), ``rollout.endpoint`` (use a running server).

Input lines are JSON objects whose ``data.prompt_key`` is a text or a list of token ids (verl's chat
message lists need a chat template, which zrollout does not apply: such a line is refused). Output
lines are the input objects with ``responses`` (``n_samples`` texts, as verl writes) and
``response_ids`` added, in input order. Temperature 0 requires ``data.n_samples=1`` (as verl).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import errors
from .engine import Engine
from .integrations._common import tokenize

DEFAULTS = {
    "data": {"path": None, "prompt_key": "prompt", "n_samples": 5, "output_path": None, "batch_size": 128},
    "model": {"path": None},
    "rollout": {"temperature": 1.0, "top_k": 50, "top_p": 0.7, "prompt_length": 1536, "response_length": 512,
                "tensor_model_parallel_size": 1, "ignore_eos": False, "do_sample": True,
                "gpu_memory_utilization": None, "max_num_seqs": None, "max_num_batched_tokens": None,
                "kv_cache_mb": None, "threads": None, "seed": None, "endpoint": None},
}
_IGNORED_SECTIONS = ("trainer", "ray_init", "ray_kwargs", "actor")


def parse_value(text: str) -> Any:
    """A Hydra-style override value: bool, null, int, float, or string (quotes removed)."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_overrides(argv: list[str]) -> dict:
    """``["data.path=x", "rollout.top_k=5"]`` merged over :data:`DEFAULTS`."""
    cfg = {section: dict(values) for section, values in DEFAULTS.items()}
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep or "." not in key:
            raise errors.invalid(key or arg, "expected section.key=value")
        section, name = key.split(".", 1)
        if section in _IGNORED_SECTIONS or (section == "rollout" and name not in cfg["rollout"]):
            continue  # GPU, Ray and trainer settings: nothing to do on this engine
        if section not in cfg or name not in cfg[section]:
            raise errors.invalid(key, "not a key of verl's main_generation")
        cfg[section][name] = parse_value(value)
    return cfg


def read_prompts(path: str, key: str) -> tuple[list[dict], list[Any]]:
    rows, prompts = [], []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        prompt = row.get(key) if isinstance(row, dict) else None
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            raise errors.unsupported("data.prompt_key", f"line {lineno}: chat messages need a chat template; "
                                     "give text or token ids")
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt))):
            raise errors.invalid("data.prompt_key", f"line {lineno}: {key!r} is not a text or a list of token ids")
        rows.append(row)
        prompts.append(prompt)
    return rows, prompts


def sampling_params(cfg: dict) -> dict:
    r, n = cfg["rollout"], int(cfg["data"]["n_samples"])
    greedy = r["temperature"] == 0 or r["do_sample"] is False
    if n < 1:
        raise errors.invalid("data.n_samples", "must be >= 1")
    if greedy and n != 1:
        raise errors.invalid("data.n_samples", "temperature 0 (greedy) needs n_samples=1")
    top_k = int(r["top_k"]) if r["top_k"] is not None else -1
    return {"n": n, "max_new_tokens": int(r["response_length"]), "temperature": 0.0 if greedy else float(r["temperature"]),
            "top_p": float(r["top_p"]), "top_k": top_k if top_k > 0 else -1, "ignore_eos": bool(r["ignore_eos"])}


def engine_for(cfg: dict) -> Engine:
    r = cfg["rollout"]
    if r["endpoint"]:
        return Engine(endpoint=r["endpoint"])
    if not cfg["model"]["path"]:
        raise errors.invalid("model.path", "required (or rollout.endpoint)")
    flags = {"max_step_tokens": r["max_num_batched_tokens"]} if r["max_num_batched_tokens"] else {}
    return Engine(model_path=cfg["model"]["path"], tp_size=int(r["tensor_model_parallel_size"]),
                  max_running_requests=r["max_num_seqs"], mem_fraction_static=r["gpu_memory_utilization"],
                  kv_cache_mb=r["kv_cache_mb"], threads=r["threads"], launch_options=flags)


def run(cfg: dict) -> int:
    data = cfg["data"]
    if not data["path"] or not data["output_path"]:
        raise errors.invalid("data.path" if not data["path"] else "data.output_path", "required")
    rows, prompts = read_prompts(data["path"], data["prompt_key"])
    sp = sampling_params(cfg)
    limit, batch, seed = int(cfg["rollout"]["prompt_length"]), int(data["batch_size"]), cfg["rollout"]["seed"]
    with engine_for(cfg) as engine:
        for start in range(0, len(rows), batch):
            chunk = prompts[start:start + batch]
            texts = [i for i, p in enumerate(chunk) if isinstance(p, str)]
            ids = [list(p) for p in chunk]
            for i, toks in zip(texts, tokenize(engine, [chunk[i] for i in texts])):
                ids[i] = toks
            params = [dict(sp, seed=int(seed) + (start + i) * sp["n"]) if seed is not None else sp
                      for i in range(len(chunk))]
            outs = engine.generate(input_ids=[t[:limit] for t in ids], sampling_params=params)
            outs = [outs] if isinstance(outs, dict) else outs
            for i, row in enumerate(rows[start:start + batch]):
                samples = outs[i * sp["n"]:(i + 1) * sp["n"]]
                row["responses"] = [o["text"] for o in samples]
                row["response_ids"] = [o["output_ids"] for o in samples]
    out = Path(data["output_path"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"zrollout.main_generation: {len(rows)} prompts x {sp['n']} samples -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_overrides(sys.argv[1:] if argv is None else argv))
    except errors.ZrolloutError as e:
        print(f"zrollout.main_generation: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
