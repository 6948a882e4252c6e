"""Publishing new weights from tensors in memory to zrollout engines.

A trainer holds its weights as tensors (a torch ``state_dict``, or numpy arrays); ``Publisher``
sends them to the engines as a new integer version, by one of three paths:

- ``"ipc"``: the engines run on this host. The tensors are copied once, straight from where they
  lie into a POSIX shared-memory segment that the engines map and serve from in place; the copy
  computes each tensor's checksum on the way, and the engines verify behind the writer. The
  segments are kept and rewritten by later publishes (no page faults, no new mappings).
- ``"disk"``: the tensors are written as ``model.safetensors`` into a folder the engines read
  (``disk_dir``, or a temporary folder removed after the publish); ``config.json`` comes from the
  engines' model folder when ``disk_dir`` has none.
- ``"broadcast"``: under ``mpirun -np 1 python3 train.py : -np K zrollout serve ...``, this
  process is the root of the bucketed, pipelined ``MPI_Ibcast`` the C++ trainer uses; every
  engine rank verifies the checksums as buckets arrive (``Publisher.from_mpi()``). The bytes are
  sent from the tensors' own memory (no copy into a transfer buffer) and checksummed as each
  segment goes out; the checksums follow the bytes as the broadcast's trailer, and the engines
  verify against them before they commit (docs/protocol.md, ``checksum_trailer``).

All of it is zrollout's C++ code (``actors/trainer.h`` through ``zrollout._native``): the checksum
(``checksum64``, docs/protocol.md), the segment layout and pool, the broadcast. A publish either
commits on every live engine or raises ``PublishError`` naming the tensor and the engine that
refused; a refused publish leaves the old version serving.

Accepted tensors: torch tensors (CPU; float32, bfloat16, float16; non-contiguous ones are made
contiguous first, which copies them) and numpy arrays (float32, float16; numpy has no bfloat16:
pass torch bfloat16 tensors). The caller must not modify the tensors during a publish; the GIL
is released while bytes are copied and engines are awaited.

Example::

    from zrollout.weights import Publisher
    with Publisher(["tcp://127.0.0.1:5555"]) as pub:
        res = pub.publish(model.state_dict(), version=step, path="ipc", in_flight="drain")
        print(res.seconds, res.checksums["model.norm.weight"])
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from zrollout import _native, errors

__all__ = ["Publisher", "PublishError", "PublishResult", "publish", "checksum64"]

NameMap = Union[Mapping[str, str], Callable[[str], Optional[str]]]

_TORCH_DTYPES = {"torch.float32": "F32", "torch.bfloat16": "BF16", "torch.float16": "F16"}
_NUMPY_DTYPES = {"float32": "F32", "float16": "F16"}
_PATHS = ("ipc", "disk", "broadcast")


class PublishError(errors.ZrolloutError, RuntimeError):
    """A refused or failed publish.

    ``code`` is the wire error code (docs/protocol.md §7: ``weight_mismatch``,
    ``checksum_mismatch``, ``invalid_argument``, ``unavailable``, ``timeout``, ...); ``message``
    names the tensor and the engine; ``tensor`` and ``engine`` are parsed from it when present
    (``field`` is the tensor). ``PublishError(code, message)`` is also an instance of that code's
    :mod:`zrollout.errors` class, so ``except errors.ChecksumMismatch`` catches a refused publish
    as it catches the same refusal from a client call.
    """

    _by_code: dict = {}

    def __new__(cls, code: str = "internal", message: str = ""):
        if cls is PublishError:
            base = errors.ERRORS.get(code)
            if base is not None:
                sub = PublishError._by_code.get(code)
                if sub is None:
                    # the code's class first: its builtin (OSError for Timeout...) lays the object out
                    sub = type(f"PublishError_{code}", (base, PublishError), {"__module__": __name__})
                    PublishError._by_code[code] = sub
                cls = sub
        return super().__new__(cls, code, message)

    def __init__(self, code: str = "internal", message: str = ""):
        m = re.search(r"tensors\[\d+\] \(([^)]*)\)", message) or re.search(r"\btensor '?([^\s':(),]+)", message)
        self.tensor: Optional[str] = m.group(1) if m else None
        super().__init__(message, code=code, field=self.tensor or "")
        self.args = (code, message)
        m = re.search(r"engine (\S+): ", message)
        self.engine: Optional[str] = m.group(1) if m else None

    def __reduce__(self):
        return PublishError, (self.code, self.message)


@dataclass
class PublishResult:
    """What a publish did. Also readable as a dict (``res["seconds"]``)."""

    version: int
    path: str
    bytes: int                  # bytes each engine received and verified
    seconds: float              # from the start of the transfer to the last ack
    write_seconds: float        # ipc: of which copy + checksum into the segment; broadcast: the
                                # layout, before `seconds` (the bytes go from the tensors, checksummed
                                # as they go out)
    acked: list                 # engine indices that now serve `version`
    dead: list                  # engines skipped (stopped answering heartbeats)
    acks: list                  # per acked engine: {engine, endpoint, version, bytes, stage_seconds, ...}
    checksums: dict = field(default_factory=dict)  # {name: checksum64} of what was published
    shm_segment: str = ""
    shm_reused: bool = False
    liveness_seconds: float = 0.0  # broadcast: asking the engines whether they are alive, before `seconds`

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def keys(self):
        return self.__dataclass_fields__.keys()


def _raise_from(e: Exception) -> None:
    if isinstance(e, _native.Error) and len(e.args) == 2:
        raise PublishError(*e.args) from None
    raise e


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "data_ptr")


def _tensor_ref(name: str, value: Any, keep: list) -> tuple:
    """(name, dtype, shape, data_ptr, nbytes) of one tensor; `keep` holds what must stay alive."""
    if _is_torch(value):
        t = value.detach()
        dtype = _TORCH_DTYPES.get(str(t.dtype))
        if dtype is None:
            raise PublishError("invalid_argument", f"tensor {name}: dtype {t.dtype} (float32, bfloat16 or float16)")
        if t.device.type != "cpu":
            t = t.cpu()
        if not t.is_contiguous():
            t = t.contiguous()
        keep.append(t)
        return name, dtype, tuple(t.shape), t.data_ptr(), t.numel() * t.element_size()
    import numpy as np

    a = value if isinstance(value, np.ndarray) else np.asarray(value)
    dtype = _NUMPY_DTYPES.get(a.dtype.name)
    if dtype is None:
        raise PublishError("invalid_argument", f"tensor {name}: dtype {a.dtype} (float32 or float16; "
                           "bfloat16 as a torch tensor)")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    a = np.ascontiguousarray(a)
    keep.append(a)
    return name, dtype, tuple(a.shape), a.ctypes.data, a.nbytes


def _items(named_tensors: Any) -> Iterable:
    if isinstance(named_tensors, Mapping):
        return named_tensors.items()
    return named_tensors  # (name, tensor) pairs: a list, a generator, model.named_parameters()


def _renamed(name: str, name_map: Optional[NameMap]) -> Optional[str]:
    if name_map is None:
        return name
    if callable(name_map):
        return name_map(name)
    return name_map.get(name, name)


def _tensor_refs(named_tensors: Any, name_map: Optional[NameMap], expected: Optional[Mapping[str, int]],
                 keep: list) -> list:
    """The tuples _native.Trainer.publish takes: (name, dtype, shape, data_ptr, nbytes, checksum|None)."""
    refs = []
    for item in _items(named_tensors):
        try:
            src, value = item
        except (TypeError, ValueError):
            raise PublishError("invalid_argument", "named_tensors: expected a mapping or (name, tensor) pairs, "
                               f"got {type(item).__name__}") from None
        name = _renamed(str(src), name_map)
        if name is None:  # the name map drops it
            continue
        ref = _tensor_ref(name, value, keep)
        claimed = None if expected is None else expected.get(name)
        refs.append(ref + (None if claimed is None else int(claimed),))
    return refs


def checksum64(data: Any) -> int:
    """checksum64 (docs/protocol.md, comm/checksum.h) of a tensor's bytes: a torch tensor (any
    supported dtype, bfloat16 included), a numpy array, bytes or any buffer."""
    if _is_torch(data):
        t = data.detach().cpu().contiguous()
        return _native.checksum64_ptr(t.data_ptr(), t.numel() * t.element_size())
    import numpy as np

    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
    try:
        return _native.checksum64(data)
    except _native.Error as e:
        _raise_from(e)


_mpi_lock = threading.Lock()
_mpi_finalizer_registered = False


def _mpi_session() -> dict:
    global _mpi_finalizer_registered
    with _mpi_lock:
        try:
            session = _native.mpi_session()
        except _native.Error as e:
            _raise_from(e)
        if not _mpi_finalizer_registered:  # before mpi4py's own finalizer (a C-level one, run later)
            atexit.register(_native.mpi_finalize)
            _mpi_finalizer_registered = True
        return session


class Publisher:
    """Publishes weights to zrollout engines from tensors in memory (see the module docstring).

    Holds a connection to every engine, the shared-memory segments of earlier ipc publishes and
    the broadcast buffer: keep one for the whole training run, and ``close()`` it (or use it as a
    context manager). Calls are serialized: one publish at a time.
    """

    def __init__(self, endpoints: Iterable[str], timeout_s: float = 600.0, *, heartbeat_s: float = 0.0,
                 heartbeat_liveness: int = 0, log_level: Optional[str] = None, _mpi: Optional[dict] = None):
        endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if log_level is not None:
            _native.set_log_level(log_level)
        self.timeout_s = float(timeout_s)
        self.mpi = _mpi  # {world_rank, world_size, engine_endpoints, engine_ranks} under mpirun
        self._lock = threading.Lock()
        try:
            self._trainer = _native.Trainer(endpoints, heartbeat_s, heartbeat_liveness)
        except _native.Error as e:
            _raise_from(e)

    @classmethod
    def from_mpi(cls, timeout_s: float = 600.0, *, keys_out: Optional[str] = None, **kwargs) -> "Publisher":
        """The trainer rank of ``mpirun -np 1 python3 train.py : -np K zrollout serve ...``.

        Joins the start-up exchange every rank of the job runs (the same as ``zrollout trainer``)
        and connects to the engines it names; ``publish`` then defaults to ``path="broadcast"``.
        Uses the C++ MPI library directly: mpi4py is not needed; when it is imported too (before or
        after), MPI is initialized once. MPI is finalized at interpreter exit; stop the engines
        first (``shutdown_engines()``), or finalization waits for them (at most 10 s).

        keys_out: a folder to write the job's ``server.key`` and a client key pair into
        (``client.key``, ``client.key_secret``, mode 0600), as ``zrollout trainer --keys-out``
        does, so clients outside the job can reach engines and a router bound beyond loopback:
        ``Client(endpoint, curve_server_key=DIR/server.key, curve_secret_key=DIR/client.key_secret)``.
        """
        session = _mpi_session()
        if keys_out is not None:
            try:
                _native.mpi_write_job_keys(str(keys_out))
            except _native.Error as e:
                _raise_from(e)
        return cls(session["engine_endpoints"], timeout_s, _mpi=session, **kwargs)

    @property
    def endpoints(self) -> list:
        return list(self._trainer.endpoints)

    def publish(self, named_tensors: Any, version: int, path: Optional[str] = None, in_flight: str = "drain",
                flush_cache: bool = False, name_map: Optional[NameMap] = None, disk_dir: Optional[str] = None,
                bucket_mib: int = 64, *, only: Optional[Iterable[str]] = None,
                expected_checksums: Optional[Mapping[str, int]] = None, timeout_s: Optional[float] = None,
                reuse_segments: bool = True) -> PublishResult:
        """Publishes `named_tensors` as weight version `version` (greater than the serving one).

        named_tensors: a mapping name -> tensor (a ``state_dict``) or (name, tensor) pairs.
        path: "ipc" | "disk" | "broadcast" (default: "broadcast" from ``from_mpi()``, else "ipc").
        in_flight: what requests running at the commit do: "drain" (finish on the old weights),
            "abort", "continue" (keep their KV, go on with the new weights), "recompute".
        flush_cache: drop cached prefixes with the update.
        name_map: the engine's (Hugging Face) name for each tensor: a dict (names not in it kept)
            or a function (returning None drops the tensor).
        disk_dir: path "disk": the folder to write (default: a temporary folder under the engines'
            first ``weights_roots`` entry of get_model_info, removed after).
        bucket_mib: path "broadcast": the bucket size.
        only: publish only these (engine-side) names.
        expected_checksums: {name: checksum64} the engines verify against instead of the checksum
            computed while sending (e.g. the trainer's own, computed where the tensors were made):
            a tensor that differs is refused, naming it.
        Raises PublishError naming the tensor and the engine; the old version keeps serving.
        """
        if path is None:
            path = "broadcast" if self.mpi is not None else "ipc"
        if path not in _PATHS:
            raise PublishError("invalid_argument", f"path: '{path}' (ipc, disk or broadcast)")
        keep: list = []
        refs = _tensor_refs(named_tensors, name_map, expected_checksums, keep)
        temp_dir = None  # without disk_dir, the native trainer writes under the engines' first weights root
        try:
            with self._lock:
                res = self._trainer.publish(
                    refs, int(version), path=path, in_flight=in_flight, flush_cache=bool(flush_cache),
                    only=list(only or []), disk_dir=disk_dir or "", bucket_bytes=int(bucket_mib) << 20,
                    timeout_s=float(timeout_s if timeout_s is not None else self.timeout_s),
                    reuse_segments=bool(reuse_segments))
        except _native.Error as e:
            _raise_from(e)
        finally:
            del keep
            if temp_dir:
                shutil.rmtree(temp_dir, ignore_errors=True)
        return PublishResult(**res)

    def checksums(self, named_tensors: Any, name_map: Optional[NameMap] = None) -> dict:
        """{name: checksum64} of the tensors, as a publish of them would report (and as the engines'
        ``get_weights_checksum`` reports for tensors they serve in the same dtype)."""
        keep: list = []
        refs = _tensor_refs(named_tensors, name_map, None, keep)
        return {name: _native.checksum64_ptr(ptr, nbytes) for name, _, _, ptr, nbytes, _ in refs}

    def engines(self) -> list:
        """Every engine as the trainer sees it: {index, endpoint, alive, updating, status, ...}."""
        with self._lock:
            return self._trainer.engines()

    def weight_version(self, engine: int = 0) -> int:
        with self._lock:
            try:
                return self._trainer.weight_version(engine)
            except _native.Error as e:
                _raise_from(e)

    def shutdown_engines(self) -> None:
        """Asks every live engine to shut down (under mpirun: lets the job end)."""
        with self._lock:
            try:
                self._trainer.shutdown_engines()
            except _native.Error as e:
                _raise_from(e)

    def held_segments(self) -> int:
        """Shared-memory segments kept for later ipc publishes (in use by an engine, or one spare)."""
        return self._trainer.held_segments()

    def close(self) -> None:
        """Closes the connections and unmaps the kept segments (engines keep serving)."""
        with self._lock:
            self._trainer.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def publish(named_tensors: Any, version: int, endpoints: Optional[Iterable[str]] = None, *,
            timeout_s: float = 600.0, **kwargs) -> PublishResult:
    """One publish through a Publisher made for it (``endpoints``; under mpirun without endpoints:
    ``Publisher.from_mpi()``). Keyword arguments are those of ``Publisher.publish``. A training loop
    should keep one Publisher instead: it reuses its segments and connections."""
    if endpoints is None:
        if not _native.under_mpirun():
            raise PublishError("invalid_argument", "endpoints: give the engines' endpoints (or run under mpirun)")
        pub = Publisher.from_mpi(timeout_s)
    else:
        pub = Publisher(endpoints, timeout_s)
    with pub:
        return pub.publish(named_tensors, version, **kwargs)
