"""Building blocks a recipe wires together: data, policy, sampler, engine, resume, weight sync.

Each builder takes what it needs and returns what it built; the recipe keeps the results
(as locals, then one frozen `Run`) and shows the order. The loop itself stays in the recipe.
"""

from __future__ import annotations

import logging
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from grpo.config import RunConfig
from grpo.data import TaskData, load_task
from grpo.distributed import Dist
from grpo.errors import ConfigError, DataError, EngineError, GrpoError
from rewards import check_columns, required_columns
from rollouts.types import Engine, SamplingConfig

if TYPE_CHECKING:  # types only: torch and transformers load when a policy is built
    import torch
    from transformers import PreTrainedTokenizerBase

    from grpo.moe_controller import MoEController
    from grpo.sampler import PromptSampler
    from rewards import RewardScorer

log = logging.getLogger("grpo")


@contextmanager
def engine_failure(step: int, what: str) -> Iterator[None]:
    """Whatever the engine raises besides our own errors means it failed (a crash, a dead server
    process): one EngineError naming the step, the engine's own error kept as the cause."""
    try:
        yield
    except GrpoError:
        raise
    except Exception as e:
        raise EngineError(f"the generation engine failed in {what} at step {step} ({type(e).__name__}: {e}). "
                          "Checkpoints written so far are kept: fix or restart the engine and rerun with "
                          "train.resume=true to continue from the last one.") from e


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_parallel_config(cfg: RunConfig, dist: Dist) -> None:
    if not dist.enabled:
        return
    if cfg.train.prompts_per_step % dist.world:
        raise ConfigError(f"train.prompts_per_step={cfg.train.prompts_per_step} must be a multiple of the "
                          f"number of processes ({dist.world}): each rank trains whole groups.")
    if cfg.algo.dynamic_sampling:
        raise ConfigError("algo.dynamic_sampling is not supported with several processes yet; run it in one.")


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.train.output_dir) / cfg.train.run_name


def trainer_temperature(cfg: RunConfig) -> float:
    return cfg.algo.temperature if cfg.algo.temperature is not None else cfg.rollout.temperature


def wants_routing(cfg: RunConfig) -> bool:
    # r3 replays the engine's routes, so it implies recording them.
    return cfg.moe.routing_replay == "r3" or cfg.rollout.return_routing


def load_run_data(cfg: RunConfig) -> TaskData:
    """The run's prompts, checked against the columns its rewards declare (before any model loads)."""
    task = load_task(cfg.data, needed_columns=required_columns(cfg.rewards, cfg.data.answer_column))
    check_columns(cfg.rewards, task.train.column_names, cfg.data.answer_column)
    return task


def sampling_config(cfg: RunConfig, step: int, prompt_id: int | None = None) -> SamplingConfig:
    r = cfg.rollout
    # One seed per step (and prompt): a resumed run samples exactly what the uninterrupted run would.
    seed = cfg.train.seed * 100_003 + step
    if prompt_id is not None:
        seed = seed * 1_000_003 + prompt_id
    return SamplingConfig(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_tokens=r.max_tokens,
                          stop=tuple(r.stop), seed=seed)


@dataclass(frozen=True)
class Policy:
    """The trained model and what updates it."""

    model_dir: Path
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module
    ref_model: Optional[torch.nn.Module]  # beta > 0 without LoRA (LoRA: the adapters disabled)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    moe: Optional[MoEController]  # None for a dense policy


@dataclass(frozen=True)
class Run:
    """Everything one training run holds, built once before the first step (the objects inside
    change as they train; which objects they are does not)."""

    cfg: RunConfig
    dist: Dist
    run_dir: Path
    task: TaskData
    scorer: RewardScorer
    policy: Policy
    sampler: PromptSampler
    engine: Engine

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


def build_policy(cfg: RunConfig) -> Policy:
    from grpo.models.loader import load_causal_lm, load_tokenizer, resolve_model
    from grpo.optim import build_optimizer, make_reference_model, prepare_model

    model_dir = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(model_dir)
    model = prepare_model(load_causal_lm(model_dir, cfg.model.dtype), cfg.model)
    moe = _moe_controller(model, cfg)
    ref = make_reference_model(model) if cfg.algo.beta > 0 and not cfg.model.lora.enabled else None
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.train.steps)
    return Policy(model_dir, tokenizer, model, ref, optimizer, scheduler, moe)


def _moe_controller(model: torch.nn.Module, cfg: RunConfig) -> Optional[MoEController]:
    from grpo.moe_controller import MoEController, is_moe

    if not is_moe(model, needs_hooks=cfg.moe.routing_replay != "none"):
        if cfg.moe.routing_replay != "none":
            raise GrpoError(f"moe.routing_replay={cfg.moe.routing_replay} needs an MoE policy; "
                            f"{cfg.model.name} is dense. Set moe.routing_replay=none.")
        return None
    return MoEController(model, cfg.moe, wants_routing(cfg), trainer_temperature(cfg),
                         cfg.optim.micro_batch_tokens, cfg.optim.logprob_chunk)


