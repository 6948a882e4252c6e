"""Each adapter of zrollout.integrations against a live engine on stories260K (the frameworks are not
installed: the adapters are duck-typed to their published interfaces)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from _fixtures import *  # noqa: F401,F403
import zrollout
from zrollout import errors
from zrollout import main_generation
from zrollout.integrations import rlinf, skyrl, tunix, verl
from zrollout.integrations._common import pad_rows, tokenize

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def engine(server):
    e = zrollout.Engine(endpoint=server.endpoint)
    yield e
    e.shutdown()


@pytest.fixture(scope="module")
def state(stories):
    return read_safetensors(Path(stories) / "model.safetensors")


@pytest.mark.parametrize("obj, interface", [
    (tunix.ZrolloutRollout, "tunix.rl.rollout.base_rollout.BaseRollout"),
    (skyrl.ZrolloutInferenceEngine, "skyrl_train.inference_engines.base.InferenceEngineInterface"),
    (verl.ZrolloutAsyncServer, "verl.workers.rollout"),
    (rlinf.RLinfRollout, "rlinf.workers.rollout.sglang.sglang_worker.SGLangWorker"),
    (main_generation, "verl/trainer/config/generation.yaml"),
    (zrollout.Engine, "sglang.Engine"),
])
def test_docstrings_name_the_interface(obj, interface):
    # Each adapter says which framework interface it follows (issue 14): in its class docstring or
    # in its module's, which the class docstring points to.
    module = sys.modules[obj.__module__] if isinstance(obj, type) else obj
    docs = (obj.__doc__ or "") + (module.__doc__ or "")
    assert interface in docs, f"{obj.__name__}: docstrings do not name {interface}"


def test_common_helpers(engine):
    cases = greedy_cases()
    assert tokenize(engine, [c["prompt"] for c in cases]) == [c["prompt_ids"] for c in cases]
    a = pad_rows([[1, 2, 3], [4]], 2, 0, left=True)
    assert a.tolist() == [[2, 3], [0, 4]]
    assert pad_rows([[1, 2, 3], [4]], None, 9, left=False).tolist() == [[1, 2, 3], [4, 9, 9]]


# -- Tunix -----------------------------------------------------------------------------------------
def test_tunix_generate_and_logps(engine):
    roll = tunix.ZrolloutRollout(engine=engine)
    assert roll.eos_id() == 2 and roll.pad_id() == 2 and roll.model() is engine  # no pad id: EOS pads
    cases = greedy_cases()
    cfg = types.SimpleNamespace(max_tokens_to_generate=12, temperature=0.0, top_p=1.0, top_k=None, seed=None,
                                max_prompt_length=8, eos_tokens=None)
    out = roll.generate([c["prompt"] for c in cases], cfg)
    assert out.logits is None and out.tokens.shape == (2, 12) and out.left_padded_prompt_tokens.shape == (2, 8)
    assert out.tokens[0].tolist() == cases[0]["greedy_ids"][:12]
    assert out.left_padded_prompt_tokens[0].tolist() == [2, 2, 2] + cases[0]["prompt_ids"]
    # The second prompt (12 tokens) is cut to its last 8, and the completion follows that prompt.
    assert out.left_padded_prompt_tokens[1].tolist() == cases[1]["prompt_ids"][-8:]
    truncated = engine.generate(input_ids=cases[1]["prompt_ids"][-8:], sampling_params={**GREEDY, "max_new_tokens": 12})
    assert out.tokens[1].tolist() == truncated["output_ids"]
    assert np.allclose(out.logprobs[0], cases[0]["greedy_logprobs"][:12], atol=2e-4)
    assert out.text[0] == engine.generate(cases[0]["prompt"], {**GREEDY, "max_new_tokens": 12})["text"]
    # get_per_token_logps: left padding stripped, the score equals generate's logprobs.
    logps = roll.get_per_token_logps(out.left_padded_prompt_tokens, out.tokens)
    assert logps.shape == (2, 12)
    assert np.allclose(logps[0], out.logprobs[0], atol=1e-6)
    assert np.allclose(logps[1], out.logprobs[1], atol=1e-6)
    mask = np.zeros((2, 12), np.int32)
    mask[:, :5] = 1
    masked = roll.get_per_token_logps(out.left_padded_prompt_tokens, out.tokens, mask)
    assert np.allclose(masked[:, :5], logps[:, :5]) and (masked[:, 5:] == 0).all()


def test_tunix_eos_tokens_and_dict_config(engine):
    roll = tunix.ZrolloutRollout(engine=engine, pad_id=0)
    case = greedy_cases()[0]
    stop_at = case["greedy_ids"][3]
    out = roll.generate([case["prompt"]], {"max_tokens_to_generate": 10, "temperature": 0.0,
                                           "max_prompt_length": 16, "eos_tokens": [stop_at]})
    assert out.tokens[0].tolist() == case["greedy_ids"][:4] + [0] * 6
    logps = roll.get_per_token_logps(out.left_padded_prompt_tokens, out.tokens)
    assert (logps[0, 4:] == 0).all() and (logps[0, :4] != 0).all()


@needs_weights
def test_tunix_update_params(engine, state):
    roll = tunix.ZrolloutRollout(engine=engine, name_map=lambda n: n.replace("params.", "", 1))
    v = engine.get_weight_version()
    nested = {"params": {}}
    for name, value in state.items():  # a PyTree of nested dicts, as Flax holds parameters
        node = nested["params"]
        parts = name.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    roll.update_params(nested)
    assert engine.get_weight_version() == v + 1
    case = greedy_cases()[0]
    assert engine.generate(input_ids=case["prompt_ids"], sampling_params={**GREEDY, "max_new_tokens": 6})["output_ids"] \
        == case["greedy_ids"][:6]


# -- SkyRL -----------------------------------------------------------------------------------------
def test_skyrl_generate_and_grouping(engine):
    ie = skyrl.ZrolloutInferenceEngine(engine=engine)
    cases = greedy_cases()

    async def main():
        out = await ie.generate({"prompts": None, "prompt_token_ids": [c["prompt_ids"] for c in cases],
                                 "sampling_params": {"max_tokens": 6, "temperature": 1.0, "n": 3, "logprobs": 0,
                                                     "seed": 3}})
        greedy = await ie.generate({"prompt_token_ids": [cases[0]["prompt_ids"]],
                                    "sampling_params": {"max_new_tokens": 5, "temperature": 0.0}})
        return out, greedy

    out, greedy = asyncio.run(main())
    assert out["n_per_prompt"] == 3 and len(out["responses"]) == 6 and len(out["response_ids"]) == 6
    assert all(len(r) == 6 for r in out["response_ids"]) and out["stop_reasons"] == ["length"] * 6
    assert [len(lp) for lp in out["response_logprobs"]] == [6] * 6 and out["weight_version"].isdigit()
    assert len(set(out["request_ids"][:3])) == 1 and out["request_ids"][0] != out["request_ids"][3]
    groups = skyrl.group_outputs_by_prompt(out)
    assert len(groups) == 2 and all(len(g["responses"]) == 3 for g in groups)
    assert groups[1]["response_ids"] == out["response_ids"][3:]
    assert greedy["response_ids"] == [cases[0]["greedy_ids"][:5]] and greedy["response_logprobs"] is None
    with pytest.raises(errors.Unsupported) as e:
        asyncio.run(ie.generate({"prompts": [[{"role": "user", "content": "hi"}]]}))
    assert e.value.field == "prompts"


def test_skyrl_pause_sleep_teardown(engine, stories):
    ie = skyrl.ZrolloutInferenceEngine(engine=engine)
    case = greedy_cases()[0]

    async def main():
        long = asyncio.ensure_future(ie.generate({"prompt_token_ids": [case["prompt_ids"]], "sampling_params": {
            "max_new_tokens": 480, "ignore_eos": True}}))
        for _ in range(500):  # until it runs (the machine may be busy)
            if (await asyncio.to_thread(engine.client.get_load))["running"]:
                break
            await asyncio.sleep(0.01)
        await ie.pause_generation("abort")
        first = await long
        waiting = asyncio.ensure_future(ie.generate({"prompt_token_ids": [case["prompt_ids"]],
                                                     "sampling_params": {**GREEDY, "max_new_tokens": 3}}))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # held while paused
        await ie.resume_generation()
        second = await waiting
        await ie.sleep(tags=["kv_cache"])
        with pytest.raises(errors.Unavailable):
            await ie.generate({"prompt_token_ids": [case["prompt_ids"]], "sampling_params": {"max_new_tokens": 1}})
        await ie.wake_up(tags=["kv_cache"])
        await ie.reset_prefix_cache()
        ok, msg = await ie.init_weight_update_communicator("127.0.0.1", 29500, 1, 2, "g", "nccl")
        return first, second, ok, msg

    first, second, ok, msg = asyncio.run(main())
    assert first["stop_reasons"] == ["abort"] and len(first["response_ids"][0]) < 480
    assert second["response_ids"] == [case["greedy_ids"][:3]]
    assert ok and "ipc" in msg
    assert ie.tp_size() == 1 and ie.pp_size() == 1 and ie.dp_size() == 1
    with pytest.raises(errors.Unsupported) as e:
        asyncio.run(ie.update_named_weights({"names": ["model.norm.weight"], "dtypes": ["float32"], "shapes": [[64]],
                                             "extras": [{"ipc_handles": {}}]}))
    assert e.value.field == "tensors"
    own = skyrl.ZrolloutInferenceEngine(model_path=stories, **SERVE_FLAGS_ENGINE)
    server = own.engine._server
    asyncio.run(own.teardown())
    assert server.process.returncode == 0


SERVE_FLAGS_ENGINE = {"kv_cache_mb": 16, "threads": 1}


@needs_weights
def test_skyrl_update_named_weights(engine, state):
    ie = skyrl.ZrolloutInferenceEngine(engine=engine)
    names = list(state)
    v = engine.get_weight_version()
    req = {"names": names, "dtypes": ["float32"] * len(names), "shapes": [list(state[n].shape) for n in names],
           "extras": [{"tensor": state[n]} for n in names]}
    ok, msg = asyncio.run(ie.update_named_weights(req))
    assert ok and engine.get_weight_version() == v + 1, msg
    obj = types.SimpleNamespace(names=names[:1], dtypes=["float32"], shapes=[[3]], tensors=[state[names[0]]])
    with pytest.raises(errors.InvalidArgument) as e:  # the request object form; a wrong shape is named
        asyncio.run(ie.update_named_weights(obj))
    assert e.value.field == "shapes[0]"


# -- verl ------------------------------------------------------------------------------------------
def test_verl_async_server(engine):
    srv = verl.ZrolloutAsyncServer(engine=engine, response_length=10)
    case = greedy_cases()[0]

    async def main():
        a = await srv.generate(case["prompt_ids"], {"temperature": 0.0, "logprobs": True}, "verl-req-1")
        b = await srv.generate(case["prompt_ids"], {"temperature": 0.0, "top_k": 0}, "verl-req-2")
        await srv.clear_kv_cache()
        await srv.sleep(["kv_cache"])
        await srv.wake_up(["kv_cache"])
        assert await srv.abort_all_requests() == []
        return a, b

    a, b = asyncio.run(main())
    assert a.token_ids == case["greedy_ids"][:10] and a.stop_reason == "completed"
    assert np.allclose(a.log_probs, case["greedy_logprobs"][:10], atol=2e-4)
    assert b.token_ids == a.token_ids and b.log_probs is None
    near_end = verl.ZrolloutAsyncServer(engine=engine, response_length=100)
    out = asyncio.run(near_end.generate([1] * 505, {"temperature": 0.0}, "verl-req-3"))
    assert len(out.token_ids) <= 512 - 505 - 1  # the context bounds max_new_tokens


def test_verl_main_generation(tmp_path, stories, server):
    cases = greedy_cases()
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "id": i}) for i, p in
                              enumerate([cases[0]["prompt"], cases[1]["prompt_ids"], cases[1]["prompt"]])) + "\n")
    out = tmp_path / "out" / "gen.jsonl"
    cmd = [sys.executable, "-m", "zrollout.main_generation", f"data.path={data}", f"data.output_path={out}",
           "data.n_samples=1", "data.batch_size=2", f"model.path={stories}", "rollout.temperature=0",
           "rollout.top_k=-1", "rollout.top_p=1.0", "rollout.prompt_length=64", "rollout.response_length=7",
           "rollout.tensor_model_parallel_size=1", "rollout.kv_cache_mb=16", "rollout.threads=1",
           "trainer.n_gpus_per_node=8", "rollout.enforce_eager=True"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO / "python")]))}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == [0, 1, 2]
    assert rows[0]["response_ids"] == [cases[0]["greedy_ids"][:7]]
    assert rows[1]["response_ids"] == rows[2]["response_ids"] == [cases[1]["greedy_ids"][:7]]
    assert rows[0]["responses"][0] == cases[0]["text"][:len(rows[0]["responses"][0])]
    # n samples with a seed against a running server; greedy with n > 1 is refused as in verl.
    cmd2 = cmd[:5] + ["data.n_samples=3", f"rollout.endpoint={server.endpoint}", "rollout.temperature=1.0",
                      "rollout.seed=5", "rollout.response_length=4"]
    r = subprocess.run(cmd2, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(row["responses"]) == 3 and len(row["response_ids"][0]) == 4 for row in rows)
    bad = cmd[:5] + ["data.n_samples=2", f"rollout.endpoint={server.endpoint}", "rollout.temperature=0"]
    r = subprocess.run(bad, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "data.n_samples" in r.stderr


def test_verl_overrides_parse():
    from zrollout import main_generation as mg
    cfg = mg.parse_overrides(["data.n_samples=2", "rollout.top_p=0.5", "rollout.ignore_eos=true", "model.path=null",
                              "ray_init.num_cpus=4", "rollout.name=vllm", "data.prompt_key='question'"])
    assert cfg["data"]["n_samples"] == 2 and cfg["rollout"]["top_p"] == 0.5 and cfg["rollout"]["ignore_eos"] is True
    assert cfg["model"]["path"] is None and cfg["data"]["prompt_key"] == "question"
    with pytest.raises(errors.InvalidArgument) as e:
        mg.parse_overrides(["data.no_such_key=1"])
    assert e.value.field == "data.no_such_key"


# -- RLinf -----------------------------------------------------------------------------------------
def _rlinf_cfg(stories, **rollout):
    return {"rollout": {"model_dir": stories, "tensor_parallel_size": 1, "max_running_requests": 16,
                        "gpu_memory_utilization": 0.001, "detokenize": True, "padding": None, "eos": None,
                        "validate_weight": True, "return_logprobs": True, "threads": 1, **rollout},
            "algorithm": {"sampling_params": {"use_greedy": True, "max_new_tokens": 6}}}


def test_rlinf_config_maps_to_one_launch(stories):
    kw = rlinf.launch_kwargs(_rlinf_cfg(stories))
    assert kw == {"model_path": stories, "tp_size": 1, "skip_tokenizer_init": False, "max_running_requests": 16,
                  "mem_fraction_static": 0.001, "threads": 1}
    assert rlinf.launch_kwargs(_rlinf_cfg(stories, detokenize=False))["skip_tokenizer_init"] is True
    assert rlinf.sampling_params({"algorithm": {"sampling_params": {"use_greedy": False, "temperature": 0.6,
                                                                    "top_k": 20, "top_p": 0.9, "max_new_tokens": 9}}}) \
        == {"max_new_tokens": 9, "temperature": 0.6, "top_k": 20, "top_p": 0.9}
    worker = rlinf.RLinfRollout(_rlinf_cfg(stories, max_running_requests=4))
    worker.init_worker()
    try:
        server = worker.engine._server
        assert server.args[server.args.index("--max-running") + 1] == "4" and "--kv-cache-mb" in server.args
        case = greedy_cases()[0]
        batch = worker.rollout([case["prompt_ids"]], n=2)
        assert batch.response_ids == [case["greedy_ids"][:6]] * 2 and batch.finish_reasons == ["length"] * 2
        assert batch.padded_responses.shape == (2, 6) and batch.response_texts[0]
        assert np.allclose(batch.response_logprobs[0], case["greedy_logprobs"][:6], atol=2e-4)
        worker.offload_engine()
        worker.onload_engine()
        assert worker.generate([case["prompt_ids"]])[0]["output_ids"] == case["greedy_ids"][:6]
    finally:
        worker.shutdown()
    assert server.process.returncode == 0


def test_rlinf_eos_and_token_only(engine, stories):
    case = greedy_cases()[0]
    worker = rlinf.RLinfRollout(_rlinf_cfg(stories, eos=case["greedy_ids"][2], padding=0), engine=engine)
    worker.init_worker()
    batch = worker.rollout([case["prompt_ids"], case["prompt_ids"][:3]])
    assert batch.response_ids[0] == case["greedy_ids"][:3] and batch.finish_reasons[0] == "stop"
    assert batch.pad_id == 0 and batch.padded_responses[0].tolist()[:3] == case["greedy_ids"][:3]


@needs_weights
def test_rlinf_sync_and_validate_weight(engine, stories, state):
    worker = rlinf.RLinfRollout(_rlinf_cfg(stories), engine=engine)
    worker.init_worker()
    v = engine.get_weight_version()
    assert worker.sync_model_from_actor(state) == v + 1
    assert worker.last_validation["matched"] == len(state)
    with pytest.raises(errors.ChecksumMismatch) as e:
        worker.validate_weights([("model.norm.weight", state["model.norm.weight"])], {"model.norm.weight": 12345})
    assert e.value.field == "model.norm.weight"
    torch = pytest.importorskip("torch")
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()}
    worker.sync_model_from_actor(bf16)  # served as f32: nothing to compare bit for bit, nothing refused
    assert worker.last_validation["matched"] == 0 and len(worker.last_validation["other_dtype"]) == len(state)
    worker.sync_model_from_actor(state)
    assert worker.last_validation["matched"] == len(state)
