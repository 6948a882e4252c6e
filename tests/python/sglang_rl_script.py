"""A small RL loop written against SGLang's offline engine (``sgl.Engine``), as RL scripts drive it:
sample groups with logprobs, score them, take a "training step" on torch weights, push the new
weights with ``update_weights_from_tensor``, free and take back memory around the step, and check
that the engine serves what was pushed. The only line that differs from an SGLang script is the
import below. Usage: python3 sglang_rl_script.py MODEL_DIR (a Llama checkpoint with a single
model.safetensors); exits 0 and prints "ok" when every check holds.
"""

import asyncio
import json
import struct
import sys

import torch

import zrollout as sgl  # an SGLang script has: import sglang as sgl


def load_state_dict(path):
    """A safetensors file as a torch state_dict (what the trainer holds)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    state = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        buf = bytearray(data[8 + n + a:8 + n + b])
        state[name] = torch.frombuffer(buf, dtype=dtypes[meta["dtype"]]).reshape(meta["shape"]).clone()
    return state


def rewards_of(outputs):
    # A toy reward: longer words are better.
    return torch.tensor([sum(len(w) for w in o["text"].split()) / max(1, len(o["text"].split())) for o in outputs])


def main(model_path):
    llm = sgl.Engine(model_path=model_path, random_seed=42, mem_fraction_static=0.002, log_level="error")
    prompts = ["Once upon a time", "Lily and Ben went to the park"]
    group = 4
    greedy = {"temperature": 0, "max_new_tokens": 16}

    before = llm.generate(prompts, greedy)
    assert isinstance(before, list) and len(before) == 2

    # Rollout: groups of samples with the logprobs of the sampled tokens.
    sampling_params = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 16, "n": group}
    outputs = llm.generate(prompts, sampling_params, return_logprob=True)
    assert len(outputs) == len(prompts) * group
    for out in outputs:
        logprobs = [lp for lp, token_id, _ in out["meta_info"]["output_token_logprobs"]]
        token_ids = [token_id for _, token_id, _ in out["meta_info"]["output_token_logprobs"]]
        assert token_ids == out["output_ids"] and all(lp <= 0 for lp in logprobs)
        assert out["meta_info"]["finish_reason"]["type"] in ("stop", "length")
    rewards = rewards_of(outputs).reshape(len(prompts), group)
    advantages = (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + 1e-6)
    assert advantages.shape == (2, group)

    # The trainer's weights (bf16, as a mixed-precision trainer keeps them) and a "training step".
    state = load_state_dict(f"{model_path}/model.safetensors")
    torch.manual_seed(0)
    stepped = {k: (v + 0.05 * torch.randn_like(v)).to(torch.bfloat16) for k, v in state.items()}

    # Colocated: release the engine's memory for the step, take it back, push the new weights.
    llm.release_memory_occupation()
    llm.resume_memory_occupation()
    success, message = llm.update_weights_from_tensor(named_tensors=list(stepped.items()), flush_cache=True)
    assert success, message
    after = llm.generate(prompts, greedy)
    assert [o["output_ids"] for o in after] != [o["output_ids"] for o in before], "the new weights serve"

    # Back to the original weights (f32 this time): the greedy outputs come back exactly.
    success, message = llm.update_weights_from_tensor(named_tensors=list(state.items()))
    assert success, message
    restored = llm.generate(prompts, greedy)
    assert [o["output_ids"] for o in restored] == [o["output_ids"] for o in before]

    # Async rollouts (an agent loop) and streaming.
    async def agent_loop():
        return await asyncio.gather(*(llm.async_generate(p, {"temperature": 0.7, "max_new_tokens": 8}) for p in prompts))
    async_outputs = asyncio.run(agent_loop())
    assert len(async_outputs) == 2 and all(o["output_ids"] for o in async_outputs)
    final = None
    for chunk in llm.generate(prompts[0], greedy, stream=True):
        final = chunk
    assert final["output_ids"] == before[0]["output_ids"] and final["text"] == before[0]["text"]

    llm.flush_cache()
    llm.shutdown()
    print("ok", json.dumps({"rewards": rewards.tolist(), "text": before[0]["text"]}))


if __name__ == "__main__":
    main(sys.argv[1])
