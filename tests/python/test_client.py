"""zrollout.Client against a real `zrollout serve` on stories260K: every op of docs/protocol.md §3,
greedy outputs and logprobs equal reference.json, calls in flight on one socket, threads, deadlines."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from _fixtures import *  # noqa: F401,F403  (first: puts python/ on sys.path when run by hand)
import zrollout
from zrollout import errors

GREEDY = {"temperature": 0.0}


def test_health_model_info_load(client, stories):
    h = client.health()
    assert h["status"] == "serving" and h["weight_version"] == 0 and h["req_id"] > 0
    info = client.get_model_info()
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["vocab_size"] == 512 and info["context_length"] == 512
    assert info["bos_token_id"] == 1 and info["eos_token_ids"] == [2]
    load = client.get_load()
    assert load["waiting"] == 0 and load["running"] == 0 and load["kv_blocks_total"] > 0


@pytest.mark.parametrize("as_array", [False, True])
def test_greedy_matches_reference(client, as_array):
    for case in greedy_cases():
        ids = np.asarray(case["prompt_ids"], dtype=np.int64) if as_array else case["prompt_ids"]
        r = client.generate(input_ids=ids, return_logprob=True, logprob_start_len=0, top_logprobs_num=5,
                            sampling_params={**GREEDY, "max_new_tokens": len(case["greedy_ids"])})
        out = r["outputs"][0]
        assert out["output_ids"] == case["greedy_ids"]
        meta = out["meta_info"]
        assert meta["finish_reason"] == {"type": "length", "length": len(case["greedy_ids"])}
        assert meta["prompt_tokens"] == len(case["prompt_ids"]) and meta["completion_tokens"] == len(case["greedy_ids"])
        lps = [lp for lp, _, _ in meta["output_token_logprobs"]]
        assert np.allclose(lps, case["greedy_logprobs"], atol=2e-4)
        assert [tid for _, tid, _ in meta["output_token_logprobs"]] == case["greedy_ids"]
        top = meta["output_top_logprobs"][0]
        assert [t[1] for t in top] == [t[0] for t in case["top5"][0]]
        inp = meta["input_token_logprobs"]
        assert inp[0][0] is None and [t[1] for t in inp] == case["prompt_ids"]
        assert np.allclose([t[0] for t in inp[1:]], case["input_token_logprobs"][1:], atol=2e-4)


def test_text_prompt_and_long_ids_bin(client):
    case = greedy_cases()[0]
    r = client.generate(text=case["prompt"], sampling_params={**GREEDY, "max_new_tokens": 8})
    assert r["outputs"][0]["output_ids"] == case["greedy_ids"][:8]
    assert case["text"].startswith(r["outputs"][0]["text"])
    # input_ids takes precedence over text (protocol.md 4.1); the client drops the text.
    r = client.generate(text="something else", input_ids=case["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": 4})
    assert r["outputs"][0]["output_ids"] == case["greedy_ids"][:4]
    # A prompt long enough to go as an int32 bin (the fast path) still answers like the list form.
    long = [1] + [261 + (i % 100) for i in range(299)]
    a = client.generate(input_ids=long, sampling_params={**GREEDY, "max_new_tokens": 3})["outputs"][0]
    b = client.generate(input_ids=np.asarray(long, np.int32), sampling_params={**GREEDY, "max_new_tokens": 3})["outputs"][0]
    assert a["output_ids"] == b["output_ids"] and a["meta_info"]["prompt_tokens"] == 300


def test_batch_n_and_rids(client):
    cases = greedy_cases()
    reqs = [{"rid": f"b{i}", "input_ids": c["prompt_ids"], "sampling_params": {**GREEDY, "max_new_tokens": 6}}
            for i, c in enumerate(cases)]
    reqs.append({"input_ids": cases[0]["prompt_ids"], "sampling_params": {"max_new_tokens": 5, "n": 3, "seed": 11}})
    outs = client.generate(reqs)["outputs"]
    assert [o["rid"] for o in outs[:2]] == ["b0", "b1"]
    for o, c in zip(outs, cases):
        assert o["output_ids"] == c["greedy_ids"][:6]
    sampled = outs[2:]
    assert len(sampled) == 3 and [o["index"] for o in sampled] == [0, 1, 2]
    assert len({o["rid"] for o in sampled}) == 1 and sampled[0]["rid"]  # filled by the client
    again = client.generate(reqs[2])["outputs"]  # the same seeds give the same samples
    assert [o["output_ids"] for o in again] == [o["output_ids"] for o in sampled]


def test_score_matches_reference(client):
    for case in score_cases():
        for temp in (1.0, 0.7):
            r = client.score(input_ids=case["prompt_ids"], completion_ids=case["completion_ids"], temperature=temp)
            assert np.allclose(r["outputs"][0]["logprobs"], case[f"logprobs_T{temp}"], atol=2e-4)
    batch = client.score([{"input_ids": c["prompt_ids"], "completion_ids": c["completion_ids"]} for c in score_cases()] * 2)
    assert len(batch["outputs"]) == 2 * len(score_cases())


def test_abort_returns_partial_output(client):
    case = greedy_cases()[0]
    call = client.submit("generate", {"rid": "long-one", "input_ids": case["prompt_ids"], "stream": True,
                                      "sampling_params": {"max_new_tokens": 400, "ignore_eos": True, "temperature": 0.0}})
    stream = call.stream()
    first = next(stream)  # it is running
    assert first["rid"] == "long-one"
    aborted = client.abort("long-one")
    assert aborted["aborted"] == ["long-one"]
    out = stream.result()["outputs"][0]
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert 0 < len(out["output_ids"]) < 400
    assert out["output_ids"] == case["greedy_ids"][:len(out["output_ids"])] or len(out["output_ids"]) > len(case["greedy_ids"])
    assert client.abort(rid_prefix="nothing-")["aborted"] == []
    assert client.abort(all=True)["aborted"] == []
    with pytest.raises(errors.InvalidArgument) as e:
        client.abort()
    assert e.value.field == "abort"


def test_sessions_and_cache(client):
    sid = client.open_session()["session_id"]
    case = greedy_cases()[0]
    first = client.generate(input_ids=case["prompt_ids"], session_id=sid, sampling_params={**GREEDY, "max_new_tokens": 4})
    assert first["outputs"][0]["output_ids"] == case["greedy_ids"][:4]
    second = client.generate(input_ids=case["greedy_ids"][4:6], session_id=sid, sampling_params={**GREEDY, "max_new_tokens": 2})
    meta = second["outputs"][0]["meta_info"]
    assert meta["prompt_tokens"] == len(case["prompt_ids"]) + 6 and meta["cached_tokens"] > 0
    assert second["outputs"][0]["output_ids"] == case["greedy_ids"][6:8]
    assert client.flush_cache()["freed_blocks"] >= 1  # the idle session's KV
    client.close_session(sid)
    with pytest.raises(errors.NotFound):
        client.close_session(sid)


def test_weight_ops(client, server, stories):
    v = client.get_weight_version()
    assert v["version"] >= 0 and v["shm_in_use"] == []
    sums = client.get_weights_checksum(["model.norm.weight", "model.embed_tokens.weight"])
    assert {t["name"] for t in sums["tensors"]} == {"model.norm.weight", "model.embed_tokens.weight"}
    assert all(isinstance(t["checksum"], int) for t in sums["tensors"]) and sums["tp_size"] == 1
    # A disk update from the model's own folder: the next version serves the same outputs.
    r = client.update_weights(version=v["version"] + 1, path="disk", disk_path=stories, tensors=[])
    assert r["version"] == v["version"] + 1
    assert client.health()["weight_version"] == v["version"] + 1
    case = greedy_cases()[0]
    out = client.generate(input_ids=case["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": 5})["outputs"][0]
    assert out["output_ids"] == case["greedy_ids"][:5]
    assert out["meta_info"]["weight_version"] == v["version"] + 1
    with pytest.raises(errors.InvalidArgument) as e:  # versions only grow
        client.update_weights(version=v["version"], path="disk", disk_path=stories, tensors=[])
    assert e.value.field == "version"
    assert client.get_weights_checksum(["model.norm.weight"])["tensors"][0]["checksum"] == \
        [t for t in sums["tensors"] if t["name"] == "model.norm.weight"][0]["checksum"]


def test_release_and_resume(client, stories):
    r = client.release_memory(["kv_cache"])
    assert r["bytes"] > 0 and r["released"] == ["kv_cache"]
    assert client.health()["status"] == "released"
    with pytest.raises(errors.Unavailable):
        client.generate(input_ids=[1, 403], sampling_params={"max_new_tokens": 1})
    r = client.resume_memory(["kv_cache"])
    assert r["released"] == [] and client.health()["status"] == "serving"
    out = client.generate(input_ids=greedy_cases()[0]["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": 3})
    assert out["outputs"][0]["output_ids"] == greedy_cases()[0]["greedy_ids"][:3]
    # Weights of a pushed version are not reloaded from the folder: released until the next push.
    v = client.get_weight_version()["version"]
    client.update_weights(version=v + 1, path="disk", disk_path=stories, tensors=[])
    assert client.release_memory(["weights"])["version"] is None
    r = client.resume_memory(["weights"])
    assert r["version"] is None and r["released"] == ["weights"]
    with pytest.raises(errors.Unavailable):
        client.generate(input_ids=[1, 403], sampling_params={"max_new_tokens": 1})
    client.update_weights(version=v + 2, path="disk", disk_path=stories, tensors=[])
    h = client.health()
    assert h["status"] == "serving" and h["weight_version"] == v + 2
    out = client.generate(input_ids=greedy_cases()[0]["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": 3})
    assert out["outputs"][0]["output_ids"] == greedy_cases()[0]["greedy_ids"][:3]


def test_unknown_ops(client):
    with pytest.raises(errors.UnknownOp):
        client.get_engines()  # routers only
    with pytest.raises(errors.UnknownOp) as e:
        client.call("no_such_op", {})
    assert "no_such_op" in e.value.message


def test_many_calls_in_flight_on_one_socket(client):
    cases = greedy_cases()
    calls = [client.submit("generate", {"input_ids": cases[i % 2]["prompt_ids"],
                                        "sampling_params": {**GREEDY, "max_new_tokens": 1 + i % 7}}) for i in range(24)]
    assert len({c.req_id for c in calls}) == 24
    for i, c in reversed(list(enumerate(calls))):  # collected out of order: matched by req_id
        assert c.result()["outputs"][0]["output_ids"] == cases[i % 2]["greedy_ids"][:1 + i % 7]
    assert client.stats()["in_flight"] == 0


def test_threads_share_one_client(client):
    cases = greedy_cases()
    failures = []

    def worker(k):
        try:
            for j in range(6):
                c = cases[(k + j) % 2]
                n = 1 + (k * 3 + j) % 9
                out = client.generate(input_ids=c["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": n})
                if out["outputs"][0]["output_ids"] != c["greedy_ids"][:n]:
                    failures.append((k, j))
                client.health()
        except Exception as e:  # pragma: no cover - reported below
            failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []


def test_deadline_then_late_reply_dropped(client):
    t0 = time.monotonic()
    with pytest.raises(errors.Timeout) as e:
        client.generate(input_ids=[1, 403], timeout=0.002,
                        sampling_params={"max_new_tokens": 300, "ignore_eos": True, "temperature": 0.0})
    assert time.monotonic() - t0 < 1.0 and e.value.req_id > 0 and isinstance(e.value, TimeoutError)
    client.abort(all=True)
    deadline = time.monotonic() + 10
    while client.stats()["dropped_replies"] == 0 and time.monotonic() < deadline:
        client.health()  # reads the late reply off the socket
    assert client.stats()["dropped_replies"] >= 1
    assert client.health()["status"] == "serving"


def test_unreachable_endpoint_times_out():
    with zrollout.Client("ipc:///tmp/zrollout-no-such-server.sock", timeout=0.2) as c:
        with pytest.raises(errors.Timeout):
            c.health()
    with pytest.raises(errors.Unavailable):
        c.health()  # closed


def test_shutdown_op_stops_the_server(stories):
    srv = zrollout.launch(stories, **SERVE_FLAGS)
    try:
        assert srv.client.shutdown()["req_id"] > 0
        assert srv.process.wait(30) == 0
    finally:
        srv.stop()


def test_launch_tcp_and_serve_flags(stories):
    with zrollout.launch(stories, transport="tcp", max_running=4, **SERVE_FLAGS) as srv:
        assert srv.endpoint.startswith("tcp://127.0.0.1:")
        assert "--max-running" in srv.args and "4" in srv.args
        assert srv.client.health()["status"] == "serving"
        pid = srv.process.pid
    assert srv.process.returncode == 0, srv.log()
    with pytest.raises(ProcessLookupError):
        import os
        os.kill(pid, 0)


def test_launch_failure_names_the_log(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(errors.Unavailable) as e:
        zrollout.launch(str(tmp_path), **SERVE_FLAGS)
    assert "exited with code" in e.value.message
    with pytest.raises(errors.NotFound):
        zrollout.launch(str(tmp_path / "missing"))
