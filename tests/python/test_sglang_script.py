"""An RL script written for SGLang (sglang_rl_script.py) runs on zrollout with only its import
changed; and the import is indeed the only SGLang-specific line that differs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _fixtures import *  # noqa: F401,F403

SCRIPT = Path(__file__).with_name("sglang_rl_script.py")


def test_only_the_import_differs():
    lines = SCRIPT.read_text().splitlines()
    imports = [line for line in lines if re.match(r"\s*(import|from)\s+\S*(sglang|zrollout)", line)]
    assert imports == ["import zrollout as sgl  # an SGLang script has: import sglang as sgl"]
    assert "zrollout" not in "\n".join(line for line in lines if line not in imports and not line.startswith('"""'))


@needs_weights
def test_sglang_rl_script_runs(stories):
    pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO / "python")]))}
    r = subprocess.run([sys.executable, str(SCRIPT), stories], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok "), r.stdout
    assert greedy_cases()[0]["text"].startswith(r.stdout.split('"text": "')[1].split('"')[0])
