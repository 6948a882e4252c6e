"""What the GRPO example prints and draws: a line per step, the summary table, the PNG plot."""

from __future__ import annotations

import statistics


def progress(m: dict, steps: int, quiet: bool = False) -> None:
    if quiet:
        return
    done = m["step"] + 1
    bar = "#" * (20 * done // steps) + "." * (20 - 20 * done // steps)
    print(f"[{bar}] step {done:3d}/{steps} v{m['version']:<3d} reward {m['reward_mean']:.3f}±{m['reward_std']:.3f}"
          f"  |dlogp| max {m['logprob_diff_max']:.1e} mean {m['logprob_diff_mean']:.1e}"
          f"  rollout {m['rollout_tok_s']:7.0f} tok/s  train {m['train_ms']:6.1f} ms"
          f"  publish {m['publish_ms']:5.1f} ms  versions {m['versions_seen']}", flush=True)


def _mean(rows, key):
    return statistics.fmean(r[key] for r in rows) if rows else float("nan")


def summary(rows: list, args) -> None:
    if not rows:
        return
    k = min(5, len(rows))
    first, last = rows[:k], rows[-k:]
    mode = "async" if args.async_ else "sync"
    print(f"\nGRPO summary: {len(rows)} steps, {mode}, path {args.path}, model {args.model}")
    print(f"{'':28s}{'first ' + str(k):>12s}{'last ' + str(k):>12s}{'all':>12s}")
    for key, fmt in (("reward_mean", "{:12.3f}"), ("logprob_diff_max", "{:12.1e}"), ("logprob_diff_mean", "{:12.1e}"),
                     ("rollout_tok_s", "{:12.0f}"), ("rollout_ms", "{:12.1f}"), ("train_ms", "{:12.1f}"),
                     ("publish_ms", "{:12.2f}"), ("pause_ms", "{:12.2f}"), ("memcpy_ms", "{:12.2f}")):
        if key not in rows[0]:
            continue
        vals = [_mean(first, key), _mean(last, key), _mean(rows, key)]
        print(f"{key:28s}" + "".join(fmt.format(v) for v in vals))
    if "memcpy_ms" in rows[0]:
        ratio = statistics.median(r["publish_ms"] / r["memcpy_ms"] for r in rows)
        print(f"{'publish / one memcpy (median)':28s}{ratio:35.1f}x")
    print(f"{'logprob_diff_max (all steps)':28s}{max(r['logprob_diff_max'] for r in rows):36.1e}")
    versions = sorted({v for r in rows for v in r["versions_seen"]})
    print(f"versions seen: {versions[0]}..{versions[-1]}; final version {rows[-1]['version']}; "
          f"checksums match the engines: {rows[-1].get('checksums_match')}")
    print(f"sample (last step): {rows[-1]['samples'][0]['text']!r}")


def plot(rows: list, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    mean = [r["reward_mean"] for r in rows]
    std = [r["reward_std"] for r in rows]
    ax[0].plot(steps, mean, marker=".")
    ax[0].fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax[0].set(title="reward (mean ± std)", xlabel="step")
    ax[1].semilogy(steps, [max(r["logprob_diff_max"], 1e-9) for r in rows], label="max")
    ax[1].semilogy(steps, [max(r["logprob_diff_mean"], 1e-9) for r in rows], label="mean")
    ax[1].set(title="|trainer logprob − zrollout logprob|", xlabel="step")
    ax[1].legend()
    for key in ("rollout_ms", "train_ms", "publish_ms"):
        ax[2].plot(steps, [r[key] for r in rows], label=key)
    ax[2].set(title="step time (ms)", xlabel="step")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
