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
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

from grpo.config import RunConfig
from grpo.config_io import to_dict
from grpo.errors import GrpoError
from grpo.run_setup import (RunState, build_engine, build_policy, build_sampler, build_scorer, check_context,
                            check_parallel_config, engine_failure,
                            load_run_data, maybe_resume, run_dir_for,
                            sampling_config, seed_everything)

log = logging.getLogger("grpo")


def generate_and_score(state: RunState, prompt_ids: list[int], step: int):
    """One rollout round: B prompts -> B*G scored completions (prompt_index = position in prompt_ids)."""
    from rewards import score_completions

    cfg, rows = state.cfg, [state.task.train[i] for i in prompt_ids]
    G, t0 = cfg.rollout.group_size, time.perf_counter()
    with engine_failure(step, "generate"):
        if cfg.rollout.seed_per_prompt:  # sampling independent of batch composition and world size
            completions = []
            for b, (pid, row) in enumerate(zip(prompt_ids, rows)):
                group = state.engine.generate([row["prompt"]], G, sampling_config(cfg, step, pid),
                                              return_routing=state.wants_routing)
                completions += [dataclasses.replace(c, prompt_index=b) for c in group]
        else:
            completions = state.engine.generate([r["prompt"] for r in rows], G, sampling_config(cfg, step),
                                                return_routing=state.wants_routing)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewards = score_completions(state.scorer, rows, completions, G, cfg.data.answer_column)
    return completions, rewards, t_gen, time.perf_counter() - t0


