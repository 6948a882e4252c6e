"""``zrollout.Engine``: a drop-in for the RL surface of ``sglang.Engine``.

``import zrollout as sgl; llm = sgl.Engine(model_path=DIR)`` starts ``zrollout serve`` as a
subprocess (:func:`zrollout.launch`) and answers SGLang's calls with SGLang's shapes:
``generate`` / ``async_generate`` (a dict for one prompt, a list for a batch, a stream of
cumulative items with ``stream=True``), ``update_weights_from_tensor`` / ``_from_disk`` /
``_from_distributed`` (SGLang's ``(success, message)`` tuples), ``release_memory_occupation`` /
``resume_memory_occupation``, ``flush_cache``, ``abort_request``, ``get_server_info``,
``get_weight_version``, ``shutdown``. How SGLang's request names map onto the wire:
``zrollout._sglang``.

Constructor keywords with a meaning here: ``model_path``, ``tp_size`` (ranks of one engine, under
mpirun), ``max_running_requests`` (``--max-running``), ``mem_fraction_static`` (the KV budget:
that fraction of the memory available now, less the weights), ``random_seed`` (requests without a
seed get seeds drawn from it, so a script reruns identically), ``chunked_prefill_size``
(``--max-prefill-chunk``), ``log_level``, ``skip_tokenizer_init`` (outputs without text). Ours:
``endpoint`` (attach to a running server instead of starting one; ``"mpi"``: the engines of this
mpirun job), ``kv_cache_mb``, ``threads``, ``compute`` (``"f32"`` or ``"bf16"``: ``--compute``),
``kv_dtype`` (``"f32"`` or ``"bf16"``: ``--kv-dtype``, the KV cache's element type),
``request_timeout``. SGLang's GPU tuning arguments
(``cuda_graph_max_bs``, ``attention_backend``, ``dtype``...) have no meaning on this engine: they
are logged and listed in ``get_server_info()["ignored_server_args"]``; ones that would change
results (``quantization``, ``dp_size`` or ``pp_size`` > 1, LoRA) raise ``Unsupported``.

Weights: ``update_weights_from_tensor`` publishes the tensors through
``zrollout.weights.Publisher`` (shared memory, checksummed) as the next version; the engine wrapper
keeps the version counter (one more than the larger of its last publish and the served version).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import random
import threading
from pathlib import Path
from typing import Any, Iterable

from . import _sglang, errors
from .client import AsyncClient, Client
from .launch import launch

log = logging.getLogger("zrollout")

_GPU_ONLY_ARGS = frozenset((
    "dtype", "trust_remote_code", "enable_memory_saver", "disable_cuda_graph", "cuda_graph_max_bs", "cuda_graph_bs",
    "attention_backend", "sampling_backend", "base_gpu_id", "gpu_id_step", "enable_torch_compile",
    "torch_compile_max_bs", "disable_overlap_schedule", "dist_init_addr", "nccl_port", "port", "host", "device",
    "decode_log_interval", "load_format", "tokenizer_path", "tokenizer_mode",
    "enable_nan_detection", "triton_attention_reduce_in_fp32", "mm_attention_backend", "node_rank", "nnodes",
    "served_model_name", "context_length", "max_total_tokens", "schedule_policy", "watchdog_timeout",
    "enable_metrics", "disable_custom_all_reduce", "enable_p2p_check", "skip_server_warmup", "custom_weight_loader",
    "weight_loader_disable_mmap", "enable_deterministic_inference", "cuda_graph_max_bs", "page_size",
    "max_prefill_tokens", "schedule_conservativeness", "mem_fraction", "kv_cache_dtype", "disable_cuda_graph_padding",
))
_REFUSED_ARGS = {"quantization": None, "lora_paths": None, "enable_lora": False, "dp_size": 1, "pp_size": 1,
                 "speculative_algorithm": None, "enable_dp_attention": False}
_LEVELS = {"warning": "warn", "critical": "error", "fatal": "error"}
_MIN_KV_MB = 16


def _available_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    raise errors.Unsupported("mem_fraction_static: /proc/meminfo has no MemAvailable", field="mem_fraction_static")


def kv_budget_mb(model_path: str, fraction: float) -> int:
    """SGLang's ``mem_fraction_static`` here: fraction x available memory, less the weights, in MiB."""
    if not 0 < fraction <= 1:
        raise errors.invalid("mem_fraction_static", f"{fraction} is not in (0, 1]")
    weights = sum(p.stat().st_size for p in Path(model_path).glob("*.safetensors")) >> 20
    return max(_MIN_KV_MB, int(fraction * _available_mb()) - weights)


