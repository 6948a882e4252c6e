"""The GRPO example by broadcast for real: `mpirun -np 1 python3 examples/grpo/train.py --path
broadcast : -np 2 zrollout serve --model models/stories260K ...`. The Python trainer is the root of
the engines' bucketed MPI broadcast; each step's tokens come from the version published before it,
logprobs agree with the trainer's to f32 rounding, and the engines serve the published checksums."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, zrollout_bin

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "stories260K"


def test_grpo_by_broadcast_under_mpirun(tmp_path):
    mpirun = os.environ.get("ZR_MPIEXEC") or shutil.which("mpirun")
    if not mpirun:
        pytest.skip("mpirun not found")
    flags = ["--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader"]
    if os.geteuid() == 0:
        flags.insert(0, "--allow-run-as-root")
    metrics = tmp_path / "m.jsonl"
    cmd = [mpirun, *flags, "-np", "1", sys.executable, str(ROOT / "examples" / "grpo" / "train.py"),
           "--path", "broadcast", "--steps", "3", "--prompts", "4", "--n", "4", "--max-new-tokens", "24",
           "--seed", "1", "--quiet", "--metrics", str(metrics), "--plot", ""]
    for _ in range(2):
        cmd += [":", "-np", "1", str(zrollout_bin()), "serve", "--model", str(MODEL), "--bind",
                f"tcp://127.0.0.1:{free_port()}", "--threads", "1", "--kv-cache-mb", "16", "--kv-lazy-pages",
                "--log-level", "warn"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "python"), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-4000:]}"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["tokens"] > 0 and r["publish_bytes"] > 0
        assert r["logprob_diff_max"] <= max(1e-5, 2 * r["torch_f32_diff_max"]), r  # f32 rounding (test_grpo.f32_bound)
        assert r["versions_seen"] == [r["published_before"]], r
        assert r["version"] == r["published_before"] + 1
    assert rows[-1]["checksums_compared"] > 0 and rows[-1]["checksums_match"] is True
