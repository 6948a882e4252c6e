#!/usr/bin/env python3
"""GRPO on zrollout rollouts with a PyTorch trainer (issue 15).

Each step: rollout (every prompt n times, temperature 1, logprobs on) -> reward of each sample's
text -> advantages normalised within each prompt's group -> clipped importance-ratio loss with the
rollout's per-token logprobs as the old policy (+ optional KL to the reference model), Adam ->
publish the new weights as version v+1 from the in-memory state_dict -> next step.

Synchronous (default): step v's rollout runs on version v; before the update the trainer recomputes
the logprob of every sampled token under version v and reports the largest difference to zrollout's.
Asynchronous (--async): step v+1's rollout runs while step v trains, and version v+1 is published
with in-flight policy "continue", so a sample may hold tokens of two versions. Each token's version
comes from weight_version_spans; the trainer keeps the previous version's weights and recomputes
each token under the version that produced it (model.forward_mixed), and the loss's old policy is
that token's behaviour logprob (tokens staler than --max-staleness are masked out).

    python3 examples/grpo/train.py [--model DIR] [--steps N] [--engines K] [--path ipc|broadcast|disk]
        [--async] [--seed S] [--metrics OUT.jsonl] [--plot OUT.png]
    mpirun -np 1 python3 examples/grpo/train.py --path broadcast : -np K zrollout serve --model DIR ...
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
if str(ROOT / "python") not in sys.path:
    sys.path.append(str(ROOT / "python"))  # the checkout's package, after any PYTHONPATH

from model import Llama, forward_mixed, token_logprobs  # noqa: E402
import report  # noqa: E402
from reward import REWARD_HELP, reward  # noqa: E402
from rollout import Engines, rollout, started_events  # noqa: E402

PROMPTS = ["Once upon a time", "One day", "Lily and Ben", "There was a", "The little", "Tom had a",
           "In the park", "Sue wanted to"]


def parse_args(argv=None):
    default_out = (ROOT / "build" / "grpo") if (ROOT / "build").is_dir() else Path("grpo_out")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "stories260K"), help="Hugging Face folder (f32 Llama)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--engines", type=int, default=2, help="rollout engines started here (ipc, disk)")
    p.add_argument("--path", choices=["ipc", "broadcast", "disk"], default="ipc")
    p.add_argument("--async", dest="async_", action="store_true", help="rollout of step v+1 during step v's update")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics", default=str(default_out / "metrics.jsonl"))
    p.add_argument("--plot", default=str(default_out / "grpo.png"))
    p.add_argument("--n", type=int, default=8, help="samples per prompt (the group)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=0.2, help="PPO clip range of the importance ratio")
    p.add_argument("--kl", type=float, default=0.0, help="coefficient of the KL to the reference (k3 estimator)")
    p.add_argument("--minibatches", type=int, default=2, help="optimizer steps per rollout (ratios move off 1)")
    p.add_argument("--max-staleness", type=int, default=1, help="async: drop tokens this many versions behind")
    p.add_argument("--publish-mid-rollout", action="store_true",
                   help="async: start step v+1's rollout after step v's update and publish v+1 once every engine "
                        "is generating it, so samples switch versions mid-way (mixed weight_version_spans)")
    p.add_argument("--threads", type=int, default=1, help="compute threads per engine")
    p.add_argument("--max-running", type=int, default=None,
                   help="sequences each engine runs at once (serve --max-running; the rest wait)")
    p.add_argument("--torch-threads", type=int, default=1, help="trainer threads (0: torch's default)")
    p.add_argument("--memcpy-probe", action="store_true",
                   help="after each publish, time one memcpy of the weights' bytes (pre-faulted buffers): the "
                        "publish's yardstick in the same run (memcpy_ms; the step-time benchmark)")
    p.add_argument("--quiet", action="store_true")
    p.epilog = REWARD_HELP
    return p.parse_args(argv)


def pad_batch(samples):
    """Sequences (B, T) = prompt + output padded with 0, and per predicted position (B, T-1): the
    output mask, zrollout's logprob, the token's version, and the version of every position."""
    T = max(len(s.prompt_ids) + len(s.output_ids) for s in samples)
    B = len(samples)
    seqs = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T - 1)
    old = torch.zeros(B, T - 1)
    ver = torch.zeros(B, T - 1, dtype=torch.long)
    for b, s in enumerate(samples):
        P, L = len(s.prompt_ids), len(s.output_ids)
        seqs[b, :P + L] = torch.tensor(s.prompt_ids + s.output_ids)
        # output token i is predicted at position P-1+i by the version that produced it; the prompt's
        # positions were prefilled by the version of the first output token.
        ver[b, :] = s.versions[0] if L else 0
        if L:
            mask[b, P - 1:P - 1 + L] = 1
            old[b, P - 1:P - 1 + L] = torch.tensor(s.logprobs)
            ver[b, P - 1:P - 1 + L] = torch.tensor(s.versions)
            ver[b, P - 1 + L:] = s.versions[-1]
    return seqs, mask, old, ver


def recompute(models: dict, seqs, ver, dtype=torch.float64):
    """Logprobs of the sampled tokens under the weights each position was computed with. The f32
    weights are evaluated in float64: the difference to zrollout is then the engine's own f32
    rounding only, not the sum of two f32 roundings. (dtype=float32: the same in f32, the yardstick
    of what f32 rounding alone does to these tokens.)"""
    models = {v: copy.deepcopy(m).to(dtype) for v, m in models.items()}
    with torch.no_grad():
        versions = sorted(set(ver.unique().tolist()))
        if len(versions) == 1:
            return token_logprobs(models[versions[0]], seqs)
        which = torch.zeros_like(ver)
        for k, v in enumerate(versions):
            which[ver == v] = k
        logits = forward_mixed([models[v] for v in versions], which, seqs[:, :-1])
        return torch.log_softmax(logits, -1).gather(-1, seqs[:, 1:, None]).squeeze(-1)


def advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(r - mean of the group) / (std of the group + 1e-4): a group where every sample scored the
    same teaches nothing (advantage 0)."""
    adv = torch.zeros_like(rewards)
    for g in groups.unique():
        sel = groups == g
        r = rewards[sel]
        adv[sel] = (r - r.mean()) / (r.std(unbiased=False) + 1e-4)
    return adv


