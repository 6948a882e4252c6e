"""One exception class per error code of docs/protocol.md §7.

Every error a server sends (`error` op: ``{req_id, code, message}``) and every client-side failure
(timeout, closed client) is raised as a subclass of :class:`ZrolloutError`. The message names the
field (``"batch[2].sampling_params.top_k: expected an integer"``); :attr:`ZrolloutError.field`
holds that prefix (``"batch[2].sampling_params.top_k"``), or ``""`` when the message does not
start with one (weight errors name the tensor: ``field`` is then the tensor's name). Codes are stable names (comm/status.h); a code this package does not know is raised
as :class:`Internal` with :attr:`code` kept as sent, as the protocol asks.

Each class also derives from the closest builtin (``InvalidArgument`` is a ``ValueError``,
``Timeout`` a ``TimeoutError``, ``Unsupported`` a ``NotImplementedError``...), so callers written
for SGLang, which raises builtins, catch them unchanged.
"""

from __future__ import annotations

import re

# A field path at the start of a message: name, name[3], a.b[2].c, batch[1].input_ids[5] ...
_FIELD_RE = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): ")


# Weight errors name the tensor instead: "tensor model.norm.weight: ...".
_TENSOR_RE = re.compile(r"^tensor (\S+): ")


def field_of(message: str) -> str:
    """The field a server message starts with (``"rid: must be ..."`` -> ``"rid"``; for weight
    errors the tensor: ``"tensor model.norm.weight: ..."`` -> ``"model.norm.weight"``), or ``""``."""
    m = _FIELD_RE.match(message or "") or _TENSOR_RE.match(message or "")
    return m.group(1) if m else ""


class ZrolloutError(Exception):
    """Base class: ``code`` (wire name), ``field``, ``message`` (as sent), ``req_id`` (0 if none)."""

    code = "internal"

    def __init__(self, message: str = "", *, code: str | None = None, req_id: int = 0, field: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.req_id = req_id
        self.field = field_of(message) if field is None else field

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadMessage(ZrolloutError, ValueError):
    code = "bad_message"


class UnknownOp(ZrolloutError, ValueError):
    code = "unknown_op"


class InvalidArgument(ZrolloutError, ValueError):
    code = "invalid_argument"


class OutOfRange(ZrolloutError, ValueError):
    code = "out_of_range"


class TooLong(ZrolloutError, ValueError):
    code = "too_long"


class DuplicateRid(ZrolloutError, ValueError):
    code = "duplicate_rid"


class NotFound(ZrolloutError, LookupError):
    code = "not_found"


class Unsupported(ZrolloutError, NotImplementedError):
    code = "unsupported"


class WeightMismatch(ZrolloutError, ValueError):
    code = "weight_mismatch"


class ChecksumMismatch(ZrolloutError, ValueError):
    code = "checksum_mismatch"


class IoError(ZrolloutError, OSError):
    code = "io_error"


class Unavailable(ZrolloutError, ConnectionError):
    code = "unavailable"


class Timeout(ZrolloutError, TimeoutError):
    code = "timeout"


class Aborted(ZrolloutError):
    code = "aborted"


class Internal(ZrolloutError, RuntimeError):
    code = "internal"


class PermissionDenied(ZrolloutError, PermissionError):
    code = "permission_denied"


ERRORS: dict[str, type[ZrolloutError]] = {
    cls.code: cls
    for cls in (BadMessage, UnknownOp, InvalidArgument, OutOfRange, TooLong, DuplicateRid, NotFound, Unsupported,
                WeightMismatch, ChecksumMismatch, IoError, Unavailable, Timeout, Aborted, Internal,
                PermissionDenied)
}


def error_from(code: str, message: str, req_id: int = 0) -> ZrolloutError:
    """The exception for a wire error; an unknown code becomes :class:`Internal` keeping ``code``."""
    cls = ERRORS.get(code, Internal)
    return cls(message, code=code, req_id=req_id)


def from_native(exc: BaseException) -> ZrolloutError:
    """Converts ``zrollout._native.Error`` (args ``(code, message)``), or any error with ``code``
    and ``message`` attributes (``zrollout.weights.PublishError``), into the matching class."""
    if isinstance(exc, ZrolloutError):
        return exc
    code, message = getattr(exc, "code", None), getattr(exc, "message", None)
    if isinstance(code, str) and isinstance(message, str):
        return error_from(code, message)
    args = getattr(exc, "args", ())
    if len(args) == 2 and all(isinstance(a, str) for a in args):
        return error_from(args[0], args[1])
    return Internal(str(exc))


def unsupported(field: str, why: str) -> Unsupported:
    """A client-side ``unsupported`` error naming ``field`` (message ``"field: why"``)."""
    return Unsupported(f"{field}: {why}", field=field)


def invalid(field: str, why: str) -> InvalidArgument:
    """A client-side ``invalid_argument`` error naming ``field``."""
    return InvalidArgument(f"{field}: {why}", field=field)
