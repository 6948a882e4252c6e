"""verl's async rollout server on zrollout.

:class:`ZrolloutAsyncServer` implements the token-in/token-out server verl's agent loop calls
(``verl.workers.rollout`` async servers, e.g. ``SGLangHttpServer``): ``async generate(prompt_ids,
sampling_params, request_id, image_data=None) -> TokenOutput`` (``token_ids``, ``log_probs``,
``stop_reason`` "completed" / "aborted"), ``wake_up``, ``sleep``, ``clear_kv_cache``,
``abort_all_requests``, ``update_weights`` (tensors from the trainer, published as the next
version). As verl's SGLang server does, ``max_new_tokens`` is ``min(response_length,
context_length - len(prompt_ids) - 1)`` and ``sampling_params["logprobs"]`` asks for logprobs.
Duck-typed: verl need not be installed; when it is, its ``TokenOutput`` is returned.

``python3 -m zrollout.main_generation`` is verl's ``main_generation`` (JSONL in and out).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from .. import errors
from ..engine import Engine
from ._common import as_host_array, engine_from, finish_type


@dataclasses.dataclass
class TokenOutput:
    """verl's ``TokenOutput`` fields (used when verl is not installed)."""

    token_ids: list[int]
    log_probs: list[float] | None = None
    routed_experts: Any = None
    stop_reason: str | None = None
    num_preempted: int | None = None


def _token_output_class():
    try:
        from verl.workers.rollout.replica import TokenOutput as VerlTokenOutput
        return VerlTokenOutput
    except ImportError:
        return TokenOutput


class ZrolloutAsyncServer:
    """verl async rollout server over a zrollout Engine (given, or started here)."""

    def __init__(self, model_path: str | None = None, *, engine: Engine | None = None, response_length: int = 512,
                 **engine_kwargs):
        self._engine, self._owns = engine_from(engine, model_path, engine_kwargs)
        self.response_length = response_length
        self._context = int(self._engine.model_info["context_length"])

    @property
    def engine(self) -> Engine:
        return self._engine

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                       image_data: list[Any] | None = None, **kwargs: Any) -> Any:
        if image_data:
            raise errors.unsupported("image_data", "zrollout serves text models")
        sp = dict(sampling_params or {})
        return_logprob = bool(sp.pop("logprobs", False))
        sp.pop("max_tokens", None)
        sp["max_new_tokens"] = max(0, min(self.response_length, self._context - len(prompt_ids) - 1))
        if sp.get("top_k") == 0:
            sp["top_k"] = -1
        out = await self._engine.async_generate(input_ids=list(prompt_ids), sampling_params=sp,
                                                return_logprob=return_logprob, rid=request_id)
        meta = out["meta_info"]
        return _token_output_class()(
            token_ids=out["output_ids"],
            log_probs=[lp for lp, _, _ in meta["output_token_logprobs"]] if return_logprob else None,
            stop_reason="aborted" if finish_type(meta) == "abort" else "completed",
        )

    async def wake_up(self, tags: list[str] | None = None) -> None:
        await asyncio.to_thread(self._engine.resume_memory_occupation, tags)

    async def sleep(self, tags: list[str] | None = None) -> None:
        await asyncio.to_thread(self._engine.release_memory_occupation, tags)

    async def clear_kv_cache(self) -> None:
        await asyncio.to_thread(self._engine.flush_cache)

    async def abort_all_requests(self) -> list[str]:
        return await asyncio.to_thread(self._engine.abort_request, "", True)

    async def update_weights(self, weights: Any, **kwargs: Any) -> int:
        """Publishes ``weights`` (``[(name, tensor)]`` or a dict, HF names) as the next version."""
        named = weights.items() if isinstance(weights, dict) else weights
        named = [(n, as_host_array(t)) for n, t in named]
        res = await asyncio.to_thread(self._engine.publish, named, **kwargs)
        return int(getattr(res, "version", self._engine.get_weight_version()))

    async def teardown(self) -> None:
        if self._owns:
            self._engine.shutdown()