def grpo_update(policy, ref, opt, seqs, mask, old, adv, args):
    """Clipped importance-ratio loss, token mean over the batch, in `args.minibatches` Adam steps."""
    B = seqs.shape[0]
    order = torch.randperm(B)
    stats = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0}
    for idx in order.chunk(args.minibatches):
        m = mask[idx]
        logp = token_logprobs(policy, seqs[idx])
        ratio = torch.exp(logp - old[idx])
        a = adv[idx, None]
        pg = -torch.min(ratio * a, ratio.clamp(1 - args.clip, 1 + args.clip) * a)
        loss = pg
        if args.kl > 0:
            with torch.no_grad():
                ref_lp = token_logprobs(ref, seqs[idx])
            d = ref_lp - logp
            kl = torch.exp(d) - d - 1  # k3: unbiased, positive
            loss = loss + args.kl * kl
            stats["kl"] += float((kl * m).sum() / m.sum().clamp(min=1)) / args.minibatches
        loss = (loss * m).sum() / m.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        stats["loss"] += float(loss) / args.minibatches
        clipped = ((ratio - 1).abs() > args.clip).float()
        stats["clip_frac"] += float((clipped * m).sum() / m.sum().clamp(min=1)) / args.minibatches
    return stats


class MemcpyProbe:
    """One memcpy of the state_dict's byte count between two pre-faulted buffers (torch copy_)."""

    def __init__(self, state_dict: dict):
        n = sum(t.numel() * t.element_size() for t in state_dict.values())
        self.src, self.dst = torch.ones(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8)
        self.dst.copy_(self.src)  # every page faulted in

    def sample_ms(self) -> float:
        t0 = time.perf_counter()
        self.dst.copy_(self.src)
        return (time.perf_counter() - t0) * 1e3


