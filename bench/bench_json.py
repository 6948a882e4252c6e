"""Benchmark result rows for machines, as bench/bench_json.h writes them for the C++ benches:
``--json FILE`` writes one JSON array of rows
``{"name", "value", "unit", "bound", "ratio", "commit", "host"}`` (bound 0: none; ratio value/bound,
0 without a bound; commit ``git rev-parse --short HEAD`` of the working directory, host the
hostname). Use: ``rows = JsonRows(args.json); rows.add("name", value, "unit", bound); rows.write()``.
"""

from __future__ import annotations

import json
import socket
import subprocess


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class JsonRows:
    """Collects rows; write() is a no-op without a path."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.rows: list[tuple[str, float, str, float]] = []

    def add(self, name: str, value: float, unit: str, bound: float = 0.0) -> None:
        self.rows.append((name, float(value), unit, float(bound)))

    def write(self) -> None:
        if not self.path:
            return
        commit, host = git_commit(), socket.gethostname()
        out = [{"name": n, "value": v, "unit": u, "bound": b, "ratio": v / b if b > 0 else 0.0,
                "commit": commit, "host": host} for n, v, u, b in self.rows]
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
