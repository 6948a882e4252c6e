"""Rollouts for the GRPO example: the engines, the prompts, one batch of samples.

``Engines`` starts K ``zrollout serve`` processes on this host (paths ipc and disk) or takes the
engines of the MPI job (path broadcast: ``mpirun -np 1 python3 train.py --path broadcast : -np K
zrollout serve ...``), and holds one ``zrollout.Client`` per engine and one
``zrollout.weights.Publisher`` for all of them. ``rollout`` spreads the prompts over the engines
(one batch call per engine, in threads) and returns every sample with its token ids, zrollout's
per-token logprobs and the weight version of each token (from ``weight_version_spans``).
"""

from __future__ import annotations

import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import zrollout
from zrollout.weights import Publisher


@dataclass
class Sample:
    group: int            # prompt index in the step: the GRPO group
    prompt_ids: list      # with BOS
    output_ids: list
    logprobs: list        # zrollout's log p of each output token (temperature 1)
    versions: list        # weight version that produced each output token
    text: str


def token_versions(spans: list, n: int) -> list:
    """Per output token: the version of the last span starting at or before it (protocol §4.2)."""
    out, k = [], 0
    for i in range(n):
        while k + 1 < len(spans) and spans[k + 1][0] <= i:
            k += 1
        out.append(int(spans[k][1]))
    return out


class Engines:
    def __init__(self, model: str, count: int, path: str, threads: int, log_level: str = "warn",
                 max_running: int | None = None):
        self.servers = []
        if path == "broadcast":  # the engines are the other ranks of this MPI job
            self.publisher = Publisher.from_mpi()
            endpoints = self.publisher.endpoints
        else:
            flags = dict(threads=threads, kv_cache_mb=64, kv_lazy_pages=True, log_level=log_level,
                         max_running=max_running)
            for _ in range(count):
                self.servers.append(zrollout.launch(model=model, **flags))
            endpoints = [s.endpoint for s in self.servers]
            self.publisher = Publisher(endpoints)
        self.endpoints = endpoints
        self.clients = [zrollout.Client(ep) for ep in endpoints]
        self.pool = ThreadPoolExecutor(max_workers=len(endpoints) + 1)

    def tokenize(self, prompts: list) -> list:
        """Prompt ids as the engine tokenizes them (BOS + sentencepiece ids): the prompt logprobs of
        a 1-token generate carry every prompt id."""
        reqs = [{"text": p, "return_logprob": True, "logprob_start_len": 0,
                 "sampling_params": {"max_new_tokens": 1, "temperature": 0}} for p in prompts]
        outs = self.clients[0].generate(reqs)["outputs"]
        return [[int(t[1]) for t in o["meta_info"]["input_token_logprobs"]] for o in outs]

    def checksums(self, engine: int) -> dict:
        reply = self.clients[engine].get_weights_checksum()
        return {t["name"]: int(t["checksum"]) for t in reply["tensors"]}

    def close(self) -> None:
        for c in self.clients:
            c.close()
        if not self.servers:
            self.publisher.shutdown_engines()  # under mpirun: lets the job end
        self.publisher.close()
        for s in self.servers:
            s.stop()
        self.pool.shutdown()


def started_events(engines: Engines) -> list:
    """One event per engine, set by ``rollout(..., started=...)`` when that engine streamed its first
    token (its part of the batch is generating) or its part ended."""
    return [threading.Event() for _ in engines.clients]


def rollout(engines: Engines, prompt_ids: list, n: int, max_new: int, seed: int, step: int, started=None):
    """Every prompt n times, prompts spread round-robin over the engines. Returns (samples, seconds).
    ``started`` (from ``started_events``): the calls stream, and each engine's event is set once it
    is generating, so a caller can publish while the batch is in flight."""
    t0 = time.perf_counter()
    k = len(engines.clients)
    parts = [list(range(i, len(prompt_ids), k)) for i in range(k)]
    for i in range(k):
        if started is not None and not parts[i]:
            started[i].set()
    futs = [engines.pool.submit(_generate_part, engines.clients[i], prompt_ids, parts[i], n, max_new, seed, step,
                                started[i] if started is not None else None)
            for i in range(k) if parts[i]]
    samples = [s for f in futs for s in f.result()]
    return samples, time.perf_counter() - t0


def _call(client, reqs: list, started) -> dict:
    if started is None:
        return client.generate(reqs)
    try:
        stream = client.generate(reqs, stream=True)
        for _ in stream:
            started.set()
        return stream.reply
    finally:
        started.set()


def _generate_part(client, prompt_ids: list, groups: list, n: int, max_new: int, seed: int, step: int,
                   started=None) -> list:
    reqs = []
    for g in groups:
        s = zlib.crc32(f"{seed}/{step}/{g}".encode())  # reproducible samples per (seed, step, prompt)
        reqs.append({"rid": f"s{step}-g{g}", "input_ids": prompt_ids[g], "return_logprob": True,
                     "sampling_params": {"n": n, "max_new_tokens": max_new, "temperature": 1.0, "seed": s}})
    by_rid = {r["rid"]: g for r, g in zip(reqs, groups)}
    out = []
    for o in _call(client, reqs, started)["outputs"]:
        meta = o["meta_info"]
        ids = [int(t) for t in o["output_ids"]]
        lps = [float(t[0]) for t in meta["output_token_logprobs"]]
        g = by_rid[o["rid"]]
        out.append(Sample(g, prompt_ids[g], ids, lps, token_versions(meta["weight_version_spans"], len(ids)),
                          o["text"]))
    return out
