"""The main job behind `make demo`.

Builds the embedded smollm2-135m-moe (first use only), measures held-out
accuracy, runs GRPO with vLLM rollouts on 1-2 digit addition, measures
again and prints a before/after table. Output: runs/demo/ with metrics.jsonl,
TensorBoard logs, the final checkpoint and PNG plots.

    python -m recipes.demo [key=value ...]     # e.g. train.steps=10
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def before_after_table(summary: dict) -> str:
    b, a = summary["before"], summary["after"]
    n = int(a["eval/n"])
    delta = a["eval/pass@1"] - b["eval/pass@1"]
    # Two independent binomial estimates: the difference's own noise.
    noise = (a["eval/stderr"] ** 2 + b["eval/stderr"] ** 2) ** 0.5
    lines = [
        f"| held-out ({n} problems, greedy) | before | after | change |",
        "|---|---|---|---|",
        f"| pass@1 | {b['eval/pass@1']:.3f} | {a['eval/pass@1']:.3f} | {delta:+.3f} (noise ±{noise:.3f}, "
        f"{delta / noise if noise else float('inf'):.1f} sigma) |",
        f"| mean reward | {b['eval/mean_reward']:.3f} | {a['eval/mean_reward']:.3f} | "
        f"{a['eval/mean_reward'] - b['eval/mean_reward']:+.3f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from grpo.config_io import load_config
    from grpo.errors import GrpoError
    from recipes.train_grpo import main as train

    t0 = time.time()
    try:
        summary = train(load_config(CONFIG, argv))
    except GrpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = before_after_table(summary)
    run_dir = Path(summary["run_dir"])
    (run_dir / "before_after.md").write_text(table + "\n")
    print("\n" + summary["data"])
    print(table)
    print(f"\nrun folder: {run_dir}  (metrics.jsonl, tensorboard/, checkpoints/, *.png)")
    print(f"total time: {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