class Trainer:
    """The policy, its Adam state, the weights of the versions still in flight, the publisher."""

    def __init__(self, args, engines: Engines):
        self.args, self.engines = args, engines
        self.policy = Llama.from_pretrained(args.model)
        self.ref = copy.deepcopy(self.policy).eval() if args.kl > 0 else None
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=args.lr)
        self.version = 0  # what the engines serve (the folder's weights are version 0)
        self.snapshots = {0: copy.deepcopy(self.policy)}
        self.last_checksums: dict = {}
        self.probe = MemcpyProbe(self.policy.state_dict()) if args.memcpy_probe else None

    def train(self, samples, metrics: dict) -> None:
        a = self.args
        seqs, mask, old, ver = pad_batch(samples)
        rewards = torch.tensor([reward(s.text) for s in samples])
        groups = torch.tensor([s.group for s in samples])
        t0 = time.perf_counter()
        lp = recompute(self.snapshots, seqs, ver)
        diff = (lp - old).abs()[mask > 0]
        # Where the largest difference sits, and what plain f32 rounding does to the same tokens
        # (torch's f32 forward against the f64 one): the README's logprob note.
        worst = int(diff.argmax())
        f32_diff = (recompute(self.snapshots, seqs, ver, torch.float32).double() - lp).abs()[mask > 0]
        metrics.update(worst_token_logprob=float(lp[mask > 0][worst]), worst_token_f32_diff=float(f32_diff[worst]),
                       torch_f32_diff_max=float(f32_diff.max()))
        mixed = torch.tensor([len(set(s.versions)) > 1 for s in samples])
        if mixed.any():  # what the loss would see if it ignored the spans: one version per sample
            first = torch.tensor([s.versions[0] if s.versions else 0 for s in samples])[:, None].expand_as(ver)
            lp_one = recompute(self.snapshots, seqs, first)
            sel = mask[mixed] > 0
            metrics.update(mixed_samples=int(mixed.sum()),
                           logprob_diff_max_mixed=float((lp - old)[mixed].abs()[sel].max()),
                           logprob_diff_max_ignoring_spans=float((lp_one - old)[mixed].abs()[sel].max()))
        else:
            metrics.update(mixed_samples=0)
        stale = (self.version - ver).clamp(min=0)
        keep = mask * (stale <= a.max_staleness)
        stats = grpo_update(self.policy, self.ref, self.opt, seqs, keep, old, advantages(rewards, groups), a)
        metrics.update(
            reward_mean=float(rewards.mean()), reward_std=float(rewards.std(unbiased=False)),
            logprob_diff_max=float(diff.max()), logprob_diff_mean=float(diff.mean()),
            tokens=int(mask.sum()), stale_tokens=int(((stale > 0).float() * mask).sum()),
            dropped_tokens=int((mask - keep).sum()), train_ms=(time.perf_counter() - t0) * 1e3, **stats)

    def publish(self, metrics: dict) -> None:
        v = self.version + 1
        in_flight = "continue" if self.args.async_ else "drain"
        t0 = time.perf_counter()
        res = self.engines.publisher.publish(self.policy.state_dict(), v, path=self.args.path, in_flight=in_flight)
        metrics.update(publish_ms=(time.perf_counter() - t0) * 1e3, publish_write_ms=res.write_seconds * 1e3,
                       publish_bytes=res.bytes, pause_ms=max((x.get("stage_seconds", 0) for x in res.acks),
                                                             default=0) * 1e3)
        if self.probe:
            metrics["memcpy_ms"] = self.probe.sample_ms()
        self.last_checksums = res.checksums
        self.version = v
        self.snapshots[v] = copy.deepcopy(self.policy)
        for old in [k for k in self.snapshots if k < v - self.args.max_staleness]:
            del self.snapshots[old]  # no token that old can arrive any more


def step_metrics(step: int, version: int, samples, seconds: float) -> dict:
    toks = sum(len(s.output_ids) for s in samples)
    seen = sorted({v for s in samples for v in s.versions})
    return {"step": step, "version": version, "rollout_tok_s": toks / max(seconds, 1e-9),
            "rollout_ms": seconds * 1e3, "versions_seen": seen}


def run(args) -> list:
    torch.manual_seed(args.seed)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    engines = Engines(args.model, args.engines, args.path, args.threads, max_running=args.max_running)
    rows = []
    try:
        prompt_ids = engines.tokenize(PROMPTS[:args.prompts] if args.prompts <= len(PROMPTS)
                                      else [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)])
        trainer = Trainer(args, engines)
        def go(step, started=None):
            return rollout(engines, prompt_ids, args.n, args.max_new_tokens, args.seed, step, started)

        mid = args.async_ and args.publish_mid_rollout
        pending = engines.pool.submit(go, 0) if args.async_ else None
        for step in range(args.steps):
            more = step + 1 < args.steps
            if args.async_:
                samples, secs = pending.result()
                if more and not mid:
                    pending = engines.pool.submit(go, step + 1)  # runs during this step's update
            else:
                samples, secs = go(step)
            m = step_metrics(step, trainer.version, samples, secs)
            m["published_before"] = trainer.version
            trainer.train(samples, m)
            if more and mid:  # the next batch starts on the old version; the publish lands inside it
                started = started_events(engines)
                pending = engines.pool.submit(go, step + 1, started)
                for e in started:
                    e.wait(120)
            trainer.publish(m)
            m["version"] = trainer.version
            m["samples"] = [{"text": s.text, "versions": sorted(set(s.versions))} for s in samples[:1]]
            rows.append(m)
            report.progress(m, args.steps, args.quiet)
        engines_checksums = [engines.checksums(k) for k in range(len(engines.clients))]
        for r in rows[-1:]:
            r["checksums_compared"] = len(trainer.last_checksums)
            r["checksums_match"] = all(all(c.get(n) == v for n, v in trainer.last_checksums.items())
                                       for c in engines_checksums)
    finally:
        engines.close()
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = run(args)
    Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    with open(args.metrics, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    report.summary(rows, args)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        report.plot(rows, args.plot)
        print(f"plot: {args.plot}")
    print(f"metrics: {args.metrics}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
