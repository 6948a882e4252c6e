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


def _weights_stand_in(error: ImportError):
    """What ``Publisher`` / ``publish`` are when zrollout.weights cannot be imported: callables that
    raise ``Unsupported`` saying why (a build without the native module, or before its build)."""

    def publish(*args, **kwargs):
        raise errors.Unsupported(f"publish: zrollout.weights is not available ({error}); build the native "
                                 "module (scripts/build.sh)", field="publish")

    class Publisher:
        """Stand-in: zrollout.weights could not be imported (see ``publish``)."""

        def __init__(self, *args, **kwargs):
            publish()

        @classmethod
        def from_mpi(cls, *args, **kwargs):
            publish()

    return {"Publisher": Publisher, "publish": publish}


def __getattr__(name: str):
    """``Publisher`` and ``publish`` come from zrollout.weights, imported on first use: ``import
    zrollout`` does not load the native module (and its MPI library) until weights are published."""
    if name not in ("Publisher", "publish"):
        raise AttributeError(f"module 'zrollout' has no attribute {name!r}")
    try:
        from . import weights
        found = {"Publisher": weights.Publisher, "publish": weights.publish}
    except ImportError as e:
        found = _weights_stand_in(e)
    globals().update(found)
    return found[name]


__all__ = ["AsyncClient", "AsyncStream", "Call", "Client", "Engine", "Publisher", "Server", "Stream",
           "ZrolloutError", "errors", "find_binary", "launch", "launch_local", "publish"]
