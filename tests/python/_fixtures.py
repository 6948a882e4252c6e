"""Shared fixtures of the client, engine and adapter suites (``from _fixtures import *``).

Models come from $ZROLLOUT_TEST_MODELS, else ../shared/models beside the repository root; a test
that needs one skips with a message naming where it looked. The server is a real ``zrollout
serve`` (found like ``zrollout.launch`` finds it: $ZROLLOUT_BIN, then build/launch/zrollout).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
try:
    import zrollout  # PYTHONPATH (ctest sets it), an install, or a .pth
except ImportError:  # pytest run by hand from a checkout
    sys.path.insert(0, str(REPO / "python"))
    import zrollout

# Engine flags for tests: one compute thread (the machine is shared), a small lazily-faulted KV pool,
# and disk updates allowed from the shared models and the temporary folders the tests write.
SERVE_FLAGS = {"threads": 1, "kv_cache_mb": 32, "kv_lazy_pages": True, "log_level": "warn",
               "weights_root": [d for d in (tempfile.gettempdir(),
                                            os.environ.get("ZROLLOUT_TEST_MODELS") or str(REPO.parent / "shared" / "models"))
                                if os.path.isdir(d)]}


def models_dir() -> Path:
    env = os.environ.get("ZROLLOUT_TEST_MODELS")
    return Path(env) if env else REPO.parent / "shared" / "models"


def model_path(name: str = "stories260K") -> str:
    p = models_dir() / name
    if not (p / "config.json").is_file():
        pytest.skip(f"test model {name} not found in {models_dir()} (set ZROLLOUT_TEST_MODELS)")
    return str(p)


def reference(name: str = "stories260K") -> dict:
    return json.loads((Path(model_path(name)) / "reference.json").read_text())


def greedy_cases(name: str = "stories260K") -> list[dict]:
    return [c for c in reference(name)["cases"] if c["kind"] == "greedy"]


def score_cases(name: str = "stories260K") -> list[dict]:
    return [c for c in reference(name)["cases"] if c["kind"] == "score"]


def read_safetensors(path: str | Path) -> dict:
    """{name: numpy array} of a safetensors checkpoint (F32/F16 as such, BF16 as uint16 bit
    patterns), read by the package's reader: enough for tests to hand real weights to publishers."""
    from zrollout import safetensors

    return safetensors.load(path, "numpy")


@pytest.fixture(scope="module")
def stories():
    return model_path("stories260K")


@pytest.fixture(scope="module")
def server(stories):
    """One ``zrollout serve`` on stories260K for the module."""
    with zrollout.launch(stories, **SERVE_FLAGS) as srv:
        yield srv


@pytest.fixture
def client(server):
    with zrollout.Client(server.endpoint, timeout=60) as c:
        yield c


def weights_available() -> bool:
    try:
        import zrollout.weights  # noqa: F401
    except ImportError:
        return False
    return True


needs_weights = pytest.mark.skipif(not weights_available(),
                                   reason="zrollout.weights (the native module) is not built")

__all__ = ["REPO", "SERVE_FLAGS", "client", "greedy_cases", "model_path", "models_dir", "needs_weights",
           "read_safetensors", "reference", "score_cases", "server", "stories", "weights_available"]