def _check_server_args(args: dict) -> dict:
    """Refuses what would change results; returns the GPU tuning arguments that are ignored."""
    for key, default in _REFUSED_ARGS.items():
        if key in args and args[key] not in (default, None):
            raise errors.unsupported(key, f"{args[key]!r} is not available in zrollout")
    ignored = {k: v for k, v in args.items() if k not in _REFUSED_ARGS}
    for key in sorted(ignored):
        level = logging.DEBUG if key in _GPU_ONLY_ARGS else logging.WARNING
        log.log(level, "Engine(%s=%r): no meaning on zrollout's CPU engine; ignored", key, ignored[key])
    return ignored


def _named(named_tensors: Any) -> list[tuple[str, Any]]:
    if isinstance(named_tensors, dict):
        return list(named_tensors.items())
    return [(n, t) for n, t in named_tensors]


class Engine:
    """SGLang-shaped engine over one ``zrollout serve`` (see the module comment)."""

    def __init__(self, model_path: str | None = None, tp_size: int = 1, max_running_requests: int | None = None,
                 mem_fraction_static: float | None = None, random_seed: int | None = None,
                 chunked_prefill_size: int | None = None, log_level: str = "error", *, endpoint: str | None = None,
                 kv_cache_mb: int | None = None, threads: int | None = None, compute: str | None = None,
                 kv_dtype: str | None = None, request_timeout: float = 600.0,
                 skip_tokenizer_init: bool = False, disable_radix_cache: bool = False,
                 launch_options: dict | None = None, **server_args):
        self._server = None
        self._publisher = None
        self._closed = False
        self._lock = threading.Lock()
        self._async_clients: dict[asyncio.AbstractEventLoop, AsyncClient] = {}
        self.ignored_server_args = _check_server_args(server_args)
        self.server_args = {"model_path": model_path, "tp_size": tp_size, "max_running_requests": max_running_requests,
                            "mem_fraction_static": mem_fraction_static, "random_seed": random_seed,
                            "chunked_prefill_size": chunked_prefill_size, "log_level": log_level,
                            "skip_tokenizer_init": skip_tokenizer_init, "kv_cache_mb": kv_cache_mb}
        if endpoint == "mpi":
            self._publisher = self._mpi_publisher()
            endpoint = list(self._publisher.endpoints)[0]
        if endpoint is None:
            if model_path is None:
                raise errors.invalid("model_path", "required to start an engine")
            if kv_cache_mb is None and mem_fraction_static is not None:
                kv_cache_mb = kv_budget_mb(model_path, mem_fraction_static)
                self.server_args["kv_cache_mb"] = kv_cache_mb
            flags = {"max_running": max_running_requests, "max_prefill_chunk": chunked_prefill_size,
                     "kv_cache_mb": kv_cache_mb, "threads": threads, "compute": compute,
                     "kv_dtype": kv_dtype,
                     "no_prefix_cache": disable_radix_cache,
                     "log_level": _LEVELS.get(log_level, log_level) if log_level else None}
            self._server = launch(model_path, tp=tp_size, **{**flags, **(launch_options or {})})
            endpoint = self._server.endpoint
        self.endpoint = endpoint
        self.request_timeout = request_timeout
        self._client = Client(endpoint, timeout=request_timeout)
        info = self._client.get_model_info()
        self.model_info = info
        self.server_args["model_path"] = model_path or info.get("model_path")
        self._context_length = int(info["context_length"])
        self._rng = random.Random(random_seed) if random_seed is not None else None
        self._skip_tokenizer_init = skip_tokenizer_init
        self._version = int(self._client.get_weight_version()["version"])
        atexit.register(self.shutdown)

    # -- generation ---------------------------------------------------------------------------
    def _translate(self, prompt, sampling_params, input_ids, stream, session_params, session_id,
                   per_request: dict, extra: dict) -> _sglang.Translation:
        with self._lock:  # the seed stream of random_seed is drawn in call order
            return _sglang.translate(prompt=prompt, input_ids=input_ids, sampling_params_arg=sampling_params,
                                     stream=stream, session_params=session_params, session_id=session_id,
                                     context_length=self._context_length, rng=self._rng,
                                     skip_tokenizer_init=self._skip_tokenizer_init, per_request=per_request,
                                     extra=extra)

    def generate(self, prompt: str | list[str] | None = None, sampling_params: dict | list[dict] | None = None,
                 input_ids: list[int] | list[list[int]] | None = None, return_logprob: bool | list[bool] = False,
                 logprob_start_len: int | list[int] | None = None, top_logprobs_num: int | list[int] | None = None,
                 token_ids_logprob: list[int] | list[list[int]] | None = None,
                 custom_logit_processor: str | list[str] | None = None, stream: bool = False,
                 rid: str | list[str] | None = None, session_params: dict | None = None,
                 session_id: str | None = None, return_text_in_logprobs: bool = False, **extra):
        """SGLang's ``Engine.generate``: a dict for one prompt, a list for a batch (or ``n > 1``);
        ``stream=True``: an iterator of cumulative items (see ``zrollout._sglang.StreamAssembler``)."""
        per = {"return_logprob": return_logprob, "logprob_start_len": logprob_start_len,
               "top_logprobs_num": top_logprobs_num, "token_ids_logprob": token_ids_logprob,
               "custom_logit_processor": custom_logit_processor, "rid": rid,
               "return_text_in_logprobs": return_text_in_logprobs}
        t = self._translate(prompt, sampling_params, input_ids, stream, session_params, session_id, per, extra)
        body = t.requests[0] if len(t.requests) == 1 else t.requests
        if not stream:
            return _sglang.outputs(t, self._client.generate(body))
        return self._stream(t, self._client.generate(body, stream=True))

    @staticmethod
    def _stream(t: _sglang.Translation, chunks):
        asm = _sglang.StreamAssembler(t)
        for ch in chunks:
            item = asm.chunk(ch)
            if item is not None:
                yield item
        yield from asm.final(chunks.reply)

    def _aclient(self) -> AsyncClient:
        """The AsyncClient of the running loop (one per loop: a zmq.asyncio socket serves one loop);
        clients of loops that have closed since are closed here."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for old in [l for l in self._async_clients if l.is_closed()]:
                self._async_clients.pop(old)._close_now()
            c = self._async_clients.get(loop)
            if c is None:
                c = self._async_clients[loop] = AsyncClient(self.endpoint, timeout=self.request_timeout)
            return c

    async def async_generate(self, prompt=None, sampling_params=None, input_ids=None, return_logprob=False,
                             logprob_start_len=None, top_logprobs_num=None, token_ids_logprob=None,
                             custom_logit_processor=None, stream: bool = False, rid=None, session_params=None,
                             session_id=None, return_text_in_logprobs: bool = False, **extra):
        """SGLang's ``async_generate``: awaits the result, or (``stream=True``) returns an async
        generator of cumulative items."""
        per = {"return_logprob": return_logprob, "logprob_start_len": logprob_start_len,
               "top_logprobs_num": top_logprobs_num, "token_ids_logprob": token_ids_logprob,
               "custom_logit_processor": custom_logit_processor, "rid": rid,
               "return_text_in_logprobs": return_text_in_logprobs}
        t = self._translate(prompt, sampling_params, input_ids, stream, session_params, session_id, per, extra)
        body = t.requests[0] if len(t.requests) == 1 else t.requests
        client = self._aclient()
        if not stream:
            return _sglang.outputs(t, await client.generate(body))
        return self._astream(t, await client.generate(body, stream=True))

    @staticmethod
    async def _astream(t: _sglang.Translation, chunks):
        asm = _sglang.StreamAssembler(t)
        async for ch in chunks:
            item = asm.chunk(ch)
            if item is not None:
                yield item
        for item in asm.final(chunks.reply):
            yield item

    def score(self, input_ids: list[list[int]], completion_ids: list[list[int]], temperature: float = 1.0) -> list[list[float | None]]:
        """Teacher-forced logprobs of ``completion_ids`` after ``input_ids`` (one list per pair)."""
        reqs = [{"input_ids": p, "completion_ids": c, "temperature": float(temperature)}
                for p, c in zip(input_ids, completion_ids)]
        return [o["logprobs"] for o in self._client.score(reqs)["outputs"]]

    def abort_request(self, rid: str = "", abort_all: bool = False) -> list[str]:
        """Aborts one request (by rid) or all; their calls return partial outputs. The aborted rids."""
        if abort_all:
            return self._client.abort(all=True)["aborted"]
        if not rid:
            raise errors.invalid("rid", "give a rid or abort_all=True")
        return self._client.abort(rid)["aborted"]

    # -- weights ------------------------------------------------------------------------------
    def _next_version(self) -> int:
        served = int(self._client.get_weight_version()["version"])
        self._version = max(self._version, served) + 1
        return self._version

    def _publisher_for(self):
        if self._publisher is None:
            try:
                from .weights import Publisher
            except ImportError as e:
                raise errors.Unsupported(f"update_weights_from_tensor: zrollout.weights is not available ({e})",
                                         field="update_weights_from_tensor") from None
            self._publisher = Publisher(endpoints=[self.endpoint])
        return self._publisher

    @staticmethod
    def _mpi_publisher():
        try:
            from .weights import Publisher
        except ImportError as e:
            raise errors.Unsupported(f"endpoint: 'mpi' needs zrollout.weights ({e})", field="endpoint") from None
        return Publisher.from_mpi()

    def publish(self, named_tensors, *, path: str | None = None, in_flight: str = "drain", flush_cache: bool = False):
        """Publishes ``[(name, tensor), ...]`` (or a dict) as the next version and returns the
        publisher's result (``.version``, ``.bytes``, ``.seconds``, ``.checksums``); raises the
        ``zrollout.errors`` class of a refusal (the served version is then unchanged). ``path``:
        "ipc", "disk" or "broadcast" (default: broadcast under ``endpoint="mpi"``, else ipc)."""
        named = _named(named_tensors)
        version = self._next_version()
        try:
            return self._publisher_for().publish(named, version, path=path, in_flight=in_flight,
                                                 flush_cache=flush_cache)
        except errors.ZrolloutError:
            raise
        except RuntimeError as e:  # weights.PublishError (code, message) or _native.Error
            raise errors.from_native(e) from None

    def update_weights_from_tensor(self, named_tensors, load_format: str | None = None, flush_cache: bool = True,
                                   *, path: str | None = None, in_flight: str = "drain") -> tuple[bool, str]:
        """SGLang's call: publishes ``[(name, tensor), ...]`` (or a dict) as the next version and
        answers ``(success, message)``. Tensors: torch (f32/bf16/f16, CPU) or numpy, HF names."""
        if load_format not in (None, "auto", "direct"):
            raise errors.unsupported("load_format", f"{load_format!r}: zrollout takes plain named tensors")
        named = _named(named_tensors)
        try:
            res = self.publish(named, path=path, in_flight=in_flight, flush_cache=flush_cache)
        except errors.ZrolloutError as e:
            log.warning("update_weights_from_tensor refused: %s", e)
            return False, str(e)
        return True, (f"version {getattr(res, 'version', self._version)}: {len(named)} tensors by "
                      f"{getattr(res, 'path', path or 'ipc')}, {getattr(res, 'bytes', 0)} bytes in "
                      f"{getattr(res, 'seconds', 0.0):.3f} s")

    def update_weights_from_disk(self, model_path: str, load_format: str | None = None, *,
                                 in_flight: str = "drain", flush_cache: bool = True) -> tuple[bool, str, int]:
        """Loads a Hugging Face folder as the next version; SGLang's ``(success, message, num_paused)``."""
        if load_format not in (None, "auto", "safetensors"):
            raise errors.unsupported("load_format", f"{load_format!r}: zrollout reads safetensors folders")
        version = self._next_version()
        try:
            r = self._client.update_weights(version=version, path="disk", disk_path=str(Path(model_path).resolve()),
                                            tensors=[], in_flight=in_flight, flush_cache=flush_cache)
        except errors.ZrolloutError as e:
            return False, str(e), 0
        return True, f"version {r['version']}: loaded {model_path}", 0

    def init_weights_update_group(self, master_address: str = "", master_port: int = 0, rank_offset: int = 1,
                                  world_size: int = 2, group_name: str = "weight_update_group",
                                  backend: str = "mpi") -> tuple[bool, str]:
        """SGLang's NCCL group becomes the MPI weight group of this mpirun job (``mpirun -np 1 python3
        train.py : -np K zrollout serve``): raises ``Unsupported`` outside one."""
        if self._publisher is None or not hasattr(self._publisher, "endpoints") or not _under_mpirun():
            raise errors.unsupported("init_weights_update_group",
                                     "zrollout broadcasts weights with MPI: run `mpirun -np 1 python3 train.py : "
                                     "-np K zrollout serve ...` and create the Engine with endpoint='mpi'")
        self._group_name = group_name
        return True, f"{group_name}: the MPI weight group of this job ({len(list(self._publisher.endpoints))} engines)"

    def update_weights_from_distributed(self, names: list[str], dtypes: list[str], shapes: list[list[int]],
                                        group_name: str = "weight_update_group", flush_cache: bool = True,
                                        load_format: str | None = None, *, tensors: Iterable[Any] | None = None
                                        ) -> tuple[bool, str]:
        """Broadcast (MPI, rooted in this process) of ``tensors`` named ``names``: zrollout's
        broadcast cannot be fed by a ``torch.distributed.broadcast``, so the tensors are passed here."""
        if getattr(self, "_group_name", None) != group_name:
            raise errors.unsupported("group_name", f"{group_name!r}: call init_weights_update_group first (under mpirun)")
        if tensors is None:
            raise errors.unsupported("tensors", "zrollout's broadcast is MPI from this process: pass "
                                     "tensors=[...] (one per name); torch.distributed cannot feed it")
        tensors = list(tensors)
        for i, (n, t) in enumerate(zip(names, tensors)):
            if list(getattr(t, "shape", ())) != list(shapes[i]):
                raise errors.invalid(f"shapes[{i}]", f"{n}: tensor shape {list(t.shape)} is not {list(shapes[i])}")
        return self.update_weights_from_tensor(list(zip(names, tensors)), load_format, flush_cache, path="broadcast")

    def get_weight_version(self) -> int:
        return int(self._client.get_weight_version()["version"])

    def get_weights_checksum(self, names: list[str] | None = None) -> dict[str, int]:
        """checksum64 of each served tensor (``zrollout._native.checksum64`` of the trainer's bytes)."""
        return {t["name"]: t["checksum"] for t in self._client.get_weights_checksum(names)["tensors"]}

    # -- memory and state ---------------------------------------------------------------------
    @staticmethod
    def _tags(tags: list[str] | None) -> list[str]:
        if tags is None:
            return ["weights", "kv_cache"]
        out = [t for t in tags if t != "cuda_graph"]  # SGLang's CUDA graphs hold no memory here
        for t in out:
            if t not in ("weights", "kv_cache"):
                raise errors.invalid("tags", f"{t!r} (weights, kv_cache)")
        return out

    def release_memory_occupation(self, tags: list[str] | None = None) -> dict:
        return self._client.release_memory(self._tags(tags))

    def resume_memory_occupation(self, tags: list[str] | None = None) -> dict:
        return self._client.resume_memory(self._tags(tags))

    def flush_cache(self) -> dict:
        r = self._client.flush_cache()
        return {"success": True, "freed_blocks": r.get("freed_blocks", 0)}

    def open_session(self, capacity_of_str_len: int = 0, session_id: str | None = None, **_: Any) -> str:
        if session_id:
            raise errors.unsupported("session_id", "the server picks session ids")
        return self._client.open_session()["session_id"]

    def close_session(self, session_id: str) -> None:
        self._client.close_session(session_id)

    def get_server_info(self) -> dict:
        load = self._client.get_load()
        info = {k: v for k, v in self._client.get_model_info().items() if k != "req_id"}
        return {**self.server_args, **info, "endpoint": self.endpoint,
                "weight_version": self.get_weight_version(), "internal_states": [load],
                "ignored_server_args": dict(self.ignored_server_args), "engine": "zrollout"}

    @property
    def client(self) -> Client:
        """The sync :class:`zrollout.Client` this engine talks through (every wire op)."""
        return self._client

    def shutdown(self) -> None:
        """Closes the clients and stops the server this Engine started (not one it attached to)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.shutdown)
        for c in self._async_clients.values():
            c._close_now()
        self._async_clients.clear()
        self._client.close()
        if self._publisher is not None and hasattr(self._publisher, "close"):
            try:
                self._publisher.close()
            except Exception:
                pass
        if self._server is not None:
            self._server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False


def _under_mpirun() -> bool:
    return any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"))
