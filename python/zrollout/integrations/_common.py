"""What the adapters share: the engine they drive, prompt tokenization, padding, tensor naming."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .. import errors
from ..engine import Engine


def engine_from(engine: Engine | None, model_path: str | None, kwargs: dict) -> tuple[Engine, bool]:
    """The Engine to drive and whether the adapter owns it (starts and stops its server)."""
    if engine is not None:
        if model_path is not None or kwargs:
            raise errors.invalid("engine", "give an Engine or the arguments to start one, not both")
        return engine, False
    if model_path is None and "endpoint" not in kwargs:
        raise errors.invalid("model_path", "required to start an engine (or pass engine=)")
    return Engine(model_path=model_path, **kwargs), True


def tokenize(engine: Engine, texts: list[str]) -> list[list[int]]:
    """Prompt ids as the server tokenizes them (BOS included): a 0-token generate with prompt
    logprobs from position 0, whose entries carry the ids. One call for the whole list."""
    if not texts:
        return []
    reqs = [{"text": t, "return_logprob": True, "logprob_start_len": 0, "sampling_params": {"max_new_tokens": 0}}
            for t in texts]
    outs = engine.client.generate(reqs)["outputs"]
    return [[int(row[1]) for row in o["meta_info"]["input_token_logprobs"]] for o in outs]


def pad_rows(rows: Iterable[Iterable[int]], width: int | None, pad: int, left: bool, dtype=np.int32) -> np.ndarray:
    """A [len(rows), width] array of the rows padded with ``pad`` (on the left or right); rows longer
    than ``width`` keep their last (left) or first (right) ``width`` entries."""
    rows = [list(r) for r in rows]
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = np.full((len(rows), width), pad, dtype=dtype)
    for i, r in enumerate(rows):
        r = r[-width:] if left else r[:width]
        if r:
            if left:
                out[i, width - len(r):] = r
            else:
                out[i, :len(r)] = r
    return out


def flatten_params(params: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a PyTree of dicts, nnx.State, a state_dict) -> {"a.b.c": leaf}."""
    if hasattr(params, "to_pure_dict"):  # flax nnx.State
        params = params.to_pure_dict()
    if isinstance(params, Mapping):
        out: dict[str, Any] = {}
        for k, v in params.items():
            out.update(flatten_params(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if hasattr(params, "value") and not hasattr(params, "shape"):  # an nnx.Variable / Param
        return flatten_params(params.value, prefix)
    return {prefix: params}


NameMap = Mapping[str, "str | tuple[str, Callable[[np.ndarray], np.ndarray]]"] | Callable[[str], "str | None"] | None


def rename(flat: dict[str, Any], name_map: NameMap) -> list[tuple[str, Any]]:
    """Applies an optional name map to framework tensor names -> Hugging Face names.

    A dict maps a name to an HF name or to ``(hf_name, transform)`` (e.g. a transpose for Flax
    ``[in, out]`` kernels); names it does not list are not published. A callable returns the HF
    name, or None to leave the tensor out. Without a map the names must already be HF names.
    """
    if name_map is None:
        return list(flat.items())
    out = []
    for name, value in flat.items():
        target = name_map(name) if callable(name_map) else name_map.get(name)
        if target is None:
            continue
        if isinstance(target, tuple):
            target, transform = target
            value = transform(np.asarray(value))
        out.append((target, value))
    if not out:
        raise errors.invalid("name_map", "maps none of the given tensors")
    return out


def as_host_array(value: Any) -> Any:
    """torch tensors stay as they are (the publisher takes them); anything else becomes numpy."""
    if type(value).__module__.startswith("torch"):
        return value
    return np.asarray(value)


def finish_type(meta: dict) -> str:
    return (meta.get("finish_reason") or {}).get("type", "")
