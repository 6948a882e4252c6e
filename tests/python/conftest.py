"""Shared pytest fixtures for the Python package's tests (tests/python, label `python` in ctest).

They find:
- the package: PYTHONPATH=<repo>/python (ctest sets it; also found from this file's location);
- the zrollout binary: $ZROLLOUT_BIN (ctest sets it), else <repo>/build/launch/zrollout;
- the test models: $ZROLLOUT_TEST_MODELS, else <repo>/../shared/models (tests skip when absent).

`serve(model_dir, *flags)` starts a `zrollout serve` subprocess on a free local port and stops it
at the end of the test; `WireClient` speaks docs/protocol.md with zmq + msgpack directly (it does
not depend on zrollout.Client), enough to generate and check outputs.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "python") not in sys.path:
    sys.path.insert(0, str(REPO / "python"))


def zrollout_bin() -> Path:
    path = Path(os.environ.get("ZROLLOUT_BIN", REPO / "build" / "launch" / "zrollout"))
    if not path.exists():
        pytest.skip(f"zrollout binary not found at {path}: build it or set ZROLLOUT_BIN")
    return path


def models_dir() -> Path:
    return Path(os.environ.get("ZROLLOUT_TEST_MODELS", REPO.parent / "shared" / "models"))


def shared_model(name: str) -> Path:
    d = models_dir() / name
    if not (d / "config.json").exists():
        pytest.skip(f"shared model '{name}' not found in {models_dir()}: set ZROLLOUT_TEST_MODELS or place ../shared/models")
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WireClient:
    """A DEALER speaking docs/protocol.md: one call at a time, matched by req_id."""

    def __init__(self, endpoint: str):
        import zmq

        self._zmq = zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self._ids = itertools.count(1)

    def call(self, op: str, body: dict | None = None, timeout_s: float = 60.0) -> tuple[str, dict]:
        import msgpack

        req_id = next(self._ids)
        self.sock.send_multipart([op.encode(), msgpack.packb({**(body or {}), "req_id": req_id}, use_bin_type=True)])
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise TimeoutError(f"{op}: no reply within {timeout_s} s")
            frames = self.sock.recv_multipart()
            reply = msgpack.unpackb(frames[1], raw=False)
            if reply.get("req_id") == req_id and frames[0] != b"generate.chunk":
                return frames[0].decode(), reply

    def ok(self, op: str, body: dict | None = None, timeout_s: float = 60.0) -> dict:
        rop, reply = self.call(op, body, timeout_s)
        assert rop == op + ".reply", f"{op}: {reply}"
        return reply

    def greedy_ids(self, prompt_ids: list, max_new_tokens: int) -> list:
        req = {"rid": f"g{next(self._ids)}", "input_ids": prompt_ids,
               "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True}}
        reply = self.ok("generate", req)
        return list(reply["outputs"][0]["output_ids"] if "outputs" in reply else reply["output_ids"])

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


class Served:
    """A `zrollout serve` subprocess and a WireClient connected to it."""

    def __init__(self, model: Path, flags: tuple, log: Path):
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        cmd = [str(zrollout_bin()), "serve", "--model", str(model), "--bind", self.endpoint, "--threads", "1",
               "--kv-cache-mb", "16", *flags]
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT)
        self.client = WireClient(self.endpoint)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zrollout serve exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if self.client.call("health", timeout_s=1.0)[0] == "health.reply":
                    break
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"zrollout serve did not answer health within 60 s:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.client.call("shutdown", timeout_s=10.0)
                self.proc.wait(timeout=30)
            except (TimeoutError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        self._log_file.close()


@pytest.fixture
def serve(tmp_path):
    """serve(model_dir, *flags) -> Served; every server is stopped at the end of the test."""
    started = []

    def start(model: Path, *flags: str) -> Served:
        s = Served(model, flags, tmp_path / f"serve{len(started)}.log")
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def random_like(tmp_path):
    """random_like(name, seed=5) -> a folder with random weights shaped like shared model `name`."""

    def make(name: str, seed: int = 5) -> Path:
        out = tmp_path / f"random-{name}-{seed}"
        subprocess.run([str(zrollout_bin()), "make-model", "--like", str(shared_model(name)), "--seed", str(seed),
                        "--out", str(out)], check=True, capture_output=True)
        return out

    return make


def reference_cases(model: Path, kind: str = "greedy") -> list:
    return [c for c in json.loads((model / "reference.json").read_text())["cases"] if c["kind"] == kind]


def read_safetensors(path: Path) -> dict:
    """{name: (dtype, shape, bytes)} of a safetensors file, read by the package's reader."""
    from zrollout import safetensors

    return {name: (t.dtype, t.shape, bytes(t.data)) for name, t in safetensors.read(path).items()}


def torch_state_dict(model: Path) -> dict:
    """The checkpoint's tensors as a torch state_dict (its own dtypes: F32, BF16, F16)."""
    pytest.importorskip("torch")
    from zrollout import safetensors

    return safetensors.load(model, "torch")


def numpy_state_dict(model: Path) -> dict:
    """The checkpoint's tensors as numpy arrays (F32, F16; BF16 as uint16 bit patterns)."""
    from zrollout import safetensors

    return safetensors.load(model, "numpy")
