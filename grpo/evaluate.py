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


def evaluate(engine, scorer, dataset, k: int = 1, temperature: float = 0.0, max_tokens: int = 64,
             seed: int = 1234, correct_at: float = 1.0, primary: str | None = None,
             stop: tuple[str, ...] = ()) -> EvalResult:
    """Sample k completions per held-out prompt and score them with the training rewards."""
    from grpo.run_setup import prompt_texts
    from rewards.types import GroupInfo

    rows = dataset.to_list()
    prompts = [r["prompt"] for r in rows]
    sampling = SamplingConfig(temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop)
    completions = engine.generate(prompts, group_size=k, sampling=sampling)
    columns = {c: [rows[x.prompt_index][c] for x in completions] for c in rows[0] if c != "prompt"}
    group = GroupInfo(group_ids=[x.prompt_index for x in completions], group_size=k,
                      finish_reasons=[x.finish_reason for x in completions],
                      completion_lengths=[len(x.completion_ids) for x in completions])
    res = scorer(prompt_texts(rows, completions), [x.text for x in completions], columns=columns, group=group)
    name = primary or next(iter(res.per_function))
    scores = [s if s is not None else 0.0 for s in res.per_function[name]]
    correct = [[scores[i] >= correct_at for i in group.members(g)] for g in range(len(rows))]
    per_problem = [sum(c) / len(c) for c in correct]
    p1 = sum(per_problem) / len(rows)
    pk = sum(pass_at_k(len(c), sum(c), k) for c in correct) / len(rows)
    stderr = math.sqrt(max(p1 * (1 - p1), 1e-12) / len(rows))
    return EvalResult(len(rows), k, p1, pk, k, sum(res.total) / len(res.total), stderr)


def eval_cli(args) -> int:
    """`grpo eval --model M --task T --n N --k K`."""
    from grpo.config import DataConfig, RewardsConfig
    from grpo.config_io import load_config
    from grpo.data import load_task
    from grpo.models.loader import resolve_model
    from rewards import RewardScorer, RewardSpec
    from rollouts import make_engine

    cfg = load_config(args.config) if args.config else None
    data_cfg = cfg.data if cfg else DataConfig()
    data_cfg.source, data_cfg.eval_size, data_cfg.train_size = args.task, args.n, max(args.n, 10)
    rewards_cfg = cfg.rewards if cfg else RewardsConfig()
    task = load_task(data_cfg)
    temperature = args.temperature if args.temperature is not None else (0.0 if args.k == 1 else 1.0)
    max_tokens = cfg.rollout.max_tokens if cfg else 64
    model_dir = resolve_model(args.model)
    specs = [RewardSpec(name=f.name, weight=f.weight, kwargs=f.kwargs) for f in rewards_cfg.functions]
    engine = make_engine(args.engine, model_dir, max_model_len=cfg.rollout.max_model_len if cfg else 512,
                         seed=args.seed)
    try:
        with RewardScorer(specs, num_workers=2, on_fault="count") as scorer:
            res = evaluate(engine, scorer, task.eval, k=args.k, temperature=temperature,
                           max_tokens=max_tokens, seed=args.seed)
    finally:
        engine.shutdown()
    print(f"{task.description}")
    print(f"model {args.model}: pass@1 {res.pass_at_1:.3f} ± {res.stderr_pass_at_1:.3f} | "
          f"pass@{res.k} {res.pass_at_k:.3f} | mean reward {res.mean_reward:.3f} | "
          f"{res.n_problems} problems x {res.samples_per_problem} samples, T={temperature}, seed {args.seed}")
    return 0
