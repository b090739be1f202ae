"""Held-out evaluation with the same engines and rewards as training.

pass@1 is the mean correctness over all samples; pass@k uses the unbiased
estimator of Chen et al. (2021) from n samples per problem. "Correct" means the
primary reward function (the first in the config) scored >= `correct_at`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rollouts.types import SamplingConfig


@dataclass
class EvalResult:
    n_problems: int
    samples_per_problem: int
    pass_at_1: float
    pass_at_k: float
    k: int
    mean_reward: float
    stderr_pass_at_1: float  # binomial standard error over problems: the eval's own noise

    def row(self) -> dict:
        return {"eval/pass@1": self.pass_at_1, f"eval/pass@{self.k}": self.pass_at_k,
                "eval/mean_reward": self.mean_reward, "eval/stderr": self.stderr_pass_at_1,
                "eval/n": self.n_problems}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples (out of n, c correct) is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def evaluate(engine, scorer, dataset, *, answer_column: str, k: int = 1, temperature: float = 0.0,
             max_tokens: int = 64, seed: int = 1234, correct_at: float = 1.0, primary: str | None = None,
             stop: tuple[str, ...] = ()) -> EvalResult:
    """Sample k completions per held-out prompt and score them exactly as training does.

    answer_column: the run's `data.answer_column` (also passed to rewards as `answer`).
    """
    from rewards import score_completions

    rows = dataset.to_list()
    sampling = SamplingConfig(temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop)
    completions = engine.generate([r["prompt"] for r in rows], group_size=k, sampling=sampling)
    res = score_completions(scorer, rows, completions, k, answer_column)
    name = primary or next(iter(res.per_function))
    correct: list[list[bool]] = [[] for _ in rows]  # [problems][k]
    for c, s in zip(completions, res.per_function[name]):
        correct[c.prompt_index].append(s is not None and s >= correct_at)
    per_problem = [sum(c) / len(c) for c in correct]
    p1 = sum(per_problem) / len(rows)
    pk = sum(pass_at_k(len(c), sum(c), k) for c in correct) / len(rows)
    stderr = math.sqrt(max(p1 * (1 - p1), 1e-12) / len(rows))
    return EvalResult(len(rows), k, p1, pk, k, sum(res.total) / len(res.total), stderr)


def eval_cli(args) -> int:
    """`grpo eval --model M --task T --n N --k K [--config C]`: data, rewards (hidden paths, timeouts, fault
    scores) and scoring exactly as `grpo train C` builds them; the task and sizes from the command line."""
    from grpo.config_io import load_config
    from grpo.data import source_dir
    from grpo.models.loader import resolve_model
    from grpo.run_setup import load_run_data
    from rewards import build_scorer
    from rollouts import make_engine

    cfg = load_config(args.config)  # no --config: the defaults `grpo train` would use
    cfg.data.source, cfg.data.eval_size, cfg.data.train_size = args.task, args.n, max(args.n, 10)
    task = load_run_data(cfg)
    temperature = args.temperature if args.temperature is not None else (0.0 if args.k == 1 else 1.0)
    model_dir = resolve_model(args.model)
    engine = make_engine(args.engine, model_dir, max_model_len=cfg.rollout.max_model_len, seed=args.seed)
    try:
        with build_scorer(cfg.rewards, source_dir(cfg.data), cfg.train.output_dir) as scorer:
            res = evaluate(engine, scorer, task.eval, answer_column=cfg.data.answer_column, k=args.k,
                           temperature=temperature, max_tokens=cfg.rollout.max_tokens, seed=args.seed,
                           stop=tuple(cfg.rollout.stop))
    finally:
        engine.shutdown()
    print(f"{task.description}")
    print(f"model {args.model}: pass@1 {res.pass_at_1:.3f} ± {res.stderr_pass_at_1:.3f} | "
          f"pass@{res.k} {res.pass_at_k:.3f} | mean reward {res.mean_reward:.3f} | "
          f"{res.n_problems} problems x {res.samples_per_problem} samples, T={temperature}, seed {args.seed}")
    return 0
