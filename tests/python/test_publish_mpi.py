"""Broadcast from a Python trainer rank: `mpirun -np 1 python3 publish_mpi_rank.py : -np K zrollout
serve ...` runs the same start-up exchange and the same bucketed broadcast as `zrollout trainer`;
the engines, started on random weights, then answer stories260K's reference cases exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, shared_model, zrollout_bin

HERE = Path(__file__).resolve().parent


def mpirun_cmd(np_engines: int, real: Path, kind: str, random_model: Path) -> list:
    mpirun = os.environ.get("ZR_MPIEXEC") or shutil.which("mpirun")
    if not mpirun:
        pytest.skip("mpirun not found")
    flags = ["--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader"]
    if os.geteuid() == 0:
        flags.insert(0, "--allow-run-as-root")
    cmd = [mpirun, *flags, "-np", "1", sys.executable, str(HERE / "publish_mpi_rank.py"), str(real), kind]
    for _ in range(np_engines):
        cmd += [":", "-np", "1", str(zrollout_bin()), "serve", "--model", str(random_model), "--bind",
                f"tcp://127.0.0.1:{free_port()}", "--threads", "1", "--kv-cache-mb", "16", "--log-level", "warn"]
    return cmd


@pytest.mark.parametrize("kind,engines", [("numpy", 1), ("torch", 2)])
def test_broadcast_from_python_under_mpirun(random_like, kind, engines):
    if kind == "torch":
        pytest.importorskip("torch")
    real = shared_model("stories260K")
    cmd = mpirun_cmd(engines, real, kind, random_like("stories260K"))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parents[1] / "python"), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, f"no result (exit {p.returncode}):\n{p.stdout}\n{p.stderr}"
    report = json.loads(lines[-1][len("RESULT "):])
    assert report["ok"], json.dumps(report, indent=1) + "\n" + p.stderr[-4000:]
    assert p.returncode == 0, p.stderr[-4000:]
    assert len(report["endpoints"]) == engines and report["acked"] == list(range(engines))
    if "mpi4py_world_size" in report:
        assert report["mpi4py_world_size"] == engines + 1