def global_advantages(state: RunState, scores, n_local_groups: int):
    """Advantages of this rank's completions, normalised over the global batch.

    Rewards are all-gathered (a few floats per completion), so group- and batch-level
    statistics are those a single process would compute on the same global batch.
    Returns (local advantages [N_local], global scores [N], global group ids [N]).
    """
    import torch

    from grpo.advantages import compute_advantages

    G = state.cfg.rollout.group_size
    per_rank = state.dist.gather(scores.tolist()) if state.dist is not None else [scores.tolist()]
    all_scores = torch.tensor([x for part in per_rank for x in part], dtype=torch.float32)  # [N]
    all_groups = [(r, i // G) for r, part in enumerate(per_rank) for i in range(len(part))]
    adv = compute_advantages(all_scores, all_groups, state.cfg.algo.advantage)  # [N]
    rank = state.dist.rank if state.dist is not None else 0
    start = sum(len(part) for part in per_rank[:rank])
    state.last_advantages = adv
    return adv[start:start + len(scores)], all_scores, all_groups


def train_step(state: RunState, step: int) -> dict:
    import torch

    from grpo.advantages import zero_variance_groups
    from grpo.batch import RolloutBatch
    from grpo.dynamic_sampling import refill_zero_variance_groups
    from grpo.metrics import process_memory
    from grpo.update import policy_update

    cfg, G = state.cfg, state.cfg.rollout.group_size
    global_ids = state.sampler.next_batch(cfg.train.prompts_per_step)  # identical on every rank
    prompt_ids = state.dist.shard(global_ids)  # whole groups per rank
    completions, rewards, t_gen, t_rew = generate_and_score(state, prompt_ids, step)
    scores = torch.tensor(rewards.total, dtype=torch.float32)  # [B*G]
    ds_metrics: dict = {}
    if cfg.algo.dynamic_sampling:  # DAPO: replace zero-variance groups, bounded extra rounds
        def draw(n: int):
            ids = state.sampler.next_batch(n)
            comps, res, _, _ = generate_and_score(state, ids, step)
            return ids, comps, torch.tensor(res.total, dtype=torch.float32)

        prompt_ids, completions, scores, ds_metrics = refill_zero_variance_groups(
            prompt_ids, completions, scores, G, cfg.algo.dynamic_sampling_max_rounds, draw)
    advantages, all_scores, all_groups = global_advantages(state, scores, len(prompt_ids))  # [B_local*G]
    ordered_ids = [pid for part in state.dist.gather(prompt_ids) for pid in part]
    for b, pid in enumerate(ordered_ids):  # every rank records the same pass rates: samplers stay in step
        state.sampler.record(pid, float((all_scores[b * G:(b + 1) * G] >= 1.0).float().mean()))

    batch = RolloutBatch.from_completions(completions, advantages)
    t0 = time.perf_counter()
    hook = state.forward_hook(batch, step)  # MoE: KL diagnostics run here, before the update
    t_diag = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = policy_update(state.policy, state.optimizer, state.scheduler, batch, cfg.algo, cfg.optim,
                            ref_model=state.ref_model, temperature=state.temperature,
                            forward_hook=hook, max_tokens=cfg.rollout.max_tokens,
                            force_old_pass=cfg.moe.routing_replay == "r2", dist=state.dist)
    t_train = time.perf_counter() - t0
    state.count_nonfinite(metrics)

    t0 = time.perf_counter()
    with engine_failure(step, "update_weights"):
        state.sync_weights()
    t_sync = time.perf_counter() - t0

    metrics.update(rewards.metrics)
    metrics.update(ds_metrics)
    metrics.update({
        "reward/mean": float(all_scores.mean()), "reward/std": float(all_scores.std()),
        "advantage/abs_mean": float(state.last_advantages.abs().mean()),
        "advantage/max": float(state.last_advantages.max()), "advantage/min": float(state.last_advantages.min()),
        "reward/frac_zero_var_groups": float(zero_variance_groups(all_scores, all_groups).float().mean()),
        "completion/mean_tokens": sum(len(c.completion_ids) for c in completions) / len(completions),
        "completion/frac_truncated": sum(c.truncated for c in completions) / len(completions),
        "time/generate": t_gen, "time/reward": t_rew, "time/train": t_train, "time/sync": t_sync,
        "time/moe_diagnostics": t_diag,
        "lr": state.scheduler.get_last_lr()[0],
    })
    metrics.update(state.moe_metrics(step))
    metrics.update(process_memory())
    return metrics


def run_eval(state: RunState, step: int, label: str) -> dict:
    """Held-out evaluation on the main process (the others wait)."""
    from grpo.evaluate import evaluate

    if not state.is_main:
        state.dist.barrier()
        return {}
    t = state.cfg.train
    res = evaluate(state.engine, state.scorer, state.task.eval, answer_column=state.cfg.data.answer_column,
                   k=t.eval_samples, temperature=t.eval_temperature, max_tokens=state.cfg.rollout.max_tokens,
                   seed=state.cfg.train.seed + 17, stop=tuple(state.cfg.rollout.stop))
    log.info("%s held-out: pass@1 %.3f ± %.3f on %d problems", label, res.pass_at_1,
             res.stderr_pass_at_1, res.n_problems)
    if state.dist is not None:
        state.dist.barrier()
    return res.row()


def _log_stop(run_dir: Path, step: int, e: Exception) -> None:
    from grpo.checkpoint import latest_checkpoint

    last = latest_checkpoint(run_dir)
    log.error("training stopped in step %d (%s). %s", step, type(e).__name__,
              f"Last good checkpoint: {last}; rerun with train.resume=true to continue from it." if last
              else "No checkpoint was written yet (train.save_every).")


def main(cfg: RunConfig, engine=None) -> dict:
    """Run GRPO as configured; return a summary (before/after eval, final checkpoint).

    engine: an already running generation engine for this model (e.g. shared by
    several runs or tests); it is used as is and not shut down at the end.
    """
    from tqdm import tqdm

    from grpo.checkpoint import save_checkpoint
    from grpo.metrics import MetricsSink

    from grpo.distributed import Dist

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dist = Dist.from_env()
    check_parallel_config(cfg, dist)
    seed_everything(cfg.train.seed)  # the same on every rank: same prompts, same initial weights
    run_dir = run_dir_for(cfg)
    task = load_run_data(cfg)  # data problems surface here, before any model loads
    scorer = build_scorer(cfg)
    state = RunState(cfg=cfg, run_dir=run_dir, task=task, scorer=scorer, dist=dist)
    try:
        build_policy(state)
        check_context(state)
        build_sampler(state)
        start = maybe_resume(state)
        build_engine(state, engine)
        sink = MetricsSink(run_dir, cfg.train.tensorboard, cfg.train.wandb, to_dict(cfg),
                           enabled=state.is_main, append=start > 0, resume_step=start)
        summary: dict = {"run_dir": str(run_dir), "data": task.description}
        if start == 0:
            summary["before"] = run_eval(state, 0, "before")
            if summary["before"]:
                sink.log(0, summary["before"])
        bar = tqdm(range(start, cfg.train.steps), desc="GRPO", disable=not state.is_main,
                   initial=start, total=cfg.train.steps)
        last_saved: tuple[int, Path | None] = (-1, None)
        for step in bar:
            try:
                metrics = train_step(state, step + 1)
            except Exception as e:
                _log_stop(run_dir, step + 1, e)
                raise
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
                metrics.update(run_eval(state, step + 1, f"step {step + 1}"))
            sink.log(step + 1, metrics)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", loss=f"{metrics.get('loss', math.nan):.4f}",
                            kl_rollout=f"{metrics.get('rollout_kl_k3', math.nan):.1e}")
            if state.is_main and cfg.train.save_every and (step + 1) % cfg.train.save_every == 0:
                last_saved = (step + 1, save_checkpoint(run_dir, step + 1, state.policy, state.tokenizer,
                                                        state.optimizer, state.scheduler, state.extra_state(),
                                                        cfg.train.keep_checkpoints))
        summary["after"] = run_eval(state, cfg.train.steps, "after")
        if summary["after"]:
            sink.log(cfg.train.steps, summary["after"])
        sink.close()
        if state.is_main:
            if last_saved[0] != cfg.train.steps:  # the final step's checkpoint, unless the loop just wrote it
                last_saved = (cfg.train.steps, save_checkpoint(
                    run_dir, cfg.train.steps, state.policy, state.tokenizer, state.optimizer, state.scheduler,
                    state.extra_state(), cfg.train.keep_checkpoints))
            summary["checkpoint"] = str(last_saved[1])
            if cfg.train.plots:
                from grpo.plots import plot_run

                summary["plots"] = [str(p) for p in plot_run(run_dir)]
        return summary
    finally:
        state.close()


if __name__ == "__main__":
    import sys

    from grpo.config_io import load_config

    try:
        main(load_config(sys.argv[1] if len(sys.argv) > 1 else None, sys.argv[2:]))
    except GrpoError as e:  # RewardError included
        raise SystemExit(f"error: {e}")
