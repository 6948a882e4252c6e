"""What the Python publish benchmarks share (bench/bench_publish.py, bench/bench_publish_mpi.py):
the stories110M-shape model they publish, a free loopback port, and the host settings they print."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path


def ensure_model(zrollout: Path, model: Path, preset: str = "stories110M") -> None:
    """Makes `model` with `zrollout make-model --preset` when it has no config.json yet."""
    if not (model / "config.json").exists():
        subprocess.run([str(zrollout), "make-model", "--preset", preset, "--out", str(model)], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sys_text(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "(unreadable)"


def host_settings() -> str:
    """The THP settings and OPENBLAS_CORETYPE of this run, as one line."""
    thp = "/sys/kernel/mm/transparent_hugepage/"
    return (f"THP enabled: {sys_text(thp + 'enabled')}; defrag: {sys_text(thp + 'defrag')}; "
            f"shmem_enabled: {sys_text(thp + 'shmem_enabled')}; "
            f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
