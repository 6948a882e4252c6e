#!/usr/bin/python3
"""The Python client against the C++ client and the engine, in the same run:

  1. overhead: a 1-token generate round trip with zrollout.Client (sync) vs the C++ client
     (``bench_service --connect``), both over tcp loopback against the same `zrollout serve`
     process, same model and request shape, measured in alternating rounds so both see the same
     host (target: Python <= 1.5x the C++ client);
  2. throughput: 64 concurrent requests from one Python process (zrollout.AsyncClient, one
     socket) vs the engine's own batch-64 throughput that bench_service measures in the same run
     (target: >= 90%).

Usage: bench/bench_python_client.py [--model DIR] [--build build] [--rounds 2] [--gen 64] [--samples 200]
       [--alternations 5] [--json FILE]
--json rows (bench/bench_json.py): python_client_rt_1tok_us (bound: the C++ client's; target ratio
<= 1.5) and python_client_tok_s (bound: the engine alone; target >= 0.9).
(default model: the stories15M-shape random model in ./bench_models/, made by make-model as the C++
benchmarks make it). Run it on a quiet machine: both sides use every core.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import zrollout  # noqa: E402
from bench_json import JsonRows  # noqa: E402  (bench/ is on sys.path as the script's folder)

CLIENTS = 64  # bench_service's concurrent clients, and so the batch of its engine-alone figure


def request(rid: str, vocab: int, prompt: int, gen: int, seed: int) -> dict:
    """bench_service's request shape: BOS + random ids, sampled, seeded, ignore_eos."""
    rng = random.Random(seed)
    ids = [1] + [3 + rng.randrange(vocab - 3) for _ in range(prompt - 1)]
    return {"rid": rid, "input_ids": ids,
            "sampling_params": {"max_new_tokens": gen, "temperature": 1.0, "seed": seed, "ignore_eos": True}}


def cpp_side(build: Path, model: str, rounds: int, gen: int) -> dict:
    exe = build / "bench" / "bench_service"
    if not exe.exists():
        sys.exit(f"{exe} not found: cmake --build {build} --target bench_service")
    out = subprocess.run([str(exe), "--model", model, "--rounds", str(rounds), "--gen", str(gen)],
                         capture_output=True, text=True, check=True).stdout
    print(out.rstrip())

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        if not m:
            sys.exit(f"bench_service output has no match for {pattern!r}")
        return float(m.group(1))

    return {"rt_us": num(r"1-token generate round trip\s+([\d.]+) us"),
            "engine_us": num(r"engine alone, same request\s+([\d.]+) us"),
            "engine_tok_s": num(r"engine alone\s+([\d.]+) tok/s")}


def cpp_round_trip(build: Path, endpoint: str, samples: int) -> float:
    out = subprocess.run([str(build / "bench" / "bench_service"), "--connect", endpoint, "--samples", str(samples)],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"round trip \(median of \d+\): ([\d.]+) us", out).group(1))


def python_round_trip(client: zrollout.Client, vocab: int, samples: int) -> float:
    for i in range(20):  # warm-up
        client.generate(request(f"w{i}", vocab, 4, 1, i))
    times = []
    for i in range(samples):
        r = request(f"o{i}", vocab, 4, 1, i)
        t0 = time.perf_counter()
        client.generate(r)
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


async def python_throughput(endpoint: str, vocab: int, clients: int, rounds: int, gen: int) -> float:
    async with zrollout.AsyncClient(endpoint, timeout=600) as c:
        async def one_client(k: int) -> int:
            tokens = 0
            for r in range(rounds):
                out = await c.generate(request(f"c{k}-{r}", vocab, 16, gen, k))
                tokens += out["outputs"][0]["meta_info"]["completion_tokens"]
            return tokens
        t0 = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one_client(k) for k in range(clients))))
        return tokens / (time.perf_counter() - t0)


def default_model(build: Path) -> str:
    out = Path("bench_models") / "stories15M"
    if not (out / "config.json").exists():
        subprocess.run([str(build / "launch" / "zrollout"), "make-model", "--preset", "stories15M", "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
    return str(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--alternations", type=int, default=5)
    ap.add_argument("--json", help="write result rows to FILE (bench/bench_json.py)")
    args = ap.parse_args()
    build = Path(args.build)
    model = args.model or default_model(build)

    cpp = cpp_side(build, model, args.rounds, args.gen)
    # The server: the engine options bench_service uses (1 GiB of KV, every core).
    with zrollout.launch(model, transport="tcp", kv_cache_mb=1024, log_level="warn",
                         binary=str(build / "launch" / "zrollout")) as srv:
        vocab = srv.client.get_model_info()["vocab_size"]
        rounds = []
        with zrollout.Client(srv.endpoint) as client:
            for _ in range(args.alternations):
                rounds.append((cpp_round_trip(build, srv.endpoint, args.samples),
                               python_round_trip(client, vocab, args.samples)))
        py_tok_s = asyncio.run(python_throughput(srv.endpoint, vocab, CLIENTS, args.rounds, args.gen))

    cpp_rt = statistics.median(r[0] for r in rounds)
    py_rt = statistics.median(r[1] for r in rounds)
    ratios = sorted(p / c for c, p in rounds)
    engine_us = cpp["engine_us"]
    print(f"\nzrollout bench_python_client: {model}")
    print(f"1-token generate round trip, both clients against one `zrollout serve` over tcp loopback "
          f"({args.alternations} alternating rounds of {args.samples}; medians):")
    print("  rounds (C++, Python) us:  " + ", ".join(f"({c:.0f}, {p:.0f})" for c, p in rounds))
    print(f"  C++ client (comm/client.h)    {cpp_rt:8.1f} us")
    print(f"  Python zrollout.Client        {py_rt:8.1f} us   = {py_rt / cpp_rt:.2f}x the C++ client (target <= 1.5x); "
          f"per round {ratios[0]:.2f}x..{ratios[-1]:.2f}x")
    print(f"  engine alone, same request    {engine_us:8.1f} us (bench_service, in-process)")
    print(f"throughput, {CLIENTS} concurrent requests x {args.rounds} from one Python process "
          f"(16-token prompts, {args.gen} new tokens):")
    print(f"  Python AsyncClient  {py_tok_s:8.1f} tok/s")
    print(f"  engine alone        {cpp['engine_tok_s']:8.1f} tok/s (batch {CLIENTS}, bench_service, same run)")
    print(f"  ratio               {100 * py_tok_s / cpp['engine_tok_s']:7.0f}%  (target >= 90%)")
    rows = JsonRows(args.json)
    rows.add("python_client_rt_1tok_us", py_rt, "us", cpp_rt)
    rows.add("python_client_tok_s", py_tok_s, "tok/s", cpp["engine_tok_s"])
    rows.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
