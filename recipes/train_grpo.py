"""The GRPO loop, top to bottom. `grpo train CONFIG.yaml` runs `main(cfg)`.

    for each step:
      prompts  -> engine.generate(prompts, G)          B*G completions (+ routed experts)
               -> scorer(prompts, completions, ...)     B*G rewards + health metrics
               -> group advantages                      [B, G]
               -> policy_update (packed, mu iterations)  loss / KL / clip metrics
               -> engine.update_weights(policy)         next step samples the new policy
               -> metrics + checkpoint

Everything before the first generation is validation: data, rewards, context
length and model loading fail with a clear message before heavy work starts.
Every piece is built by a function that returns it; `main` keeps them and puts
them into one frozen `Run`, which the step functions read.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from grpo.advantages import compute_advantages
from grpo.batch import RolloutBatch
from grpo.checkpoint import latest_checkpoint, save_checkpoint
from grpo.config import RunConfig
from grpo.config_io import save_config, to_dict
from grpo.data import source_dir
from grpo.distributed import Dist
from grpo.dynamic_sampling import refill_zero_variance_groups
from grpo.errors import GrpoError
from grpo.evaluate import evaluate
from grpo.metrics import MetricsSink, merge_metrics, process_memory
from grpo.run_setup import (
    Run,
    build_policy,
    build_sampler,
    check_context,
    check_parallel_config,
    close_quietly,
    count_nonfinite,
    engine_failure,
    load_run_data,
    maybe_resume,
    run_dir_for,
    sampling_config,
    seed_everything,
    start_engine,
    sync_weights,
    trainer_temperature,
    wants_routing,
)
from grpo.update import policy_update
from rewards import RewardResult, RewardScorer, build_scorer, score_completions
from rollouts.types import Completion, Engine

log = logging.getLogger("grpo")


def generate_and_score(cfg: RunConfig, engine: Engine, scorer: RewardScorer, train, prompt_ids: list[int],
                       step: int) -> tuple[list[Completion], RewardResult, float, float]:
    """One rollout round: B prompts (rows of `train`) -> B*G scored completions
    (prompt_index = position in prompt_ids). Returns (completions, rewards, generate s, reward s)."""
    rows, G, t0 = [train[i] for i in prompt_ids], cfg.rollout.group_size, time.perf_counter()
    with engine_failure(step, "generate"):
        if cfg.rollout.seed_per_prompt:  # sampling independent of batch composition and world size
            completions = []
            for b, (pid, row) in enumerate(zip(prompt_ids, rows)):
                group = engine.generate([row["prompt"]], G, sampling_config(cfg, step, pid),
                                        return_routing=wants_routing(cfg))
                completions += [dataclasses.replace(c, prompt_index=b) for c in group]
        else:
            completions = engine.generate([r["prompt"] for r in rows], G, sampling_config(cfg, step),
                                          return_routing=wants_routing(cfg))
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewards = score_completions(scorer, rows, completions, G, cfg.data.answer_column)
    return completions, rewards, t_gen, time.perf_counter() - t0


@dataclass(frozen=True)
class GlobalAdvantages:
    """Advantages normalised over the global batch (all ranks), and this rank's share."""

    local: torch.Tensor  # [N_local] this rank's completions
    all: torch.Tensor  # [N] every rank's, rank order
    scores: torch.Tensor  # [N] every rank's rewards
    groups: list[tuple[int, int]]  # [N] (rank, local group) ids


