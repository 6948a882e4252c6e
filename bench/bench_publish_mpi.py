#!/usr/bin/python3
"""Broadcast publish from Python (zrollout.weights, the C++ bucket pipeline through the binding)
against raw MPI_Bcast of the same bytes, measured in the same run (issue 14: target >= 85%).

The driver (run without --role) starts, one after the other, alternating so both see the same host:
  raw:     mpirun -np 2 python3 bench_publish_mpi.py --role raw --nbytes N
           one mpi4py Comm.Bcast of N bytes (pre-faulted numpy buffers on both ranks), R times;
  publish: mpirun -np 1 python3 bench_publish_mpi.py --role publish : -np 1 zrollout serve --model M
           Publisher.from_mpi().publish(state_dict, v, path="broadcast"), R times: from the Python
           call to the engine's ack (the trainer checksums each segment as it goes out, the engine receives the
           buckets, verifies every checksum and commits).
and prints medians, GB/s and the ratio publish throughput / raw MPI_Bcast throughput, with the
host's THP settings. Usage (from the repository root, after scripts/build.sh; through `cpu bench`):
  /usr/bin/python3 bench/bench_publish_mpi.py [--model bench_models/stories110M] [--repeats 5] [--rounds 2]
The model defaults to bench_models/stories110M (made with `zrollout make-model --preset stories110M`
if absent): 438 MB of f32 weights, held as a torch state_dict (numpy arrays without torch).
--json FILE (the driver) writes rows python_bcast_publish_gbps_{4k,thp} (publish GB/s; bound: raw
MPI_Bcast from buffers in those pages; target ratio >= 0.85), bench/bench_json.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
from publish_common import ensure_model, free_port, host_settings  # noqa: E402
from bench_json import JsonRows  # noqa: E402  (bench/ is on sys.path as the script's folder)


def result(payload: dict) -> None:
    print("RESULT " + json.dumps(payload), flush=True)


def role_raw(args) -> int:
    """Two ranks: rank 0 broadcasts args.nbytes to rank 1, args.repeats times (after one warm-up)."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    # numpy asks for transparent huge pages on large arrays (THP "madvise" mode honours it); torch
    # tensors and std::vector buffers get 4 KiB pages. --pages 4k matches the trainer's tensors.
    np.core.multiarray._set_madvise_hugepage(args.pages == "thp")
    buf = np.ones(args.nbytes, np.uint8) if comm.rank == 0 else np.zeros(args.nbytes, np.uint8)
    times = []
    for i in range(args.repeats + 1):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Bcast(buf, root=0)
        comm.Barrier()  # the receiver has it all
        if i:
            times.append(time.perf_counter() - t0)
    if comm.rank == 0:
        result({"seconds": times})
    return 0


def role_publish(args) -> int:
    """The trainer rank of `mpirun -np 1 python3 ... : -np 1 zrollout serve ...`."""
    from zrollout import safetensors
    from zrollout.weights import Publisher

    try:
        import torch  # noqa: F401
        framework = "torch"
    except ImportError:
        framework = "numpy"
    sd = safetensors.load(args.model, framework)
    nbytes = sum(t.numel() * t.element_size() if framework == "torch" else t.nbytes for t in sd.values())
    pub = Publisher.from_mpi(timeout_s=600)
    rows = []
    try:
        for v in range(1, args.repeats + 2):
            t0 = time.perf_counter()
            res = pub.publish(sd, v, path="broadcast", bucket_mib=args.bucket_mib)
            call = time.perf_counter() - t0
            if v > 1:  # the first publish is the warm-up (engine buffers, page faults)
                rows.append({"call": call, "ack": res.seconds, "write": res.write_seconds,
                             "live": res.liveness_seconds, "stage": res.acks[0].get("stage_seconds", 0.0),
                             "commit": res.acks[0].get("commit_seconds", 0.0)})
    finally:
        pub.shutdown_engines()
        pub.close()
    result({"rows": rows, "nbytes": nbytes, "framework": framework, "tensors": len(sd)})
    return 0


