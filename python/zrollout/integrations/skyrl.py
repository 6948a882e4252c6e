"""SkyRL inference engine on zrollout.

Implements ``skyrl_train.inference_engines.base.InferenceEngineInterface`` (NovaSky-AI/SkyRL):
``async generate(InferenceEngineInput) -> InferenceEngineOutput``, ``init_weight_update_communicator``,
``update_named_weights``, ``sleep`` / ``wake_up`` with memory tags, ``pause_generation`` /
``resume_generation`` (``continue_generation``) / ``abort_generation``, ``reset_prefix_cache``,
``teardown``, ``tp_size`` / ``pp_size`` / ``dp_size``; plus :func:`group_outputs_by_prompt`.
Duck-typed: SkyRL need not be installed (inputs and outputs are the TypedDicts' plain dicts).

- ``generate`` is token-in/token-out like SkyRL's SGLang engine: ``prompt_token_ids`` (chat
  ``prompts`` need a chat template: refused, naming the field). ``sampling_params`` take SGLang
  names, and the vLLM names SkyRL also uses (``max_tokens``, ``logprobs``,
  ``include_stop_str_in_output``). The output holds ``responses``, ``response_ids``,
  ``stop_reasons`` ("stop" / "length" / "abort"), ``response_logprobs`` (when asked),
  ``weight_version``, ``n_per_prompt`` and ``request_ids``, flattened prompt-major for n > 1.
- Weights: ``update_named_weights`` takes a request with ``names``, ``dtypes``, ``shapes`` (a dict,
  as SkyRL's ``NamedWeightsUpdateRequest``, or an object, as its ``WeightUpdateRequest``) and the
  tensors themselves (``tensors``, or ``extras[i]["tensor"]``): CUDA IPC handles and NCCL groups do
  not exist here. A broadcast request runs zrollout's MPI broadcast when the engine is part of an
  mpirun job (``Engine(endpoint="mpi")`` after ``init_weight_update_communicator``); otherwise the
  tensors go by shared memory (ipc), which a colocated trainer always can.
- ``pause_generation(mode)``: new requests wait until ``resume_generation``; "abort" also aborts
  what runs (partial outputs, stop reason "abort"); "in_place" lets running requests keep their KV
  and continue on the weights of an update made while paused (in_flight "continue"); "retract"
  re-prefills them on the new weights (in_flight "recompute").
"""

from __future__ import annotations

import asyncio
from typing import Any

from .. import errors
from ..engine import Engine
from ._common import as_host_array, engine_from, finish_type

_IN_FLIGHT = {"abort": "abort", "in_place": "continue", "retract": "recompute"}


def group_outputs_by_prompt(output: dict) -> list[dict]:
    """Splits a flattened n > 1 output into one output per prompt (``n_per_prompt`` samples each)."""
    n = int(output.get("n_per_prompt") or 1)
    total = len(output["responses"])
    groups = []
    for start in range(0, total, n):
        g = {}
        for key, value in output.items():
            if isinstance(value, list) and len(value) == total:
                g[key] = value[start:start + n]
            else:
                g[key] = value
        groups.append(g)
    return groups


def _get(req: Any, key: str, default: Any = None) -> Any:
    if isinstance(req, dict):
        return req.get(key, default)
    return getattr(req, key, default)


def _sampling(sp: dict | None) -> tuple[dict, bool]:
    """SkyRL sampling params (SGLang or vLLM names) -> (SGLang params, return_logprob)."""
    out = dict(sp or {})
    logprobs = out.pop("logprobs", None)
    return_logprob = bool(logprobs) or logprobs == 0  # vLLM: logprobs=0 asks for the sampled token's
    if "max_tokens" in out:
        out["max_new_tokens"] = out.pop("max_tokens")
    if out.pop("include_stop_str_in_output", False):
        out["no_stop_trim"] = True
    if out.get("top_k") == 0:
        out["top_k"] = -1
    return out, return_logprob


