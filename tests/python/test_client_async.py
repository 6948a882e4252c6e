"""zrollout.AsyncClient: 64 concurrent requests from one asyncio loop on one socket, every op as a
coroutine, errors and deadlines."""

from __future__ import annotations

import asyncio
import time

import pytest

from _fixtures import *  # noqa: F401,F403
import zrollout
from zrollout import errors


def _run(coro):
    return asyncio.run(coro)


def test_64_concurrent_requests(server, client):
    cases = greedy_cases()
    reqs = [{"rid": f"a{i}", "input_ids": cases[i % 2]["prompt_ids"],
             "sampling_params": {"max_new_tokens": 6 + i % 5, "temperature": 0.8, "seed": 1000 + i}} for i in range(64)]

    async def main():
        async with zrollout.AsyncClient(server.endpoint, timeout=60) as c:
            t0 = time.monotonic()
            replies = await asyncio.gather(*(c.generate(r) for r in reqs))
            return replies, time.monotonic() - t0, c.stats()

    replies, seconds, stats = _run(main())
    assert [r["outputs"][0]["rid"] for r in replies] == [f"a{i}" for i in range(64)]
    assert len({r["req_id"] for r in replies}) == 64 and stats["in_flight"] == 0
    load_free = client.generate(reqs[0])
    assert load_free["outputs"][0]["output_ids"] == replies[0]["outputs"][0]["output_ids"]  # same seed, same tokens
    for i in (5, 17, 63):  # batch-invariant: alone or among 63 others, the same sample
        alone = client.generate(reqs[i])["outputs"][0]
        assert alone["output_ids"] == replies[i]["outputs"][0]["output_ids"]


def test_every_op_as_a_coroutine(server, stories):
    case = greedy_cases()[0]

    async def main():
        async with zrollout.AsyncClient(server.endpoint, timeout=30) as c:
            h, info, load, v = await asyncio.gather(c.health(), c.get_model_info(), c.get_load(), c.get_weight_version())
            assert h["status"] == "serving" and info["vocab_size"] == 512 and "running" in load
            g = await c.generate(input_ids=case["prompt_ids"], sampling_params={"temperature": 0.0, "max_new_tokens": 5})
            assert g["outputs"][0]["output_ids"] == case["greedy_ids"][:5]
            sc = await c.score(input_ids=case["prompt_ids"], completion_ids=case["greedy_ids"][:3])
            assert len(sc["outputs"][0]["logprobs"]) == 3
            sid = (await c.open_session())["session_id"]
            await c.close_session(sid)
            assert "freed_blocks" in await c.flush_cache()
            assert (await c.abort(all=True))["aborted"] == []
            sums = await c.get_weights_checksum(["model.norm.weight"])
            assert sums["tensors"][0]["name"] == "model.norm.weight"
            task = c.submit("generate", {"input_ids": case["prompt_ids"], "sampling_params": {"max_new_tokens": 2}})
            assert len((await task)["outputs"][0]["output_ids"]) == 2
            with pytest.raises(errors.UnknownOp):
                await c.get_engines()
            with pytest.raises(errors.InvalidArgument) as e:
                await c.generate(input_ids=[1, 2], sampling_params={"min_p": 2.0})
            assert e.value.field == "sampling_params.min_p" and e.value.req_id > 0
            with pytest.raises(errors.Timeout):
                await c.generate(input_ids=[1, 2], timeout=0.001,
                                 sampling_params={"max_new_tokens": 200, "ignore_eos": True})
            await c.abort(all=True)
            assert (await c.health())["status"] == "serving"

    _run(main())


def test_closed_and_unreachable():
    async def main():
        c = zrollout.AsyncClient("ipc:///tmp/zrollout-no-such-server.sock", timeout=0.1)
        with pytest.raises(errors.Timeout):
            await c.health()
        pending = asyncio.ensure_future(c.health(timeout=5))
        await asyncio.sleep(0.01)
        await c.close()
        with pytest.raises(errors.Unavailable):
            await pending
        with pytest.raises(errors.Unavailable):
            await c.health()

    _run(main())