def global_advantages(cfg: RunConfig, dist: Dist, scores: torch.Tensor) -> GlobalAdvantages:
    """Rewards are all-gathered (a few floats per completion), so group- and batch-level
    statistics are those a single process would compute on the same global batch."""
    G = cfg.rollout.group_size
    per_rank = dist.gather(scores.tolist())
    all_scores = torch.tensor([x for part in per_rank for x in part], dtype=torch.float32)  # [N]
    all_groups = [(r, i // G) for r, part in enumerate(per_rank) for i in range(len(part))]
    adv = compute_advantages(all_scores, all_groups, cfg.algo.advantage)  # [N]
    start = sum(len(part) for part in per_rank[:dist.rank])
    return GlobalAdvantages(adv[start:start + len(scores)], adv, all_scores, all_groups)


def draw_batch(run: Run, step: int) -> tuple[list[int], list[Completion], RewardResult, torch.Tensor, dict, float,
                                             float]:
    """This rank's prompts, completions and rewards for the step (DAPO dynamic sampling refills
    zero-variance groups). Returns (prompt ids, completions, first round's rewards, scores [B*G],
    dynamic-sampling metrics, generate s, reward s)."""
    cfg, G = run.cfg, run.cfg.rollout.group_size
    prompt_ids = run.dist.shard(run.sampler.next_batch(cfg.train.prompts_per_step))  # whole groups per rank
    completions, rewards, t_gen, t_rew = generate_and_score(cfg, run.engine, run.scorer, run.task.train,
                                                            prompt_ids, step)
    scores = torch.tensor(rewards.total, dtype=torch.float32)  # [B*G]
    ds_metrics: dict = {}
    if cfg.algo.dynamic_sampling:  # DAPO: replace zero-variance groups, bounded extra rounds
        def draw(n: int):
            ids = run.sampler.next_batch(n)
            comps, res, _, _ = generate_and_score(cfg, run.engine, run.scorer, run.task.train, ids, step)
            return ids, comps, torch.tensor(res.total, dtype=torch.float32)

        prompt_ids, completions, scores, ds_metrics = refill_zero_variance_groups(
            prompt_ids, completions, scores, G, cfg.algo.dynamic_sampling_max_rounds, draw)
    return prompt_ids, completions, rewards, scores, ds_metrics, t_gen, t_rew


def train_step(run: Run, step: int) -> dict:
    """One GRPO step: sample, score, advantages, update, weight sync. Returns the step's metrics."""
    cfg, G, policy = run.cfg, run.cfg.rollout.group_size, run.policy
    prompt_ids, completions, rewards, scores, ds_metrics, t_gen, t_rew = draw_batch(run, step)
    adv = global_advantages(cfg, run.dist, scores)
    ordered_ids = [pid for part in run.dist.gather(prompt_ids) for pid in part]
    for b, pid in enumerate(ordered_ids):  # every rank records the same pass rates: samplers stay in step
        run.sampler.record(pid, float((adv.scores[b * G:(b + 1) * G] >= 1.0).float().mean()))

    batch = RolloutBatch.from_completions(completions, adv.local)
    t0 = time.perf_counter()
    hook = policy.moe.forward_hook(batch, step) if policy.moe is not None else None  # MoE: KL diagnostics run here
    t_diag = time.perf_counter() - t0
    update = policy_update(policy.model, policy.optimizer, policy.scheduler, batch, cfg.algo, cfg.optim,
                           ref_model=policy.ref_model, temperature=trainer_temperature(cfg), forward_hook=hook,
                           max_tokens=cfg.rollout.max_tokens, force_old_pass=cfg.moe.routing_replay == "r2",
                           dist=run.dist)  # reports lr (the rate this update used) and time/train

    t0 = time.perf_counter()
    with engine_failure(step, "update_weights"):
        sync_weights(cfg, run.engine, policy.model, run.dist)
    t_sync = time.perf_counter() - t0

    loop = {
        "reward/mean": float(adv.scores.mean()), "reward/std": float(adv.scores.std()),  # the global batch
        "advantage/abs_mean": float(adv.all.abs().mean()),
        "advantage/max": float(adv.all.max()), "advantage/min": float(adv.all.min()),
        "completion/mean_tokens": sum(len(c.completion_ids) for c in completions) / len(completions),
        "completion/frac_truncated": sum(c.truncated for c in completions) / len(completions),
        "time/generate": t_gen, "time/reward": t_rew, "time/sync": t_sync, "time/moe_diagnostics": t_diag,
    }
    moe = policy.moe.step_metrics(step) if policy.moe is not None else {}
    return merge_metrics(update, rewards.metrics, ds_metrics, loop, moe, process_memory())


def run_eval(run: Run, step: int, label: str) -> dict:
    """Held-out evaluation on the main process (the others wait)."""
    if not run.is_main:
        run.dist.barrier()
        return {}
    cfg, t = run.cfg, run.cfg.train
    res = evaluate(run.engine, run.scorer, run.task.eval, answer_column=cfg.data.answer_column,
                   k=t.eval_samples, temperature=t.eval_temperature, max_tokens=cfg.rollout.max_tokens,
                   seed=t.seed + 17, stop=tuple(cfg.rollout.stop))
    log.info("%s held-out: pass@1 %.3f ± %.3f on %d problems", label, res.pass_at_1,
             res.stderr_pass_at_1, res.n_problems)
    run.dist.barrier()
    return res.row()


def save(run: Run, step: int, streak: int) -> Path:
    p = run.policy
    extra = {"sampler": run.sampler.state(), "nonfinite_streak": streak}
    return save_checkpoint(run.run_dir, step, p.model, p.tokenizer, p.optimizer, p.scheduler, extra,
                           run.cfg.train.keep_checkpoints)


def _log_stop(run_dir: Path, step: int, e: Exception) -> None:
    last = latest_checkpoint(run_dir)
    log.error("training stopped in step %d (%s). %s", step, type(e).__name__,
              f"Last good checkpoint: {last}; rerun with train.resume=true to continue from it." if last
              else "No checkpoint was written yet (train.save_every).")


def train(run: Run, sink: MetricsSink, start: int, streak: int) -> tuple[int, Optional[Path], int]:
    """Steps start+1 .. train.steps. Returns (step, folder) of the last checkpoint written (-1, None
    if none) and the count of consecutive non-finite updates at the end."""
    cfg = run.cfg
    last_saved: tuple[int, Optional[Path]] = (-1, None)
    bar = tqdm(range(start + 1, cfg.train.steps + 1), desc="GRPO", disable=not run.is_main,
               initial=start, total=cfg.train.steps)
    for step in bar:
        try:
            metrics = train_step(run, step)
            streak = count_nonfinite(metrics, streak, cfg.optim.max_nonfinite_steps)
        except Exception as e:
            _log_stop(run.run_dir, step, e)
            raise
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
            metrics = merge_metrics(metrics, run_eval(run, step, f"step {step}"))
        sink.log(step, metrics)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", loss=f"{metrics.get('loss', math.nan):.4f}",
                        kl_rollout=f"{metrics.get('rollout_kl_k3', math.nan):.1e}")
        if run.is_main and cfg.train.save_every and step % cfg.train.save_every == 0:
            last_saved = (step, save(run, step, streak))
    return *last_saved, streak


def main(cfg: RunConfig, engine: Optional[Engine] = None) -> dict:
    """Run GRPO as configured; return a summary (before/after eval, final checkpoint).

    engine: an already running generation engine for this model (e.g. shared by
    several runs or tests); it is used as is and not shut down at the end.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dist = Dist.from_env()
    check_parallel_config(cfg, dist)
    seed_everything(cfg.train.seed)  # the same on every rank: same prompts, same initial weights
    run_dir = run_dir_for(cfg)
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")  # the resolved config, next to what it produces
    task = load_run_data(cfg)  # data problems surface here, before any model loads
    with ExitStack() as stack:  # closed in reverse: engine (if ours), then the reward workers
        scorer = build_scorer(cfg.rewards, source_dir(cfg.data), cfg.train.output_dir)
        stack.callback(close_quietly, scorer)
        policy = build_policy(cfg)
        task = check_context(cfg, policy, task)
        sampler = build_sampler(cfg, task.train)
        start, streak = maybe_resume(cfg, run_dir, policy, sampler)
        if engine is None:
            engine = start_engine(cfg, policy.model_dir, dist)
            stack.callback(close_quietly, engine)
            if cfg.train.resume:  # the engine loaded the base weights: push the resumed ones
                sync_weights(cfg, engine, policy.model, dist)
        else:
            sync_weights(cfg, engine, policy.model, dist)  # a running engine may hold another run's weights
        run = Run(cfg, dist, run_dir, task, scorer, policy, sampler, engine)

        sink = MetricsSink(run_dir, cfg.train.tensorboard, cfg.train.wandb, to_dict(cfg),
                           enabled=run.is_main, append=start > 0, resume_step=start)
        summary: dict = {"run_dir": str(run_dir), "data": task.description}
        if start == 0:
            summary["before"] = run_eval(run, 0, "before")
            if summary["before"]:
                sink.log(0, summary["before"])
        last_step, last_folder, streak = train(run, sink, start, streak)
        summary["after"] = run_eval(run, cfg.train.steps, "after")
        if summary["after"]:
            sink.log(cfg.train.steps, summary["after"])
        sink.close()
        if run.is_main:
            if last_step != cfg.train.steps:  # the final step's checkpoint, unless the loop just wrote it
                last_folder = save(run, cfg.train.steps, streak)
            summary["checkpoint"] = str(last_folder)
            if cfg.train.plots:
                from grpo.plots import plot_run  # matplotlib: only when plots are asked for

                summary["plots"] = [str(p) for p in plot_run(run_dir)]
        return summary


if __name__ == "__main__":
    import sys

    from grpo.config_io import load_config

    try:
        main(load_config(sys.argv[1] if len(sys.argv) > 1 else None, sys.argv[2:]))
    except GrpoError as e:  # RewardError included
        raise SystemExit(f"error: {e}")
