"""zrollout.Engine, the SGLang-shaped engine: SGLang's call forms and return shapes against a real
`zrollout serve` on stories260K (greedy outputs equal reference.json), the request names it
translates or refuses, weights, memory, and the server's lifetime."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from _fixtures import *  # noqa: F401,F403
import zrollout
from zrollout import engine as engine_mod
from zrollout import errors

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def llm(stories):
    e = zrollout.Engine(model_path=stories, kv_cache_mb=32, threads=1, log_level="error", random_seed=1,
                        cuda_graph_max_bs=8, attention_backend="fa3")
    yield e
    e.shutdown()


def test_single_prompt_dict_and_batch_list(llm):
    case = greedy_cases()[0]
    out = llm.generate(case["prompt"], {**GREEDY, "max_new_tokens": len(case["greedy_ids"])})
    assert isinstance(out, dict) and set(out) >= {"text", "output_ids", "meta_info"}
    assert out["output_ids"] == case["greedy_ids"] and out["text"] == case["text"]
    assert out["meta_info"]["finish_reason"]["type"] == "length" and out["meta_info"]["id"]
    cases = greedy_cases()
    outs = llm.generate([c["prompt"] for c in cases], {**GREEDY, "max_new_tokens": 8})
    assert isinstance(outs, list) and [o["output_ids"] for o in outs] == [c["greedy_ids"][:8] for c in cases]
    outs = llm.generate(input_ids=[c["prompt_ids"] for c in cases],
                        sampling_params=[{**GREEDY, "max_new_tokens": 3}, {**GREEDY, "max_new_tokens": 5}])
    assert [len(o["output_ids"]) for o in outs] == [3, 5]
    assert outs[1]["output_ids"] == cases[1]["greedy_ids"][:5]
    one = llm.generate(input_ids=cases[1]["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": 4})
    assert isinstance(one, dict) and one["output_ids"] == cases[1]["greedy_ids"][:4]


def test_logprobs_shapes(llm):
    case = greedy_cases()[0]
    out = llm.generate(input_ids=case["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": 6},
                       return_logprob=True, logprob_start_len=0, top_logprobs_num=3, token_ids_logprob=[432, 383])
    meta = out["meta_info"]
    first = meta["output_token_logprobs"][0]
    assert isinstance(first, tuple) and len(first) == 3 and first[1] == case["greedy_ids"][0]
    assert np.allclose([t[0] for t in meta["output_token_logprobs"]], case["greedy_logprobs"][:6], atol=2e-4)
    assert len(meta["output_top_logprobs"]) == 6 and len(meta["output_top_logprobs"][0]) == 3
    assert [t[1] for t in meta["output_token_ids_logprobs"][0]] == [432, 383]
    assert meta["input_token_logprobs"][0][0] is None and len(meta["input_token_logprobs"]) == len(case["prompt_ids"])
    # Parallel lists: logprobs for the second prompt only.
    outs = llm.generate(input_ids=[case["prompt_ids"]] * 2, sampling_params={**GREEDY, "max_new_tokens": 2},
                        return_logprob=[False, True])
    assert "output_token_logprobs" not in outs[0]["meta_info"] and len(outs[1]["meta_info"]["output_token_logprobs"]) == 2


def test_n_samples_prompt_major(llm):
    cases = greedy_cases()
    outs = llm.generate([c["prompt"] for c in cases], {"max_new_tokens": 5, "n": 3, "temperature": 1.0})
    assert isinstance(outs, list) and len(outs) == 6
    ids = [o["meta_info"]["id"] for o in outs]
    assert ids[0] == ids[1] == ids[2] != ids[3] == ids[4] == ids[5]


def test_seeds_translated_and_honoured(llm):
    case = greedy_cases()[0]
    sp = {"temperature": 1.0, "max_new_tokens": 12}
    a = llm.generate(input_ids=case["prompt_ids"], sampling_params={**sp, "sampling_seed": 42})
    b = llm.generate(input_ids=case["prompt_ids"], sampling_params={**sp, "seed": 42})
    assert a["output_ids"] == b["output_ids"]
    with pytest.raises(errors.InvalidArgument) as e:
        llm.generate(input_ids=case["prompt_ids"], sampling_params={**sp, "seed": 1, "sampling_seed": 2})
    assert e.value.field == "sampling_params.sampling_seed"
    # random_seed: engines with the same seed draw the same samples for the same calls.
    runs = []
    for seed in (7, 7, 8):
        with zrollout.Engine(endpoint=llm.endpoint, random_seed=seed) as e2:
            runs.append([e2.generate(input_ids=case["prompt_ids"], sampling_params=sp)["output_ids"] for _ in range(3)])
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert len({tuple(x) for x in runs[0]}) > 1  # each call draws a new seed


def test_no_stop_trim_and_max_new_tokens_none(llm):
    case = greedy_cases()[0]
    trimmed = llm.generate(case["prompt"], {**GREEDY, "max_new_tokens": 40, "stop": "girl"})
    kept = llm.generate(case["prompt"], {**GREEDY, "max_new_tokens": 40, "stop": "girl", "no_stop_trim": True})
    assert trimmed["meta_info"]["finish_reason"] == {"type": "stop", "matched": "girl"}
    assert not trimmed["text"].endswith("girl") and kept["text"] == trimmed["text"] + "girl"
    full = llm.generate(input_ids=case["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": None,
                                                                       "ignore_eos": True})
    assert len(full["output_ids"]) == 512 - 2 - len(case["prompt_ids"])  # SGLang's clip: 2 below the context


def test_return_text_in_logprobs_gives_sglang_triples(llm):
    # SGLang: every logprob entry is (logprob, token_id, text), the text being the token decoded
    # alone with special tokens kept (tokenizer.batch_decode(ids)); None without the flag.
    case = greedy_cases()[0]
    kw = dict(input_ids=case["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": 8}, return_logprob=True,
              logprob_start_len=0, top_logprobs_num=2, token_ids_logprob=[432, 383])
    out = llm.generate(**kw, return_text_in_logprobs=True)
    plain = llm.generate(**kw)
    meta, pmeta = out["meta_info"], plain["meta_info"]
    lps = meta["output_token_logprobs"]
    assert all(isinstance(t, tuple) and len(t) == 3 and isinstance(t[2], str) for t in lps)
    assert [t[:2] for t in lps] == [t[:2] for t in pmeta["output_token_logprobs"]]
    assert all(t[2] is None for t in pmeta["output_token_logprobs"])
    assert [t[1] for t in lps] == case["greedy_ids"][:8]
    # Each token alone loses its word-initial space; the letters line up with the output text.
    assert "".join(t[2] for t in lps).replace(" ", "") == out["text"].replace(" ", "")
    assert case["text"].startswith(out["text"])
    inp = meta["input_token_logprobs"]
    assert inp[0][0] is None and inp[0][2] == "<s>"  # BOS, special tokens kept
    assert "".join(t[2] for t in inp[1:]).replace(" ", "") == case["prompt"].replace(" ", "")
    for key in ("output_top_logprobs", "input_top_logprobs", "output_token_ids_logprobs", "input_token_ids_logprobs"):
        rows = [row for row in meta[key] if row]
        assert rows and all(isinstance(e, tuple) and isinstance(e[2], str) for row in rows for e in row), key
    assert [row[0][2] for row in meta["output_top_logprobs"]] == [t[2] for t in lps]  # greedy: top-1 is chosen
    # Streaming and a batch with the flag as a parallel list.
    items = list(llm.generate(**{**kw, "stream": True}, return_text_in_logprobs=True))
    assert [t[2] for t in items[-1]["meta_info"]["output_token_logprobs"]] == [t[2] for t in lps]
    outs = llm.generate(input_ids=[case["prompt_ids"]] * 2, sampling_params={**GREEDY, "max_new_tokens": 3},
                        return_logprob=True, return_text_in_logprobs=[True, False])
    assert [t[2] for t in outs[0]["meta_info"]["output_token_logprobs"]] == [t[2] for t in lps[:3]]
    assert all(t[2] is None for t in outs[1]["meta_info"]["output_token_logprobs"])


@pytest.mark.parametrize("kwargs, field", [
    ({"image_data": "cat.png"}, "image_data"),
    ({"lora_path": ["adapter"]}, "lora_path"),
    ({"sampling_params": {"json_schema": "{}"}}, "sampling_params.json_schema"),
    ({"sampling_params": {"regex": "a+"}}, "sampling_params.regex"),
    ({"sampling_params": {"ebnf": "root ::= 'a'"}}, "sampling_params.ebnf"),
    ({"session_params": {"id": "s", "offset": 3}}, "session_params.offset"),
    ({"priority": 5}, "priority"),
    ({"return_hidden_states": True}, "return_hidden_states"),
    ({"some_future_field": 1}, "some_future_field"),
])
def test_unsupported_fields_are_refused_by_name(llm, kwargs, field):
    kwargs.setdefault("sampling_params", {"max_new_tokens": 2})
    with pytest.raises(errors.Unsupported) as e:
        llm.generate("Once upon a time", **kwargs)
    assert e.value.field == field and e.value.code == "unsupported"


def test_accepted_defaults_and_bad_combinations(llm):
    out = llm.generate("Once upon a time", {**GREEDY, "max_new_tokens": 2, "spaces_between_special_tokens": True,
                                            "json_schema": None}, return_text_in_logprobs=False, lora_path=None)
    assert len(out["output_ids"]) == 2
    # Every field of SGLang's SamplingParams at its default value (top_k: SGLang's "whole vocabulary").
    sglang_defaults = {"max_new_tokens": 5, "stop": None, "stop_token_ids": None, "stop_regex": None,
                       "temperature": 0.0, "top_p": 1.0, "top_k": 1 << 30, "min_p": 0.0, "frequency_penalty": 0.0,
                       "presence_penalty": 0.0, "repetition_penalty": 1.0, "min_new_tokens": 0, "n": 1,
                       "json_schema": None, "regex": None, "ebnf": None, "structural_tag": None, "ignore_eos": False,
                       "skip_special_tokens": True, "spaces_between_special_tokens": True, "no_stop_trim": False,
                       "custom_params": None, "stream_interval": None, "logit_bias": None, "sampling_seed": None}
    assert llm.generate("Once upon a time", sglang_defaults)["output_ids"] == greedy_cases()[0]["greedy_ids"][:5]
    with pytest.raises(errors.InvalidArgument) as e:
        llm.generate("Once", input_ids=[1, 2])
    assert e.value.field == "input_ids"
    with pytest.raises(errors.InvalidArgument) as e:
        llm.generate(["a", "b"], [{"max_new_tokens": 1}] * 3)
    assert e.value.field == "sampling_params"
    with pytest.raises(errors.OutOfRange) as e:  # the server's own checks come through
        llm.generate(input_ids=[1, 999])
    assert e.value.field == "input_ids[1]"


def test_stream_items_are_cumulative(llm):
    case = greedy_cases()[0]
    items = list(llm.generate(case["prompt"], {**GREEDY, "max_new_tokens": 6}, stream=True))
    assert len(items) == 6
    assert [len(i["output_ids"]) for i in items] == [1, 2, 3, 4, 5, 6]
    assert all(i["meta_info"]["finish_reason"] is None for i in items[:-1])
    assert items[-1]["meta_info"]["finish_reason"]["type"] == "length"
    whole = llm.generate(case["prompt"], {**GREEDY, "max_new_tokens": 6})
    assert items[-1]["output_ids"] == whole["output_ids"] == case["greedy_ids"][:6]
    assert items[-1]["text"] == whole["text"]
    assert all(items[k + 1]["text"].startswith(items[k]["text"]) for k in range(5))
    sparse = list(llm.generate(case["prompt"], {**GREEDY, "max_new_tokens": 7, "stream_interval": 3}, stream=True))
    assert [len(i["output_ids"]) for i in sparse] == [3, 6, 7]
    batch = list(llm.generate([c["prompt"] for c in greedy_cases()], {**GREEDY, "max_new_tokens": 3}, stream=True))
    assert sorted({i["index"] for i in batch}) == [0, 1]
    finals = {i["index"]: i for i in batch if i["meta_info"]["finish_reason"]}
    assert finals[1]["output_ids"] == greedy_cases()[1]["greedy_ids"][:3]


def test_async_generate(llm):
    cases = greedy_cases()

    async def main():
        one = await llm.async_generate(cases[0]["prompt"], {**GREEDY, "max_new_tokens": 5})
        many = await asyncio.gather(*(llm.async_generate(input_ids=c["prompt_ids"],
                                                          sampling_params={**GREEDY, "max_new_tokens": 4})
                                      for c in cases * 8))
        gen = await llm.async_generate(cases[1]["prompt"], {**GREEDY, "max_new_tokens": 4}, stream=True)
        items = [i async for i in gen]
        return one, many, items

    one, many, items = asyncio.run(main())
    assert one["output_ids"] == cases[0]["greedy_ids"][:5]
    assert [m["output_ids"] for m in many] == [c["greedy_ids"][:4] for c in cases * 8]
    assert items[-1]["output_ids"] == cases[1]["greedy_ids"][:4] and items[-1]["meta_info"]["finish_reason"]


def test_abort_request(llm):
    import threading
    result = {}
    t = threading.Thread(target=lambda: result.update(out=llm.generate(
        "Once upon a time", {"max_new_tokens": 480, "ignore_eos": True}, rid="to-abort")))
    t.start()
    import time
    deadline = time.monotonic() + 10
    aborted = []
    while not aborted and time.monotonic() < deadline:
        aborted = llm.abort_request("to-abort")
    t.join(30)
    assert aborted == ["to-abort"]
    assert result["out"]["meta_info"]["finish_reason"]["type"] == "abort"
    assert llm.abort_request(abort_all=True) == []


def test_weights_from_disk_and_versions(llm, stories):
    v0 = llm.get_weight_version()
    ok, msg, paused = llm.update_weights_from_disk(stories)
    assert ok and paused == 0 and llm.get_weight_version() == v0 + 1, msg
    case = greedy_cases()[0]
    out = llm.generate(input_ids=case["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": 4})
    assert out["output_ids"] == case["greedy_ids"][:4] and out["meta_info"]["weight_version"] == v0 + 1
    ok, msg, _ = llm.update_weights_from_disk("/nonexistent/folder")  # outside the weights roots
    assert not ok and "permission_denied" in msg and llm.get_weight_version() == v0 + 1
    with pytest.raises(errors.Unsupported) as e:
        llm.update_weights_from_disk(stories, load_format="gguf")
    assert e.value.field == "load_format"


@needs_weights
def test_weights_from_tensor(llm, stories):
    state = read_safetensors(Path(stories) / "model.safetensors")
    case = greedy_cases()[0]
    sp = {**GREEDY, "max_new_tokens": 8}
    v0 = llm.get_weight_version()
    noisy = {k: (v + np.float32(0.05) * np.sign(v)).astype(np.float32) for k, v in state.items()}
    ok, msg = llm.update_weights_from_tensor(list(noisy.items()))
    v1 = llm.get_weight_version()
    assert ok and v1 > v0 and msg.startswith(f"version {v1}:"), msg  # versions only grow
    assert llm.generate(input_ids=case["prompt_ids"], sampling_params=sp)["output_ids"] != case["greedy_ids"][:8]
    ok, msg = llm.update_weights_from_tensor(state, flush_cache=False)  # a dict works too
    v2 = llm.get_weight_version()
    assert ok and v2 == v1 + 1, msg
    assert llm.generate(input_ids=case["prompt_ids"], sampling_params=sp)["output_ids"] == case["greedy_ids"][:8]
    bad = [("model.norm.weight", np.zeros(3, np.float32))]
    ok, msg = llm.update_weights_from_tensor(bad)
    assert not ok and "model.norm.weight" in msg and llm.get_weight_version() == v2
    assert llm.generate(input_ids=case["prompt_ids"], sampling_params=sp)["output_ids"] == case["greedy_ids"][:8]
    with pytest.raises(errors.WeightMismatch) as e:  # Engine.publish raises the class of the refusal
        llm.publish(bad)
    assert "model.norm.weight" in e.value.message
    with pytest.raises(errors.Unsupported):
        llm.update_weights_from_tensor(bad, load_format="flattened_bucket")
    ok, msg = llm.update_weights_from_tensor(state)  # after refusals, the next version still goes through
    assert ok and llm.get_weight_version() > v2, msg


def test_distributed_updates_need_an_mpi_job(llm):
    with pytest.raises(errors.Unsupported) as e:
        llm.init_weights_update_group("127.0.0.1", 29500, 1, 2, "g")
    assert e.value.field == "init_weights_update_group" and "-np K zrollout serve" in e.value.message
    with pytest.raises(errors.Unsupported):
        llm.update_weights_from_distributed(["model.norm.weight"], ["float32"], [[64]], "g")


def test_memory_cache_info(llm):
    assert llm.release_memory_occupation(["kv_cache", "cuda_graph"])["bytes"] > 0
    with pytest.raises(errors.Unavailable):
        llm.generate("Once", {"max_new_tokens": 1})
    llm.resume_memory_occupation(["kv_cache"])
    assert llm.flush_cache()["success"] is True
    with pytest.raises(errors.InvalidArgument):
        llm.release_memory_occupation(["gpu"])
    info = llm.get_server_info()
    assert info["vocab_size"] == 512 and info["context_length"] == 512 and info["engine"] == "zrollout"
    assert info["ignored_server_args"] == {"cuda_graph_max_bs": 8, "attention_backend": "fa3"}
    assert info["random_seed"] == 1 and "running" in info["internal_states"][0]
    sid = llm.open_session()
    out = llm.generate(input_ids=[1, 403], sampling_params={**GREEDY, "max_new_tokens": 2}, session_params={"id": sid})
    assert out["meta_info"]["prompt_tokens"] == 2
    llm.close_session(sid)


def test_constructor_mapping(stories, monkeypatch):
    monkeypatch.setattr(engine_mod, "_available_mb", lambda: 1000)
    assert engine_mod.kv_budget_mb(stories, 0.1) == 100 - 1  # 1 MiB of weights
    assert engine_mod.kv_budget_mb(stories, 0.001) == engine_mod._MIN_KV_MB
    with pytest.raises(errors.InvalidArgument):
        engine_mod.kv_budget_mb(stories, 1.5)
    for kwargs, field in (({"quantization": "fp8"}, "quantization"), ({"dp_size": 2}, "dp_size")):
        with pytest.raises(errors.Unsupported) as e:
            zrollout.Engine(model_path=stories, **kwargs)
        assert e.value.field == field


def test_skip_tokenizer_init_and_shutdown(stories):
    e = zrollout.Engine(model_path=stories, mem_fraction_static=0.002, threads=1, max_running_requests=8,
                        chunked_prefill_size=64, skip_tokenizer_init=True)
    server = e._server
    assert "--max-running" in server.args and "--max-prefill-chunk" in server.args and "--kv-cache-mb" in server.args
    out = e.generate(input_ids=[1, 403, 407], sampling_params={**GREEDY, "max_new_tokens": 3})
    assert "text" not in out and len(out["output_ids"]) == 3
    with pytest.raises(errors.InvalidArgument):
        e.generate("text needs the tokenizer")
    e.shutdown()
    assert server.process.returncode == 0
    e.shutdown()  # idempotent


def test_compute_and_kv_dtype_reach_the_engine(llm, stories):
    """``compute`` and ``kv_dtype`` become ``--compute`` / ``--kv-dtype``; get_model_info reports both, and
    the logprobs are not the f32 engine's bits."""
    assert llm.model_info["compute"] == "f32" and llm.model_info["kv_dtype"] == "f32"
    with zrollout.Engine(model_path=stories, kv_cache_mb=16, threads=1, log_level="error", compute="bf16",
                         kv_dtype="bf16") as e:
        assert "--kv-dtype" in e._server.args
        assert e.model_info["compute"] == "bf16" and e.model_info["kv_dtype"] == "bf16"
        ids = [1, 403, 407, 411]
        got = e.generate(input_ids=ids, sampling_params={**GREEDY, "max_new_tokens": 4}, return_logprob=True)
        ref = llm.generate(input_ids=ids, sampling_params={**GREEDY, "max_new_tokens": 4}, return_logprob=True)
        assert len(got["output_ids"]) == 4
        lp = lambda o: [t[0] for t in o["meta_info"]["output_token_logprobs"]]  # noqa: E731
        assert lp(got) != lp(ref)
