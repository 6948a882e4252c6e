"""Engine.init_weights_update_group + update_weights_from_distributed under mpirun: the SGLang calls
become zrollout's MPI broadcast from the Python trainer rank (engine_mpi_rank.py), and an engine
started on random weights then answers stories260K's reference greedy cases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _fixtures import *  # noqa: F401,F403
import zrollout

HERE = Path(__file__).resolve().parent


@needs_weights
def test_update_weights_from_distributed_under_mpirun(stories, tmp_path):
    mpirun = os.environ.get("ZR_MPIEXEC") or shutil.which("mpirun")
    if not mpirun:
        pytest.skip("mpirun not found")
    binary = zrollout.find_binary()
    random_model = tmp_path / "random"
    subprocess.run([binary, "make-model", "--like", stories, "--seed", "5", "--out", str(random_model)], check=True,
                   stdout=subprocess.DEVNULL)
    flags = ["--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader"]
    if os.geteuid() == 0:
        flags.insert(0, "--allow-run-as-root")
    cmd = [mpirun, *flags, "-np", "1", sys.executable, str(HERE / "engine_mpi_rank.py"), stories,
           ":", "-np", "1", binary, "serve", "--model", str(random_model), "--bind", "tcp://127.0.0.1:*",
           "--advertise-host", "127.0.0.1", "--threads", "1", "--kv-cache-mb", "16", "--log-level", "warn"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO / "python")])))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (exit {p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}"
    report = json.loads(lines[-1][len("RESULT "):])
    assert report["ok"], json.dumps(report, indent=1) + "\n" + p.stderr[-4000:]
    assert " by broadcast," in report["message"] and report["version_after"] > report["version_before"]
    assert p.returncode == 0, p.stderr[-4000:]


def test_engine_tp2_under_mpirun(stories):
    """Engine(tp_size=2) starts `mpirun -np 2 zrollout serve --tp 2`: greedy outputs equal the
    reference, and leaving the engine stops the job cleanly (exit 0)."""
    if not shutil.which("mpirun"):
        pytest.skip("mpirun not found")
    with zrollout.Engine(model_path=stories, tp_size=2, kv_cache_mb=16, threads=1) as llm:
        server = llm._server
        assert server.args[0].endswith("mpirun") and "--tp" in server.args
        cases = greedy_cases()
        outs = llm.generate(input_ids=[c["prompt_ids"] for c in cases], sampling_params={"temperature": 0, "max_new_tokens": 24})
        assert [o["output_ids"] for o in outs] == [c["greedy_ids"][:24] for c in cases]
        assert llm.client.get_weights_checksum(["model.norm.weight"])["tp_size"] == 2
    assert server.process.returncode == 0, server.log()
