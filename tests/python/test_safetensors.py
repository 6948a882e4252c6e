"""zrollout.safetensors: the C++ reader (model/safetensors.h) from Python. A folder and its file read
the same; numpy and torch loads agree; bf16 widens exactly; the bytes are those the engine serves
(checksum64 equals get_weights_checksum of the model it loaded); errors name the file."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_model

from zrollout import _native, safetensors
from zrollout.weights import checksum64


def test_folder_and_file_read_the_same_bytes():
    model = shared_model("stories260K")
    by_dir, by_file = safetensors.read(model), safetensors.read(model / "model.safetensors")
    assert by_dir.keys() == by_file.keys() and "model.norm.weight" in by_dir
    for name, t in by_dir.items():
        assert t.dtype == "F32" and bytes(t.data) == bytes(by_file[name].data)
        assert t.array().shape == t.shape and not t.array().flags.writeable
    arrays = safetensors.load(model)
    assert all(a.flags.writeable and a.dtype == np.float32 for a in arrays.values())  # copies the caller owns


def test_checksums_are_those_the_engine_serves(serve):
    model = shared_model("stories260K")
    engine = serve(model)
    served = {t["name"]: t["checksum"] for t in engine.client.ok("get_weights_checksum")["tensors"]}
    arrays = safetensors.load(model)
    assert served and all(served[n] == checksum64(arrays[n]) for n in served if n in arrays)


def test_bf16_numpy_and_torch_agree():
    torch = pytest.importorskip("torch")
    model = shared_model("stories260K-bf16")
    bits = safetensors.load(model)
    wide = safetensors.load(model, dtype=np.float32)
    sd = safetensors.load(model, "torch")
    for name, t in sd.items():
        assert t.dtype == torch.bfloat16 and bits[name].dtype == np.uint16
        assert np.array_equal(t.float().numpy(), wide[name])
        assert np.array_equal(t.view(torch.int16).numpy().view(np.uint16), bits[name])


def test_errors_name_the_file(tmp_path):
    with pytest.raises(_native.Error) as e:
        safetensors.read(tmp_path)
    assert e.value.args[0] == "not_found" and str(tmp_path) in e.value.args[1]
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(_native.Error) as e:
        safetensors.read(tmp_path)
    assert e.value.args[0] == "io_error" and "model.safetensors" in e.value.args[1]
    with pytest.raises(ValueError):
        safetensors.load(shared_model("stories260K"), "jax")
