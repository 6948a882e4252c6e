"""The Python client with CURVE keys (``curve_server_key`` / ``curve_secret_key``) against a real
``zrollout serve`` that lists a trainer and a client key: roles, permission_denied, unknown keys."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from _fixtures import *  # noqa: F401,F403
from _fixtures import model_path
from zrollout import errors
from zrollout.client import AsyncClient, Client
from zrollout.launch import _free_tcp_endpoint, find_binary


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    model = model_path("stories260K")
    keys = tmp_path_factory.mktemp("keys")
    binary = find_binary()
    (keys / "trainers").mkdir()
    (keys / "clients").mkdir()
    for name in ("server", "trainers/t", "clients/c", "stranger"):
        subprocess.run([binary, "keygen", "--out", str(keys / name)], check=True, capture_output=True)
    ep = _free_tcp_endpoint()
    log = open(keys / "serve.log", "wb")
    proc = subprocess.Popen([binary, "serve", "--model", model, "--bind", ep, "--threads", "1", "--kv-cache-mb", "32",
                             "--curve-secret", str(keys / "server.key_secret"), "--trainer-keys", str(keys / "trainers"),
                             "--client-keys", str(keys / "clients")], stdout=log, stderr=subprocess.STDOUT)
    try:
        with Client(ep, timeout=0.5, curve_server_key=str(keys / "server.key"),
                    curve_secret_key=str(keys / "trainers/t.key_secret")) as probe:
            for _ in range(200):
                try:
                    probe.health()
                    break
                except errors.Timeout:
                    assert proc.poll() is None, (keys / "serve.log").read_text()
        yield ep, keys
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def client(ep: str, keys: Path, who: str, timeout: float = 30) -> Client:
    return Client(ep, timeout=timeout, curve_server_key=str(keys / "server.key"),
                  curve_secret_key=str(keys / f"{who}.key_secret"))


def test_client_key_generates_but_may_not_flush(keyed_server):
    ep, keys = keyed_server
    with client(ep, keys, "clients/c") as c:
        out = c.generate(rid="curve-1", input_ids=[1, 403, 407], sampling_params={"max_new_tokens": 3, "temperature": 0})
        assert len(out["outputs"][0]["output_ids"]) == 3
        with pytest.raises(errors.PermissionDenied) as e:
            c.flush_cache()
        assert "'flush_cache'" in str(e.value)
        assert isinstance(e.value, PermissionError)
        assert c.health()["status"] == "serving"


def test_trainer_key_may_flush(keyed_server):
    ep, keys = keyed_server
    with client(ep, keys, "trainers/t") as t:
        t.flush_cache()


def test_unknown_key_gets_no_answer(keyed_server):
    ep, keys = keyed_server
    with client(ep, keys, "stranger", timeout=1.5) as s:
        with pytest.raises(errors.Timeout):
            s.health()
    with client(ep, keys, "clients/c") as c:  # the server still serves the others
        assert c.health()["status"] == "serving"


def test_async_client_with_keys(keyed_server):
    import asyncio
    ep, keys = keyed_server

    async def run():
        async with AsyncClient(ep, timeout=30, curve_server_key=str(keys / "server.key"),
                               curve_secret_key=str(keys / "clients/c.key_secret")) as c:
            return await c.health()

    assert asyncio.run(run())["status"] == "serving"


def test_half_a_key_pair_is_refused(keyed_server):
    ep, keys = keyed_server
    with pytest.raises(errors.InvalidArgument):
        Client(ep, curve_server_key=str(keys / "server.key"))
    with pytest.raises(errors.InvalidArgument):
        Client(ep, curve_server_key=str(keys / "server.key"), curve_secret_key=str(keys / "clients/c.key"))


def test_disk_updates_only_under_the_weights_roots(server, tmp_path):
    """get_model_info lists the roots (the test servers allow the temp folder and the shared models);
    a disk_path elsewhere is permission_denied naming disk_path, before anything is read."""
    c = server.client
    roots = c.get_model_info()["weights_roots"]
    assert roots and all(Path(r).is_absolute() for r in roots)
    version = c.get_weight_version()["version"] + 1
    with pytest.raises(errors.PermissionDenied) as e:
        c.update_weights(version=version, path="disk", disk_path="/proc/self", tensors=[])
    assert e.value.field == "disk_path"
