"""Clients outside an mpirun job: the trainer rank writes the job's keys with ``zrollout trainer
--keys-out DIR`` (or ``Publisher.from_mpi(keys_out=DIR)`` in a Python trainer rank), and a Python
client given DIR/server.key and DIR/client.key_secret reaches an engine and a router bound beyond
loopback (tcp://0.0.0.0, so they serve with the job's CURVE keys) with the client role; a client
without keys, or with a key the job never made, gets no answer."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _fixtures import *  # noqa: F401,F403
from _fixtures import REPO, model_path
from zrollout import errors
from zrollout.client import Client
from zrollout.launch import _free_tcp_endpoint, find_binary

HERE = Path(__file__).resolve().parent


def _port() -> str:
    return _free_tcp_endpoint().rsplit(":", 1)[1]


@pytest.fixture(scope="module", params=["zrollout trainer", "python trainer"])
def job(request, tmp_path_factory):
    """mpirun -np 1 TRAINER : -np 1 zrollout serve --bind tcp://0.0.0.0:* : -np 1 zrollout router
    --bind tcp://0.0.0.0:PORT; yields (engine endpoint, router endpoint, keys folder)."""
    mpirun = os.environ.get("ZR_MPIEXEC") or shutil.which("mpirun")
    if not mpirun:
        pytest.skip("mpirun not found")
    model = model_path("stories260K")
    binary = find_binary()
    keys = tmp_path_factory.mktemp("keys_out")
    if request.param == "zrollout trainer":
        trainer = [binary, "trainer", "--keys-out", str(keys)]
    else:
        trainer = [sys.executable, str(HERE / "keys_out_rank.py"), str(keys)]
    router_port = _port()
    flags = ["--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader"]
    if os.geteuid() == 0:
        flags.insert(0, "--allow-run-as-root")
    cmd = [mpirun, *flags, "-np", "1", *trainer,
           ":", "-np", "1", binary, "serve", "--model", model, "--bind", "tcp://0.0.0.0:*", "--advertise-interface", "lo",
           "--threads", "1", "--kv-cache-mb", "16",
           ":", "-np", "1", binary, "router", "--bind", f"tcp://0.0.0.0:{router_port}"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO / "python")])))
    log_path = keys.parent / f"{keys.name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        engine = None
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            m = re.search(r"engine at (tcp://\S+)", text)
            if m and "routing on" in text and (keys / "client.key_secret").exists():
                engine = m.group(1)
                break
            assert proc.poll() is None, text
            time.sleep(0.1)
        assert engine, log_path.read_text(errors="replace")
        yield engine, f"tcp://127.0.0.1:{router_port}", keys
    finally:
        (keys / "done").touch()  # the Python trainer rank stops the engines; the router needs SIGTERM
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        log.close()


def keyed(ep: str, keys: Path, timeout: float = 30) -> Client:
    return Client(ep, timeout=timeout, curve_server_key=str(keys / "server.key"),
                  curve_secret_key=str(keys / "client.key_secret"))


def test_the_written_files(job):
    _, _, keys = job
    assert sorted(p.name for p in keys.iterdir() if p.name != "done") == ["client.key", "client.key_secret", "server.key"]
    assert stat.S_IMODE((keys / "client.key_secret").stat().st_mode) == 0o600
    assert "secret-key" not in (keys / "server.key").read_text()
    assert "secret-key" not in (keys / "client.key").read_text()


@pytest.mark.parametrize("where", ["engine", "router"])
def test_written_client_keys_generate_with_the_client_role(job, where):
    engine, router, keys = job
    ep = engine if where == "engine" else router
    with keyed(ep, keys) as c:
        out = c.generate(rid=f"keys-out-{where}", input_ids=[1, 403, 407],
                         sampling_params={"max_new_tokens": 3, "temperature": 0})
        assert len(out["outputs"][0]["output_ids"]) == 3
        with pytest.raises(errors.PermissionDenied) as e:  # a client key, not a trainer key
            c.flush_cache()
        assert "'flush_cache'" in str(e.value)


@pytest.mark.parametrize("where", ["engine", "router"])
def test_without_the_job_keys_nothing_answers(job, where, tmp_path):
    engine, router, keys = job
    ep = engine if where == "engine" else router
    with Client(ep, timeout=1.5) as plain:
        with pytest.raises(errors.Timeout):
            plain.health()
    subprocess.run([find_binary(), "keygen", "--out", str(tmp_path / "stranger")], check=True, capture_output=True)
    with Client(ep, timeout=1.5, curve_server_key=str(keys / "server.key"),
                curve_secret_key=str(tmp_path / "stranger.key_secret")) as stranger:
        with pytest.raises(errors.Timeout):
            stranger.health()
    with keyed(ep, keys) as c:  # still serving the job's keys
        assert c.health()["status"] == "serving"