class ZrolloutInferenceEngine:
    """SkyRL ``InferenceEngineInterface`` over a zrollout Engine (given, or started here)."""

    def __init__(self, model_path: str | None = None, *, engine: Engine | None = None, **engine_kwargs):
        self._engine, self._owns = engine_from(engine, model_path, engine_kwargs)
        self._resume = asyncio.Event()
        self._resume.set()
        self._in_flight = "drain"
        self._broadcast = False
        self._tp = int(engine_kwargs.get("tp_size", 1))

    @property
    def engine(self) -> Engine:
        return self._engine

    # -- generation ---------------------------------------------------------------------------
    async def generate(self, input_batch: dict) -> dict:
        if input_batch.get("prompts") is not None:
            raise errors.unsupported("prompts", "chat prompts need a chat template: give prompt_token_ids")
        ids = input_batch.get("prompt_token_ids")
        if not ids:
            raise errors.invalid("prompt_token_ids", "required (token-in/token-out)")
        for key in ("image_data", "video_data", "audio_data"):
            if input_batch.get(key):
                raise errors.unsupported(key, "zrollout serves text models")
        if input_batch.get("return_hidden_states"):
            raise errors.unsupported("return_hidden_states", "not available in zrollout")
        await self._resume.wait()
        sp, return_logprob = _sampling(input_batch.get("sampling_params"))
        outs = await self._engine.async_generate(input_ids=[list(p) for p in ids], sampling_params=sp,
                                                 return_logprob=return_logprob)
        n = int(sp.get("n", 1))
        result = {
            "responses": [o["text"] for o in outs],
            "response_ids": [o["output_ids"] for o in outs],
            "stop_reasons": [finish_type(o["meta_info"]) for o in outs],
            "response_logprobs": ([[lp for lp, _, _ in o["meta_info"]["output_token_logprobs"]] for o in outs]
                                  if return_logprob else None),
            "weight_version": str(max(o["meta_info"].get("weight_version", 0) for o in outs)),
            "n_per_prompt": n,
            "request_ids": [o["meta_info"]["id"] for o in outs],
        }
        return result

    async def chat_completion(self, request_payload: dict) -> dict:
        raise errors.unsupported("chat_completion", "no OpenAI HTTP endpoint: use generate with token ids")

    async def completion(self, request_payload: dict) -> dict:
        raise errors.unsupported("completion", "no OpenAI HTTP endpoint: use generate with token ids")

    # -- memory -------------------------------------------------------------------------------
    async def sleep(self, tags: list[str] | None = None, level: int | None = None, **_: Any) -> None:
        await asyncio.to_thread(self._engine.release_memory_occupation, tags)

    async def wake_up(self, tags: list[str] | None = None, **_: Any) -> None:
        await asyncio.to_thread(self._engine.resume_memory_occupation, tags)

    async def reset_prefix_cache(self) -> dict:
        return await asyncio.to_thread(self._engine.flush_cache)

    # -- weights ------------------------------------------------------------------------------
    async def init_weight_update_communicator(self, *args: Any, **kwargs: Any) -> tuple[bool, str]:
        """Either SkyRL signature: ``(init_info)`` or ``(master_addr, master_port, rank_offset,
        world_size, group_name, backend, override_existing=False)``. Under mpirun (an
        ``Engine(endpoint="mpi")``) later updates broadcast over MPI; otherwise they go by ipc."""
        try:
            self._engine.init_weights_update_group()
            self._broadcast = True
            return True, "weights will be broadcast over the MPI weight group of this job"
        except errors.Unsupported:
            self._broadcast = False
            return True, "not under mpirun: weights will be published by shared memory (ipc)"

    async def update_named_weights(self, request: Any) -> tuple[bool, str]:
        names = list(_get(request, "names") or [])
        tensors = _get(request, "tensors")
        extras = _get(request, "extras")
        if tensors is None and extras:
            tensors = [e.get("tensor") if isinstance(e, dict) else None for e in extras]
        if not names or tensors is None or any(t is None for t in tensors):
            raise errors.unsupported("tensors", "zrollout needs the tensors in the request (tensors=[...] or "
                                     "extras[i]['tensor']): CUDA IPC handles and NCCL groups do not exist here")
        if len(tensors) != len(names):
            raise errors.invalid("tensors", f"{len(tensors)} tensors for {len(names)} names")
        shapes = _get(request, "shapes")
        for i, (name, t) in enumerate(zip(names, tensors)):
            if shapes is not None and list(t.shape) != list(shapes[i]):
                raise errors.invalid(f"shapes[{i}]", f"{name}: tensor shape {list(t.shape)} is not {list(shapes[i])}")
        named = [(n, as_host_array(t)) for n, t in zip(names, tensors)]
        path = "broadcast" if self._broadcast else "ipc"
        res = await asyncio.to_thread(self._engine.publish, named, path=path, in_flight=self._in_flight)
        return True, f"version {getattr(res, 'version', '?')}: {len(named)} tensors by {path}"

    # -- pausing ------------------------------------------------------------------------------
    async def pause_generation(self, mode: str = "abort") -> None:
        if mode not in _IN_FLIGHT:
            raise errors.invalid("mode", f"{mode!r} (abort, in_place, retract)")
        self._resume.clear()
        self._in_flight = _IN_FLIGHT[mode]
        if mode == "abort":
            await asyncio.to_thread(self._engine.abort_request, abort_all=True)

    async def resume_generation(self) -> None:
        self._in_flight = "drain"
        self._resume.set()

    continue_generation = resume_generation

    async def abort_generation(self) -> None:
        await asyncio.to_thread(self._engine.abort_request, abort_all=True)

    # -- shape and lifetime -------------------------------------------------------------------
    def tp_size(self) -> int:
        return int(self._engine.server_args.get("tp_size") or self._tp)

    def pp_size(self) -> int:
        return 1

    def dp_size(self) -> int:
        return 1

    async def teardown(self) -> None:
        if self._owns:
            self._engine.shutdown()
