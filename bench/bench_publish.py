#!/usr/bin/python3
"""Weight publishing from Python (zrollout.weights) into a `zrollout serve` process, measured in the
same run against its limit:

  ipc publish of a stories110M-shape state_dict (f32, 438 MB; torch tensors when torch is present,
  else numpy arrays) from the Python call to the engine's ack, against one memcpy of the same bytes
  between two pre-faulted buffers timed right after each publish (target: <= 1.3x). Publishes 1 and
  2 write new segments (the engine serves from the first while the second arrives); from publish 3
  on, the trainer rewrites the segment the engine stopped serving from (steady state).

Usage (from the repository root, after scripts/build.sh):
  PYTHONPATH=python /usr/bin/python3 bench/bench_publish.py [--model DIR] [--pushes 9]
The model defaults to bench_models/stories110M (made with `zrollout make-model --preset stories110M`
if absent). Prints the THP settings and OPENBLAS_CORETYPE of the run. --json FILE writes rows
python_publish_{fresh,reused}_ms (Python call -> ack; bound: one memcpy; target ratio <= 1.3),
bench/bench_json.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
from zrollout import _native, safetensors  # noqa: E402
from zrollout.weights import Publisher  # noqa: E402
from publish_common import ensure_model, free_port, host_settings  # noqa: E402
from bench_json import JsonRows  # noqa: E402  (bench/ is on sys.path as the script's folder)


def read_state_dict(model: Path, use_torch: bool) -> dict:
    """The checkpoint's tensors in memory (copied out of the file: a trainer's own tensors)."""
    sd = safetensors.load(model, "torch" if use_torch else "numpy")
    for name, t in sd.items():
        assert str(t.dtype) in ("float32", "torch.float32"), f"{name}: {t.dtype} (the benchmark expects an f32 model)"
    return sd


class MemcpyProbe:
    """One memcpy of `nbytes` between two pre-faulted buffers (numpy copyto of contiguous uint8)."""

    def __init__(self, nbytes: int):
        self.src = np.ones(nbytes, np.uint8)
        self.dst = np.zeros(nbytes, np.uint8)
        np.copyto(self.dst, self.src)  # warm-up: every page faulted in

    def sample_s(self) -> float:
        t0 = time.perf_counter()
        np.copyto(self.dst, self.src)
        return time.perf_counter() - t0


def memory_of(pid: int) -> dict:
    """VmRSS, RssAnon (the engine's own copies: weights loaded from the folder, packs, KV) and
    RssShmem (the segments served zero-copy) of a process, in MB, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024 / 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bench_models/stories110M")
    ap.add_argument("--pushes", type=int, default=9)
    ap.add_argument("--numpy", action="store_true", help="numpy arrays even when torch is present")
    ap.add_argument("--json", help="write result rows to FILE (bench/bench_json.py)")
    args = ap.parse_args()
    zrollout = Path(_native.zrollout_binary)
    model = Path(args.model)
    ensure_model(zrollout, model)
    try:
        import torch  # noqa: F401
        use_torch = not args.numpy
    except ImportError:
        use_torch = False
    sd = read_state_dict(model, use_torch)
    total = sum((t.numel() * t.element_size()) if use_torch else t.nbytes for t in sd.values())

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = tempfile.NamedTemporaryFile(prefix="bench_publish_serve-", suffix=".log", delete=False)
    serve = subprocess.Popen([str(zrollout), "serve", "--model", str(model), "--bind", endpoint, "--kv-cache-mb", "64",
                              "--log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
    rows = {"fresh": [], "reused": []}
    try:
        probe = MemcpyProbe(total)
        with Publisher([endpoint], timeout_s=300) as pub:
            deadline = time.monotonic() + 120
            while True:  # the engine answers once it loaded its model
                try:
                    pub.weight_version()
                    break
                except Exception:
                    if time.monotonic() > deadline or serve.poll() is not None:
                        raise
            memory = {"loaded": memory_of(serve.pid)}
            for v in range(1, args.pushes + 1):
                t0 = time.perf_counter()
                res = pub.publish(sd, v, path="ipc")
                call_s = time.perf_counter() - t0
                memcpy_s = probe.sample_s()
                rows["reused" if res.shm_reused else "fresh"].append(
                    {"call": call_s, "ack": res.seconds, "write": res.write_seconds,
                     "stage": res.acks[0]["stage_seconds"], "memcpy": memcpy_s,
                     "zero_copy": res.acks[0]["zero_copy_tensors"]})
            time.sleep(0.5)  # the last replaced version's bytes are unmapped off the engine thread
            memory["pushed"] = memory_of(serve.pid)
            pub.shutdown_engines()
    except Exception:
        print(f"(the engine's log: {log.name})", file=sys.stderr)
        raise
    finally:
        if serve.poll() is None:
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
        log.close()
    os.unlink(log.name)  # kept only when something failed

    med = statistics.median
    print(f"zrollout bench_publish.py: {model}, {total / 1e6:.0f} MB of weights from "
          f"{'torch tensors' if use_torch else 'numpy arrays'} ({len(sd)} tensors), ipc, drain, idle engine")
    print(host_settings())
    print("(ratios: median over publishes of (time / one memcpy of the same bytes between pre-faulted buffers,\n"
          " timed right after that publish); target for Python publish -> ack: <= 1.3x)")
    json_rows = JsonRows(args.json)
    for kind, label in (("fresh", "new segment (first publishes)"), ("reused", "segment reused (steady state)")):
        r = rows[kind]
        if not r:
            continue
        ratio = lambda f: med([x[f] / x["memcpy"] for x in r])  # noqa: E731
        print(f"ipc, {label} (median of {len(r)} publishes):")
        print(f"  one memcpy of the same bytes            {med([x['memcpy'] for x in r]) * 1e3:8.1f} ms")
        print(f"  Python publish() call -> ack            {med([x['call'] for x in r]) * 1e3:8.1f} ms  = "
              f"{ratio('call'):.2f}x memcpy")
        print(f"    C++ publish -> last ack               {med([x['ack'] for x in r]) * 1e3:8.1f} ms  = "
              f"{ratio('ack'):.2f}x memcpy")
        print(f"    trainer: write + checksum into shm    {med([x['write'] for x in r]) * 1e3:8.1f} ms  = "
              f"{ratio('write'):.2f}x memcpy")
        print(f"    engine: map + verify (staging)        {med([x['stage'] for x in r]) * 1e3:8.1f} ms  "
              f"({r[-1]['zero_copy']} tensors zero-copy)")
        json_rows.add(f"python_publish_{kind}_ms", med([x["call"] for x in r]) * 1e3, "ms",
                      med([x["memcpy"] for x in r]) * 1e3)
    print("engine process memory (MB; RssAnon: weights copied from the folder, packs, KV 64 MiB; RssShmem: segments):")
    for when, label in (("loaded", "after load"), ("pushed", f"after {args.pushes} publishes")):
        m = memory[when]
        print(f"  {label:<22} VmRSS {m['VmRSS']:7.0f}  RssAnon {m['RssAnon']:7.0f}  RssShmem {m['RssShmem']:7.0f}")
    json_rows.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
