"""zrollout: rollouts for RL post-training on the CPU, from Python.

- :class:`Client` / :class:`AsyncClient`: every op of docs/protocol.md over ZeroMQ.
- :func:`launch` / :func:`launch_local`: start ``zrollout serve`` and stop it on exit.
- :class:`Engine`: a drop-in for the RL surface of ``sglang.Engine`` (``import zrollout as sgl``).
- :class:`Publisher` / :func:`publish`: weights from tensors in memory (``zrollout.weights``).
- ``zrollout.integrations``: adapters for Tunix, SkyRL, verl and RLinf.
- ``python3 -m zrollout.main_generation``: verl's ``main_generation`` over JSONL.
"""

from . import errors
from .client import AsyncClient, AsyncStream, Call, Client, Stream
from .engine import Engine
from .errors import ZrolloutError
from .launch import Server, find_binary, launch, launch_local

try:  # the native half (pybind11) may be absent: a build without it, or before its first build
    from .weights import Publisher, publish
except ImportError as _e:  # pragma: no cover - depends on the build
    _weights_error = _e

    def publish(*args, **kwargs):
        raise errors.Unsupported(f"publish: zrollout.weights is not available ({_weights_error}); build the "
                                 "native module (scripts/build.sh)", field="publish")

    class Publisher:  # noqa: D401 - a stand-in that explains itself
        """Stand-in: zrollout.weights could not be imported (see ``publish``)."""

        def __init__(self, *args, **kwargs):
            publish()

        @classmethod
        def from_mpi(cls, *args, **kwargs):
            publish()

__all__ = ["AsyncClient", "AsyncStream", "Call", "Client", "Engine", "Publisher", "Server", "Stream",
           "ZrolloutError", "errors", "find_binary", "launch", "launch_local", "publish"]
