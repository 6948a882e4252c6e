"""The wire of docs/protocol.md, shared by the sync and async clients: frames, bodies, the ops.

A message is ``[op, msgpack body]`` (no delimiter frame); the body is a map with ``req_id``.
Requests are strict on the server (unknown fields are errors naming the field), replies lenient:
this module passes reply bodies through as dicts and reads only ``req_id``.

What the clients change in a request before it goes out: ids given as numpy/torch arrays (and
long lists) go as little-endian int32 ``bin`` (the fast path). Everything else is the server's:
a missing ``rid`` is assigned by the server (returned in ``meta_info.id``), ``input_ids`` takes
precedence over ``text``, and a bad ``bin`` is refused with the call's ``req_id``.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgpack

from . import errors

# Ids at least this long are sent as an int32 bin even when given as a Python list: one memcpy on
# both sides instead of a msgpack int per token.
BIN_IDS_FROM = 256

REPLY_SUFFIX = ".reply"
CHUNK_OP = "generate.chunk"
ERROR_OP = "error"

# Fields of one generate / score request whose values are token ids (list or bin).
_ID_FIELDS = ("input_ids", "completion_ids")


def _np():
    try:
        import numpy
    except ImportError:  # numpy is a dependency, but the client works without it
        return None
    return numpy


def _default(obj: Any) -> Any:
    """msgpack hook: numpy / torch scalars and arrays become Python numbers and lists."""
    np = _np()
    if np is not None:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    if hasattr(obj, "tolist"):  # torch.Tensor without importing torch
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} in a request body")


def pack(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True, default=_default)


def unpack(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(op: str, body: dict) -> list[bytes]:
    return [op.encode(), pack(body)]


def ids_value(value: Any, field: str) -> Any:
    """Token ids as the wire wants them: a list, or an int32 LE bin for arrays and long lists."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)  # the server checks it is a whole number of int32
    np = _np()
    if np is not None and (isinstance(value, np.ndarray) or hasattr(value, "numpy")):
        arr = value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else value
        if arr.ndim != 1:
            raise errors.invalid(field, f"expected one dimension of ids, got shape {tuple(arr.shape)}")
        return np.ascontiguousarray(arr, dtype="<i4").tobytes()
    if isinstance(value, (list, tuple)):
        if np is not None and len(value) >= BIN_IDS_FROM and all(type(v) is int for v in value):
            return np.asarray(value, dtype="<i4").tobytes()
        return list(value)
    return value  # anything else: the server names the field


def prepare_request(req: dict) -> dict:
    """One generate or score request, ready for the wire (see the module comment)."""
    if not isinstance(req, dict):
        raise errors.InvalidArgument(f"request: expected a dict, got {type(req).__name__}", field="request")
    out = dict(req)
    for field in _ID_FIELDS:
        if field in out and out[field] is not None:
            out[field] = ids_value(out[field], field)
    return out


def calls_body(requests: dict | Iterable[dict]) -> dict:
    """The body of a generate / score call: one dict is the single form, a list the batch form."""
    if isinstance(requests, dict):
        return prepare_request(requests)
    batch = []
    for i, r in enumerate(requests):
        try:
            batch.append(prepare_request(r))
        except errors.ZrolloutError as e:
            raise type(e)(f"batch[{i}].{e.message}") from None
    if not batch:
        raise errors.invalid("batch", "needs at least one request")
    return {"batch": batch}


def prepare_body(op: str, body: dict | None) -> dict:
    """A body given whole (``call``, ``submit``): generate and score bodies get ``prepare_request``."""
    body = dict(body or {})
    if op in ("generate", "score"):
        return calls_body(body["batch"]) if "batch" in body else calls_body(body)
    return body


def abort_body(rid: str | None, rid_prefix: str | None, all: bool) -> dict:
    chosen = [k for k, v in (("rid", rid), ("rid_prefix", rid_prefix), ("all", all)) if v]
    if len(chosen) != 1:
        raise errors.invalid("abort", "give exactly one of rid, rid_prefix, all=True")
    if all:
        return {"all": True}
    return {"rid": rid} if rid else {"rid_prefix": rid_prefix}


def reply_error(op: str, body: dict) -> errors.ZrolloutError | None:
    """The exception an `error` reply stands for, or None for a normal reply."""
    if op != ERROR_OP:
        return None
    return errors.error_from(str(body.get("code", "internal")), str(body.get("message", "")), int(body.get("req_id") or 0))


