"""PNG plots of a run from its metrics.jsonl: reward curve, held-out accuracy, expert load."""

from __future__ import annotations

from pathlib import Path

from grpo.metrics import read_jsonl


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = _series(records, "reward/mean")
    ax.plot(xs, ys, label="train reward (mean)", alpha=0.5)
    if len(ys) >= 5:  # a moving average makes the trend readable on noisy small batches
        w = 5
        ax.plot(xs[w - 1:], [sum(ys[i - w + 1:i + 1]) / w for i in range(w - 1, len(ys))], label="5-step average")
    ax.set_xlabel("step"), ax.set_ylabel("reward"), ax.legend(), ax.set_title("Training reward")
    written.append(_save(fig, run_dir / "reward.png"))

    xs, ys = _series(records, "eval/pass@1")
    if xs:
        _, err = _series(records, "eval/stderr")
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.errorbar(xs, ys, yerr=err if len(err) == len(ys) else None, marker="o", capsize=3)
        ax.set_xlabel("step"), ax.set_ylabel("held-out pass@1"), ax.set_title("Held-out accuracy")
        written.append(_save(fig, run_dir / "heldout_accuracy.png"))

    if any(k.startswith("moe/load/") for r in records for k in r):
        from grpo.moe.plots import plot_expert_load

        plot_expert_load(records, run_dir / "expert_load.png")
        written.append(run_dir / "expert_load.png")
    plt.close("all")
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