def build_sampler(cfg: RunConfig, train: Any) -> PromptSampler:
    from grpo.sampler import PromptSampler

    return PromptSampler(len(train), seed=cfg.data.seed, curriculum=cfg.data.curriculum,
                         difficulty=train["difficulty"] if "difficulty" in train.column_names else None)


def check_context(cfg: RunConfig, policy: Policy, task: TaskData) -> TaskData:
    """Every prompt + max_tokens must fit the engine's context: checked before the engine starts.
    Returns the task, without the long prompts when data.drop_long_prompts allows dropping them."""
    from rollouts.prompts import encode_prompts

    r = cfg.rollout
    limit = r.max_model_len - r.max_tokens
    model_max = getattr(policy.model.config, "max_position_embeddings", None)
    if model_max is not None and r.max_model_len > model_max:
        raise DataError(f"rollout.max_model_len={r.max_model_len} exceeds the model's context ({model_max}).")
    for split in ("train", "eval"):
        ds = getattr(task, split)
        lengths = [len(ids) for ids in encode_prompts(policy.tokenizer, ds["prompt"])]
        too_long = [i for i, n in enumerate(lengths) if n > limit]
        if not too_long:
            continue
        worst = max(too_long, key=lengths.__getitem__)
        if not cfg.data.drop_long_prompts or len(too_long) == len(lengths):
            raise DataError(
                f"{split} prompt #{worst} has {lengths[worst]} tokens ({len(too_long)} of {len(lengths)} prompts too "
                f"long); with rollout.max_tokens={r.max_tokens} it does not fit rollout.max_model_len="
                f"{r.max_model_len}. Raise max_model_len, shorten prompts, or set data.drop_long_prompts=true."
            )
        log.warning("dropping %d of %d %s prompts longer than %d tokens", len(too_long), len(lengths), split, limit)
        task = replace(task, **{split: ds.select(sorted(set(range(len(lengths))) - set(too_long)))})
    return task


def maybe_resume(cfg: RunConfig, run_dir: Path, policy: Policy, sampler: PromptSampler) -> tuple[int, int]:
    """Load the newest checkpoint that loads into policy and sampler (train.resume=true).
    Returns (step to continue after, consecutive non-finite updates at that step)."""
    from grpo.checkpoint import load_latest_checkpoint

    if not cfg.train.resume:
        return 0, 0
    found = load_latest_checkpoint(run_dir, policy.model, policy.optimizer, policy.scheduler)
    if found is None:
        log.info("resume requested but %s has no checkpoint: starting from scratch", run_dir)
        return 0, 0
    ckpt, saved = found  # a corrupt latest falls back to the one before
    sampler.load_state(saved["extra"]["sampler"])
    log.info("resumed from %s (step %d)", ckpt, saved["step"])
    return int(saved["step"]), int(saved["extra"].get("nonfinite_streak", 0))


def start_engine(cfg: RunConfig, model_dir: Path, dist: Dist) -> Engine:
    from rollouts import make_engine

    r = cfg.rollout
    n_seqs = max(cfg.train.prompts_per_step * r.group_size, 8)
    opts = dict(max_model_len=r.max_model_len, max_num_seqs=n_seqs, seed=cfg.train.seed, kv_cache_gb=r.kv_cache_gb)
    if r.engine == "vllm_server" and r.server_url is None and dist.enabled:
        # One shared server for all ranks: rank 0 starts it, the others connect to its URL.
        engine = make_engine(r.engine, model_dir, **opts) if dist.is_main else None
        url = dist.gather(engine.url if dist.is_main else None)[0]
        if not dist.is_main:
            engine = make_engine(r.engine, model_dir, server_url=url, **opts)
    else:
        engine = make_engine(r.engine, model_dir, server_url=r.server_url, **opts)
    _restore_torch_threads()
    return engine


def _restore_torch_threads() -> None:
    """vLLM's CPU worker drops torch to 1 thread for serving; the colocated trainer wants them all."""
    import torch

    wanted = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def sync_weights(cfg: RunConfig, engine: Engine, model: torch.nn.Module, dist: Dist) -> None:
    """Push the policy's weights to the engine. All ranks sharing one server: only rank 0 pushes."""
    from rollouts import policy_weights

    if dist.is_main or cfg.rollout.engine != "vllm_server":
        with policy_weights(model) as weights:
            engine.update_weights(weights)
    dist.barrier()  # nobody samples from a shared server before the push is done


def count_nonfinite(metrics: dict[str, float], streak: int, limit: int) -> int:
    """The new count of consecutive skipped (NaN/Inf) updates; stops the run at `limit`."""
    if not metrics.get("nonfinite", 0):
        return 0
    streak += 1
    log.warning("non-finite loss/gradient: update skipped (%d in a row)", streak)
    if streak >= limit:
        raise GrpoError(f"{streak} consecutive non-finite updates: stopping. Lower "
                        "optim.lr, enable optim.grad_clip, or check the rewards for NaN/Inf.")
    return streak


def close_quietly(obj: Any) -> None:
    """Shut an engine or scorer down; an error here must not hide the one that got us here."""
    try:
        (obj.shutdown if hasattr(obj, "shutdown") else obj.close)()
    except Exception as e:
        log.warning("error while closing %s: %s", type(obj).__name__, e)
