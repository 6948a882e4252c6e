"""RLinf rollout worker on zrollout.

Follows RLinf's SGLang rollout worker (``rlinf.workers.rollout.sglang.sglang_worker.SGLangWorker``):
its config is read as RLinf writes it (``cfg.rollout.*`` and ``cfg.algorithm.sampling_params.*``,
an OmegaConf ``DictConfig`` or nested dicts) and the rollout keys map to one
:func:`zrollout.launch` call through :class:`zrollout.Engine`:

| RLinf key | zrollout |
|---|---|
| ``rollout.model_dir`` | ``--model`` |
| ``rollout.tensor_parallel_size`` | ``tp`` (ranks under mpirun) |
| ``rollout.max_running_requests`` | ``--max-running`` |
| ``rollout.gpu_memory_utilization`` | the KV budget (``Engine(mem_fraction_static=...)``) |
| ``rollout.detokenize`` | False: token-only outputs (``skip_tokenizer_init``) |
| ``rollout.padding`` | the pad id of the padded output arrays (default: the model's, else EOS) |
| ``rollout.eos`` | stop token(s) replacing the model's EOS |
| ``rollout.return_logprobs`` | sampled-token logprobs in the results |
| ``rollout.validate_weight`` | after each sync, the engine's ``get_weights_checksum`` must equal the trainer's checksum64 of every tensor it sent |

Calls: ``init_worker()`` (starts the engine), ``generate(input_ids, sampling_params=None)`` (SGLang
results), ``rollout(input_ids, n=1)`` (a :class:`RolloutBatch`: ids, logprobs, texts, padded
arrays), ``sync_model_from_actor(state_dict)``, ``offload_engine()`` / ``onload_engine()``,
``shutdown()``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from .. import errors
from ..engine import Engine
from ._common import as_host_array, finish_type, pad_rows

log = logging.getLogger("zrollout")


def _get(cfg: Any, path: str, default: Any = None) -> Any:
    node = cfg
    for part in path.split("."):
        if node is None:
            return default
        node = node.get(part, None) if isinstance(node, dict) or hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def launch_kwargs(cfg: Any) -> dict:
    """RLinf's rollout config -> the keyword arguments of one :class:`zrollout.Engine` (one launch)."""
    model = _get(cfg, "rollout.model_dir")
    if not model:
        raise errors.invalid("rollout.model_dir", "required")
    kwargs: dict[str, Any] = {"model_path": model, "tp_size": int(_get(cfg, "rollout.tensor_parallel_size", 1)),
                              "skip_tokenizer_init": not bool(_get(cfg, "rollout.detokenize", True))}
    if _get(cfg, "rollout.max_running_requests") is not None:
        kwargs["max_running_requests"] = int(_get(cfg, "rollout.max_running_requests"))
    if _get(cfg, "rollout.gpu_memory_utilization") is not None:
        kwargs["mem_fraction_static"] = float(_get(cfg, "rollout.gpu_memory_utilization"))
    for key in ("kv_cache_mb", "threads", "endpoint"):  # zrollout's own, optional
        if _get(cfg, f"rollout.{key}") is not None:
            kwargs[key] = _get(cfg, f"rollout.{key}")
    if kwargs.get("endpoint"):
        kwargs = {k: v for k, v in kwargs.items() if k in ("endpoint", "skip_tokenizer_init")}
    return kwargs


def sampling_params(cfg: Any) -> dict:
    """``cfg.algorithm.sampling_params`` -> SGLang sampling params, as RLinf's worker builds them."""
    sp = _get(cfg, "algorithm.sampling_params", {}) or {}
    max_new = int(_get(sp, "max_new_tokens", 128))
    if _get(sp, "use_greedy", False):
        return {"temperature": 0.0, "max_new_tokens": max_new}
    out = {"max_new_tokens": max_new}
    for key in ("temperature", "top_k", "top_p", "repetition_penalty"):
        if _get(sp, key) is not None:
            out[key] = _get(sp, key)
    return out


