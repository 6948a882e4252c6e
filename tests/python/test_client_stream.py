"""Streaming (`generate.chunk`, docs/protocol.md §4.3) through the sync and async clients: chunks
come before the reply, concatenate to the final text and ids, interleave across samples."""

from __future__ import annotations

import asyncio
import collections

import pytest

from _fixtures import *  # noqa: F401,F403
import zrollout
from zrollout import errors


def _concat(chunks):
    text, ids, lps = collections.defaultdict(str), collections.defaultdict(list), collections.defaultdict(list)
    for ch in chunks:
        key = (ch["rid"], ch["index"])
        text[key] += ch["text"]
        ids[key] += ch["output_ids"]
        lps[key] += ch["output_token_logprobs"]
    return text, ids, lps


def test_stream_single(client):
    case = greedy_cases()[0]
    n = len(case["greedy_ids"])
    stream = client.generate(input_ids=case["prompt_ids"], return_logprob=True,
                             sampling_params={"temperature": 0.0, "max_new_tokens": n}, stream=True)
    chunks = list(stream)
    assert len(chunks) >= 2 and stream.reply is not None
    out = stream.reply["outputs"][0]
    text, ids, lps = _concat(chunks)
    key = (out["rid"], 0)
    assert ids[key] == out["output_ids"] == case["greedy_ids"]
    assert text[key] == out["text"]
    assert lps[key] == out["meta_info"]["output_token_logprobs"]
    assert all("finish_reason" not in ch for ch in chunks)
    assert stream.result() is stream.reply  # iterating again changes nothing


def test_stream_batch_interleaves(client):
    cases = greedy_cases()
    reqs = [{"rid": f"s{i}", "input_ids": c["prompt_ids"], "sampling_params": {"temperature": 0.0, "max_new_tokens": 12}}
            for i, c in enumerate(cases)]
    reqs.append({"rid": "sn", "input_ids": cases[0]["prompt_ids"], "sampling_params": {"max_new_tokens": 8, "n": 3, "seed": 5}})
    stream = client.generate(reqs, stream=True)
    chunks = list(stream)
    text, ids, _ = _concat(chunks)
    outs = stream.reply["outputs"]
    assert len(outs) == 5
    for o in outs:
        assert ids[(o["rid"], o["index"])] == o["output_ids"] and text[(o["rid"], o["index"])] == o["text"]
    assert ids[("s0", 0)] == cases[0]["greedy_ids"][:12]
    order = [(ch["rid"], ch["index"]) for ch in chunks]
    assert order != sorted(order)  # samples of one call interleave


def test_stream_error_raises_from_iteration(client):
    stream = client.generate(input_ids=[1, 700], stream=True)
    with pytest.raises(errors.OutOfRange) as e:
        next(stream)
    assert e.value.field == "input_ids[1]"


def test_stream_with_stop_string(client):
    case = greedy_cases()[0]  # ", there was a little girl named Lily..."
    stream = client.generate(input_ids=case["prompt_ids"], stream=True,
                             sampling_params={"temperature": 0.0, "max_new_tokens": 40, "stop": "girl"})
    chunks = list(stream)
    out = stream.reply["outputs"][0]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "girl"}
    assert "".join(ch["text"] for ch in chunks) == out["text"] and not out["text"].endswith("girl")


def test_async_stream(server):
    case = greedy_cases()[1]

    async def main():
        async with zrollout.AsyncClient(server.endpoint, timeout=30) as c:
            s = await c.generate(input_ids=case["prompt_ids"], stream=True,
                                 sampling_params={"temperature": 0.0, "max_new_tokens": 10})
            chunks = [ch async for ch in s]
            return chunks, s.reply

    chunks, reply = asyncio.run(main())
    out = reply["outputs"][0]
    assert sum((ch["output_ids"] for ch in chunks), []) == out["output_ids"] == case["greedy_ids"][:10]
    assert "".join(ch["text"] for ch in chunks) == out["text"]
