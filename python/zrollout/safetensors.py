"""Reading safetensors checkpoints (a ``.safetensors`` file, or a Hugging Face folder: single file or
shards listed in ``model.safetensors.index.json``) with the engine's own C++ reader
(model/safetensors.h, through ``zrollout._native``): one parser of the format in the project.

``read(path)`` maps the file and gives each tensor's bytes without copying them;
``load(path, framework)`` gives arrays the caller owns (copies), for a trainer or a test:

- ``"numpy"``: F32 -> float32, F16 -> float16, BF16 -> uint16 bit patterns (numpy has no bfloat16),
  unless ``dtype="float32"`` asks for every tensor widened to float32;
- ``"torch"``: the file's own dtypes (float32, float16, bfloat16), or ``dtype`` (e.g. ``torch.float32``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from zrollout import _native

__all__ = ["Tensor", "read", "load"]

_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class Tensor(NamedTuple):
    """One tensor as stored: safetensors dtype name, shape, and its bytes (a read-only buffer into
    the mapped file, which stays mapped while the buffer or an array viewing it lives)."""

    dtype: str
    shape: tuple
    data: Any

    def array(self) -> np.ndarray:
        """A read-only numpy view of the bytes (BF16 as uint16 bit patterns), no copy."""
        return np.frombuffer(self.data, dtype=np.dtype(_NUMPY[self.dtype]).newbyteorder("<")).reshape(self.shape)


def read(path: str | Path) -> dict[str, Tensor]:
    """{name: Tensor} of a safetensors file or model folder, memory-mapped (see the module doc).
    Raises ``zrollout._native.Error`` (code, message) naming the file when it cannot be read."""
    return {name: Tensor(dtype, tuple(shape), data) for name, dtype, shape, data in _native.read_safetensors(str(path))}


def _widen_bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def load(path: str | Path, framework: str = "numpy", dtype: Any = None) -> dict[str, Any]:
    """{name: array} copied out of a safetensors file or folder: numpy arrays or torch tensors."""
    tensors = read(path)
    if framework == "numpy":
        out = {}
        for name, t in tensors.items():
            a = t.array()
            if dtype is not None:
                a = _widen_bf16(a) if t.dtype == "BF16" else a
                out[name] = a.astype(dtype)  # a copy even when the dtype is the same
            else:
                out[name] = a.copy()
        return out
    if framework == "torch":
        import torch

        out = {}
        for name, t in tensors.items():
            a = t.array().copy()
            x = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if t.dtype == "BF16" else torch.from_numpy(a)
            out[name] = x if dtype is None else x.to(dtype)
        return out
    raise ValueError(f"framework: '{framework}' (numpy or torch)")