@dataclasses.dataclass
class RolloutBatch:
    """One rollout's results, prompt-major (sample j of prompt i at i * n + j)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    response_logprobs: list[list[float]] | None
    response_texts: list[str] | None
    finish_reasons: list[str]
    weight_versions: list[int]
    n: int
    padded_responses: np.ndarray  # [B * n, max response length], right-padded with `pad_id`
    pad_id: int


class RLinfRollout:
    """RLinf rollout worker over zrollout (see the module comment for the config keys)."""

    def __init__(self, cfg: Any, engine: Engine | None = None):
        self.cfg = cfg
        self._engine = engine
        self._owns = engine is None
        self._validate = bool(_get(cfg, "rollout.validate_weight", False))
        self._return_logprobs = bool(_get(cfg, "rollout.return_logprobs", True))
        self._sampling = sampling_params(cfg)
        eos = _get(cfg, "rollout.eos")
        if eos is not None:
            self._sampling["stop_token_ids"] = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
            self._sampling["ignore_eos"] = True
        self._pad: int | None = _get(cfg, "rollout.padding")
        self.last_validation: dict | None = None

    def init_worker(self) -> None:
        if self._engine is None:
            self._engine = Engine(**launch_kwargs(self.cfg))
        if self._pad is None:
            info = self._engine.model_info
            pad = int(info.get("pad_token_id", -1))
            self._pad = pad if pad >= 0 else int((info.get("eos_token_ids") or [0])[0])

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise errors.Unavailable("RLinfRollout: call init_worker() first")
        return self._engine

    def generate(self, input_ids: list[list[int]], sampling_params: dict | None = None, **kwargs: Any):
        return self.engine.generate(input_ids=input_ids, sampling_params=sampling_params or self._sampling,
                                    return_logprob=self._return_logprobs, **kwargs)

    def rollout(self, input_ids: list[list[int]], n: int = 1) -> RolloutBatch:
        sp = dict(self._sampling, n=int(n))
        outs = self.engine.generate(input_ids=[list(p) for p in input_ids], sampling_params=sp,
                                    return_logprob=self._return_logprobs)
        outs = [outs] if isinstance(outs, dict) else outs
        responses = [o["output_ids"] for o in outs]
        return RolloutBatch(
            prompt_ids=[list(p) for p in input_ids for _ in range(n)],
            response_ids=responses,
            response_logprobs=([[lp for lp, _, _ in o["meta_info"]["output_token_logprobs"]] for o in outs]
                               if self._return_logprobs else None),
            response_texts=[o["text"] for o in outs] if "text" in outs[0] else None,
            finish_reasons=[finish_type(o["meta_info"]) for o in outs],
            weight_versions=[int(o["meta_info"].get("weight_version", 0)) for o in outs],
            n=n,
            padded_responses=pad_rows(responses, None, self._pad, left=False),
            pad_id=self._pad,
        )

    def sync_model_from_actor(self, state_dict: Any) -> int:
        """Publishes the actor's weights (HF names) as the next version; with ``validate_weight``
        checks the served checksums against the trainer's. Returns the new version."""
        named = [(n, as_host_array(t)) for n, t in (state_dict.items() if isinstance(state_dict, dict) else state_dict)]
        res = self.engine.publish(named, flush_cache=True)
        if self._validate:
            self.last_validation = self.validate_weights(named, self._trainer_checksums(named, res))
        return int(getattr(res, "version", self.engine.get_weight_version()))

    def _trainer_checksums(self, named: list[tuple[str, Any]], res: Any) -> dict:
        """checksum64 of the trainer's own tensors (zrollout._native through the publisher), computed
        apart from the transfer; else the checksums the publish reports."""
        pub = getattr(self.engine, "_publisher", None)
        if pub is not None and callable(getattr(pub, "checksums", None)):
            return pub.checksums(named)
        return dict(getattr(res, "checksums", None) or {})

    def validate_weights(self, named: list[tuple[str, Any]], trainer_checksums: dict) -> dict:
        """Compares the engine's checksum of each tensor with the trainer's (tensors the engine
        serves in another dtype, e.g. bf16 norms served as f32, cannot match and are counted apart)."""
        served = self.engine.client.get_weights_checksum([n for n, _ in named])
        if int(served.get("tp_size", 1)) > 1:
            log.warning("validate_weight: a tensor-parallel engine serves shards; only whole tensors compared")
        sent_dtype = {n: _dtype_name(t) for n, t in named}
        matched, other_dtype = 0, []
        for t in served["tensors"]:
            name = t["name"]
            if t.get("tp_rank", 0) != 0 or name not in trainer_checksums:
                continue
            if t["dtype"] != sent_dtype.get(name):
                other_dtype.append(name)
                continue
            if int(t["checksum"]) != int(trainer_checksums[name]):
                raise errors.ChecksumMismatch(f"tensor {name}: the engine serves checksum {t['checksum']}, "
                                              f"the trainer sent {trainer_checksums[name]}")
            matched += 1
        if matched == 0:
            log.warning("validate_weight: no tensor compared (%d served in another dtype)", len(other_dtype))
        return {"matched": matched, "other_dtype": other_dtype, "version": served.get("version")}

    def offload_engine(self) -> None:
        self.engine.release_memory_occupation(["weights", "kv_cache"])

    def onload_engine(self) -> None:
        self.engine.resume_memory_occupation(["weights", "kv_cache"])

    def shutdown(self) -> None:
        if self._engine is not None and self._owns:
            self._engine.shutdown()


def _dtype_name(t: Any) -> str:
    name = str(getattr(t, "dtype", "")).replace("torch.", "")
    return {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}.get(name, name.upper())
