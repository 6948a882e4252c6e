"""Tunix rollout worker on zrollout.

Implements ``tunix.rl.rollout.base_rollout.BaseRollout`` (google/tunix): ``generate(prompts,
rollout_config) -> RolloutOutput``, ``get_per_token_logps(prompt_tokens, completion_tokens,
completion_mask=None)``, ``update_params(params, filter_types=None)``, ``pad_id()``, ``eos_id()``,
``model()``. Duck-typed: Tunix need not be installed; when it is, ``generate`` returns its own
``RolloutOutput``.

Shapes follow Tunix's rollout engines: ``tokens`` is ``[B, max_tokens_to_generate]`` right-padded
with ``pad_id()``; ``left_padded_prompt_tokens`` is ``[B, max_prompt_length]`` (prompts longer than
that keep their last tokens, and the completion is generated from the truncated prompt);
``logprobs`` is one list of floats per prompt (the sampled tokens' logprobs, SGLang's default
mode); ``logits`` is None (the engine does not ship logits). ``get_per_token_logps`` strips the
left padding, cuts each completion at its mask (or after its first EOS, else at the first pad)
and scores it with the engine (``score``: the same bits generate returned), 0 past the end.

``update_params`` flattens a PyTree (nested dicts, ``nnx.State``) to dotted names, applies the
optional ``name_map`` (Tunix names -> Hugging Face names, with an optional transform such as a
transpose) and publishes the tensors as the next weight version (``zrollout.weights``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import errors
from ..engine import Engine
from ._common import NameMap, as_host_array, engine_from, flatten_params, pad_rows, rename, tokenize


@dataclasses.dataclass
class RolloutOutput:
    """Tunix's ``RolloutOutput`` fields (used when Tunix is not installed)."""

    text: list[str]
    logits: Any
    tokens: np.ndarray
    left_padded_prompt_tokens: np.ndarray
    logprobs: list[list[float]] | None


def _output_class():
    try:
        from tunix.rl.rollout.base_rollout import RolloutOutput as TunixOutput
        return TunixOutput
    except ImportError:
        return RolloutOutput


def _cfg(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


class ZrolloutRollout:
    """Tunix ``BaseRollout`` over a zrollout Engine (given, or started from ``model_path``)."""

    def __init__(self, model_path: str | None = None, *, engine: Engine | None = None, name_map: NameMap = None,
                 pad_id: int | None = None, score_temperature: float = 1.0, **engine_kwargs):
        self._engine, self._owns = engine_from(engine, model_path, engine_kwargs)
        info = self._engine.model_info
        eos = info.get("eos_token_ids") or [-1]
        self._eos = int(eos[0])
        model_pad = int(info.get("pad_token_id", -1))
        self._pad = pad_id if pad_id is not None else (model_pad if model_pad >= 0 else self._eos)
        self._name_map = name_map
        self._score_temperature = score_temperature

    # -- BaseRollout ------------------------------------------------------------------------------
    def generate(self, prompts: list[str], rollout_config: Any, **kwargs) -> Any:
        """Samples one completion per prompt (Tunix repeats prompts for groups itself)."""
        max_prompt = int(_cfg(rollout_config, "max_prompt_length", 64))
        max_new = int(_cfg(rollout_config, "max_tokens_to_generate", 64))
        prompt_ids = [ids[-max_prompt:] for ids in tokenize(self._engine, list(prompts))]
        sp: dict[str, Any] = {"max_new_tokens": max_new, "temperature": float(_cfg(rollout_config, "temperature", 0.9))}
        top_p, top_k, seed = (_cfg(rollout_config, k) for k in ("top_p", "top_k", "seed"))
        if top_p is not None:
            sp["top_p"] = float(top_p)
        if top_k is not None:
            sp["top_k"] = int(top_k)
        if seed is not None:
            sp["seed"] = int(np.asarray(seed).reshape(-1)[0])
        eos_tokens = _cfg(rollout_config, "eos_tokens")
        if eos_tokens:  # replaces the model's EOS, as in Tunix
            sp["stop_token_ids"] = [int(t) for t in eos_tokens]
            sp["ignore_eos"] = True
        outs = self._engine.generate(input_ids=prompt_ids, sampling_params=sp, return_logprob=True)
        completions = [o["output_ids"] for o in outs]
        return _output_class()(
            text=[o["text"] for o in outs],
            logits=None,
            tokens=pad_rows(completions, max_new, self._pad, left=False),
            left_padded_prompt_tokens=pad_rows(prompt_ids, max_prompt, self._pad, left=True),
            logprobs=[[lp for lp, _, _ in o["meta_info"]["output_token_logprobs"]] for o in outs],
        )

    def get_per_token_logps(self, prompt_tokens: Any, completion_tokens: Any, completion_mask: Any = None) -> np.ndarray:
        """[B, C] logprobs of the completion tokens under the served weights (0 past each end)."""
        prompts = np.asarray(prompt_tokens)
        completions = np.asarray(completion_tokens)
        if prompts.ndim != 2 or completions.ndim != 2 or len(prompts) != len(completions):
            raise errors.invalid("prompt_tokens", f"expected [B, P] and [B, C], got {prompts.shape} and {completions.shape}")
        mask = None if completion_mask is None else np.asarray(completion_mask)
        reqs, lengths = [], []
        for i in range(len(prompts)):
            row = prompts[i]
            start = int(np.argmax(row != self._pad)) if (row != self._pad).any() else len(row)
            n = self._completion_length(completions[i], None if mask is None else mask[i])
            lengths.append(n)
            reqs.append({"input_ids": row[start:].astype(np.int32), "completion_ids": completions[i, :n].astype(np.int32),
                         "temperature": self._score_temperature})
        out = np.zeros(completions.shape, dtype=np.float32)
        scored = [r for r, n in zip(reqs, lengths) if n > 0]
        if scored:
            results = iter(self._engine.client.score(scored)["outputs"])
            for i, n in enumerate(lengths):
                if n > 0:
                    lps = next(results)["logprobs"]
                    out[i, :n] = [-np.inf if lp is None else lp for lp in lps]
        return out

    def _completion_length(self, row: np.ndarray, mask: np.ndarray | None) -> int:
        if mask is not None:
            return int(np.asarray(mask).astype(bool).sum())
        eos = np.nonzero(row == self._eos)[0]
        if len(eos):
            return int(eos[0]) + 1
        if self._pad != self._eos:
            pads = np.nonzero(row == self._pad)[0]
            if len(pads):
                return int(pads[0])
        return len(row)

    def update_params(self, params: Any, filter_types: Any = None) -> None:
        """Publishes the parameters (flattened, renamed by ``name_map``) as the next version."""
        flat = {k: as_host_array(v) for k, v in flatten_params(params).items()}
        named = rename(flat, self._name_map)
        self._engine.publish(named, flush_cache=True)

    def pad_id(self) -> int:
        return self._pad

    def eos_id(self) -> int:
        return self._eos

    def model(self) -> Engine:
        """The rollout model lives in the engine process: this returns the :class:`zrollout.Engine`."""
        return self._engine

    def close(self) -> None:
        if self._owns:
            self._engine.shutdown()