class Ops:
    """Every op of docs/protocol.md §3 as a method, written once for both clients.

    A subclass implements ``_call(op, body, timeout, stream)``: the sync Client returns the reply
    body (or a stream iterator), the AsyncClient a coroutine. Replies are the server's bodies as
    dicts (``req_id`` included); unknown reply fields are kept.
    """

    def _call(self, op: str, body: dict, timeout: float | None, stream: bool = False):
        raise NotImplementedError

    # -- generation ---------------------------------------------------------------------------
    def generate(self, requests: dict | list[dict] | None = None, *, timeout: float | None = None,
                 stream: bool = False, **fields):
        """``generate``: one request (dict, or keyword fields) or a batch (list of dicts).

        Returns the ``generate.reply`` body ``{"req_id", "outputs": [...]}``. With ``stream=True``
        every request is sent with ``stream: true`` and the result is an iterator over the
        ``generate.chunk`` bodies; after it ends, its ``reply`` holds the final reply.
        """
        if requests is None:
            requests = fields
        elif fields:
            raise errors.invalid("generate", "give a request dict or keyword fields, not both")
        if stream:
            requests = dict(requests, stream=True) if isinstance(requests, dict) else \
                [dict(r, stream=True) for r in requests]
        return self._call("generate", calls_body(requests), timeout, stream)

    def score(self, requests: dict | list[dict] | None = None, *, timeout: float | None = None, **fields):
        """``score`` (teacher forcing): ``{input_ids, completion_ids, temperature?, top_logprobs_num?}``."""
        if requests is None:
            requests = fields
        return self._call("score", calls_body(requests), timeout)

    def abort(self, rid: str | None = None, *, rid_prefix: str | None = None, all: bool = False,
              timeout: float | None = None):
        """``abort`` by rid, rid prefix or all; the aborted calls answer with partial outputs."""
        return self._call("abort", abort_body(rid, rid_prefix, all), timeout)

    # -- sessions -----------------------------------------------------------------------------
    def open_session(self, *, timeout: float | None = None):
        return self._call("open_session", {}, timeout)

    def close_session(self, session_id: str, *, timeout: float | None = None):
        return self._call("close_session", {"session_id": session_id}, timeout)

    # -- state --------------------------------------------------------------------------------
    def health(self, *, timeout: float | None = None):
        return self._call("health", {}, timeout)

    def get_load(self, *, timeout: float | None = None):
        return self._call("get_load", {}, timeout)

    def get_model_info(self, *, timeout: float | None = None):
        return self._call("get_model_info", {}, timeout)

    def flush_cache(self, *, timeout: float | None = None):
        return self._call("flush_cache", {}, timeout)

    def get_engines(self, *, timeout: float | None = None):
        """Routers only (an engine answers ``unknown_op``)."""
        return self._call("get_engines", {}, timeout)

    # -- weights and memory -------------------------------------------------------------------
    def update_weights(self, *, timeout: float | None = None, **body):
        """``update_weights`` with the fields of protocol.md §8 (``version``, ``path``, ``tensors``...).

        The bytes must already be where ``path`` says (a disk folder, a shared-memory segment, an
        MPI broadcast): ``zrollout.weights.Publisher`` does all of that from tensors in memory.
        """
        return self._call("update_weights", body, timeout)

    def get_weight_version(self, *, timeout: float | None = None):
        return self._call("get_weight_version", {}, timeout)

    def get_weights_checksum(self, names: list[str] | None = None, *, timeout: float | None = None):
        return self._call("get_weights_checksum", {} if names is None else {"names": list(names)}, timeout)

    def release_memory(self, tags: list[str] = ("weights", "kv_cache"), *, timeout: float | None = None):
        return self._call("release_memory", {"tags": list(tags)}, timeout)

    def resume_memory(self, tags: list[str] = ("weights", "kv_cache"), *, timeout: float | None = None):
        return self._call("resume_memory", {"tags": list(tags)}, timeout)

    def shutdown(self, *, timeout: float | None = None):
        """Asks the server to drain and exit (it answers first)."""
        return self._call("shutdown", {}, timeout)

    def call(self, op: str, body: dict | None = None, *, timeout: float | None = None, stream: bool = False):
        """Any op with a body as given (``req_id`` is added); for ops this package does not know yet."""
        return self._call(op, prepare_body(op, body), timeout, stream)