def mpirun_base() -> list:
    mpirun = os.environ.get("ZR_MPIEXEC") or shutil.which("mpirun")
    if not mpirun:
        sys.exit("mpirun not found")
    flags = ["--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader"]
    if os.geteuid() == 0:
        flags.insert(0, "--allow-run-as-root")
    return [mpirun, *flags]


def run_job(cmd: list) -> dict:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "python"), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        sys.exit(f"job failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def driver(args) -> int:
    from zrollout import _native

    zrollout = Path(_native.zrollout_binary)
    model = Path(args.model)
    ensure_model(zrollout, model)
    me = [sys.executable, str(Path(__file__).resolve())]
    raw, pubs = {"4k": [], "thp": []}, []
    nbytes = None
    info = {}
    for _ in range(args.rounds):
        pub = run_job(mpirun_base() + ["-np", "1", *me, "--role", "publish", "--model", str(model),
                                       "--repeats", str(args.repeats), "--bucket-mib", str(args.bucket_mib),
                                       ":", "-np", "1", str(zrollout), "serve", "--model", str(model), "--bind",
                                       f"tcp://127.0.0.1:{free_port()}", "--threads", "1", "--kv-cache-mb", "16",
                                       "--kv-lazy-pages", "--log-level", "warn"])
        pubs += pub["rows"]
        nbytes = pub["nbytes"]
        info = pub
        for pages in ("4k", "thp"):
            raw[pages] += run_job(mpirun_base() + ["-np", "2", *me, "--role", "raw", "--nbytes", str(nbytes),
                                                   "--repeats", str(args.repeats), "--pages", pages])["seconds"]
    med = statistics.median
    call_s = med([r["call"] for r in pubs])
    gb = lambda s: nbytes / s / 1e9  # noqa: E731
    print(f"zrollout bench_publish_mpi.py: {model}, {nbytes / 1e6:.0f} MB of f32 weights from "
          f"{'torch tensors' if info['framework'] == 'torch' else 'numpy arrays'} ({info['tensors']} tensors), "
          f"1 engine rank, buckets {args.bucket_mib} MiB, {args.rounds} rounds x {args.repeats} repeats")
    print(host_settings())
    json_rows = JsonRows(args.json)
    for pages, label in (("4k", "4 KiB pages, as torch tensors"), ("thp", "THP, numpy's default")):
        raw_s = med(raw[pages])
        json_rows.add(f"python_bcast_publish_gbps_{pages}", gb(call_s), "GB/s", gb(raw_s))
        print(f"  raw MPI_Bcast (mpi4py, np 2, {label}) {raw_s * 1e3:8.1f} ms  {gb(raw_s):6.2f} GB/s  "
              f"(median of {len(raw[pages])}); publish = {raw_s / call_s * 100:.0f}% of it")
    print(f"  Python publish(path='broadcast') -> ack      {call_s * 1e3:8.1f} ms  {gb(call_s):6.2f} GB/s  "
          f"(target >= 85% of raw MPI_Bcast)")
    print(f"    C++ publish -> last ack                    {med([r['ack'] for r in pubs]) * 1e3:8.1f} ms")
    print(f"    before it: trainer layout (sums: trailer)  {med([r['write'] for r in pubs]) * 1e3:8.1f} ms")
    print(f"    before it: engines' liveness probe         {med([r.get('live', 0.0) for r in pubs]) * 1e3:8.1f} ms")
    print(f"    engine: receive + verify (staging)         {med([r['stage'] for r in pubs]) * 1e3:8.1f} ms")
    print(f"    engine: commit (step boundary + swap)      {med([r.get('commit', 0.0) for r in pubs]) * 1e3:8.1f} ms")
    json_rows.write()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=["raw", "publish"], help="(internal) the rank's part under mpirun")
    ap.add_argument("--model", default="bench_models/stories110M")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="publish job then raw job, this many times")
    ap.add_argument("--bucket-mib", type=int, default=64)
    ap.add_argument("--nbytes", type=int, default=0)
    ap.add_argument("--pages", choices=["4k", "thp"], default="4k", help="(raw role) buffer pages")
    ap.add_argument("--json", help="(driver) write result rows to FILE (bench/bench_json.py)")
    args = ap.parse_args()
    if args.role == "raw":
        return role_raw(args)
    if args.role == "publish":
        return role_publish(args)
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
