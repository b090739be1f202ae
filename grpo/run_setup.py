"""Building blocks a recipe wires together: run state, model/engine/reward setup,
resume, weight sync, MoE hooks. The loop itself stays in the recipe."""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo.config import RunConfig
from grpo.data import TaskData, load_task
from grpo.errors import DataError, EngineError, GrpoError
from rollouts.types import SamplingConfig

log = logging.getLogger("grpo")

# Which dataset columns each built-in reward reads (checked before any model loads).
REWARD_COLUMNS: dict[str, list[list[str]]] = {
    "math_accuracy": [["answer"]],
    "code_tests": [["test", "entry_point"], ["test_list"], ["inputs", "outputs"]],
}


@contextmanager
def engine_failure(step: int, what: str):
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


def check_parallel_config(cfg: RunConfig, dist) -> None:
    from grpo.errors import ConfigError

    if not dist.enabled:
        return
    if cfg.train.prompts_per_step % dist.world:
        raise ConfigError(f"train.prompts_per_step={cfg.train.prompts_per_step} must be a multiple of the "
                          f"number of processes ({dist.world}): each rank trains whole groups.")
    if cfg.algo.dynamic_sampling:
        raise ConfigError("algo.dynamic_sampling is not supported with several processes yet; run it in one.")


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.train.output_dir) / cfg.train.run_name


def load_run_data(cfg: RunConfig) -> TaskData:
    task = load_task(cfg.data, needed_columns=[cfg.data.answer_column]
                     if any(f.name == "math_accuracy" for f in cfg.rewards.functions) else [])
    cols = set(task.train.column_names) | {"answer"}
    for fn in cfg.rewards.functions:
        options = REWARD_COLUMNS.get(fn.name)
        if options and not any(all(c in cols for c in opt) for opt in options):
            raise DataError(f"reward {fn.name} needs columns {' or '.join(map(str, options))}; the data has "
                            f"{sorted(task.train.column_names)}")
    return task


def build_scorer(cfg: RunConfig):
    from rewards import RewardScorer, RewardSpec

    specs = [RewardSpec(name=f.name, weight=f.weight, kwargs=_reward_kwargs(cfg, f.name, f.kwargs),
                        timeout_s=f.timeout_s, fault_score=f.fault_score) for f in cfg.rewards.functions]
    return RewardScorer(specs, num_workers=cfg.rewards.num_workers, on_fault=cfg.rewards.on_fault)


def _reward_kwargs(cfg: RunConfig, name: str, kwargs: dict) -> dict:
    """code_tests also covers the dataset's folder and the run's output folder inside its sandbox: a
    completion must not read its own expected answer (data file) or the trainer's checkpoints."""
    kwargs = dict(kwargs)
    if name == "code_tests":
        hide = [cfg.train.output_dir]
        if Path(cfg.data.source).exists():
            hide.append(str(Path(cfg.data.source).resolve().parent))
        kwargs["hide_paths"] = [*kwargs.get("hide_paths", []), *hide]
    return kwargs


def sampling_config(cfg: RunConfig, step: int, prompt_id: int | None = None) -> SamplingConfig:
    r = cfg.rollout
    # One seed per step (and prompt): a resumed run samples exactly what the uninterrupted run would.
    seed = cfg.train.seed * 100_003 + step
    if prompt_id is not None:
        seed = seed * 1_000_003 + prompt_id
    return SamplingConfig(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_tokens=r.max_tokens,
                          stop=tuple(r.stop), seed=seed)


@dataclass
class RunState:
    cfg: RunConfig
    run_dir: Path
    task: TaskData
    scorer: Any
    model_dir: Path | None = None
    tokenizer: Any = None
    policy: Any = None
    ref_model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    engine: Any = None
    sampler: Any = None
    dist: Any = None  # grpo.distributed.Dist
    nonfinite_streak: int = 0
    moe: Any = None
    owns_engine: bool = True
    last_advantages: Any = None  # [N] advantages of the global batch of the last step

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    @property
    def shared_server(self) -> bool:
        """All ranks generate through one server: only rank 0 pushes weights."""
        return self.cfg.rollout.engine == "vllm_server"

    @property
    def temperature(self) -> float:
        a = self.cfg.algo
        return a.temperature if a.temperature is not None else self.cfg.rollout.temperature

    @property
    def wants_routing(self) -> bool:
        # r3 replays the engine's routes, so it implies recording them.
        return self.cfg.moe.routing_replay == "r3" or self.cfg.rollout.return_routing

    def forward_hook(self, batch, step: int):
        return self.moe.forward_hook(batch, step) if self.moe is not None else None

    def moe_metrics(self, step: int) -> dict:
        return self.moe.step_metrics(step) if self.moe is not None else {}

    def count_nonfinite(self, metrics: dict) -> None:
        if metrics.get("nonfinite", 0):
            self.nonfinite_streak += 1
            log.warning("non-finite loss/gradient: update skipped (%d in a row)", self.nonfinite_streak)
            if self.nonfinite_streak >= self.cfg.optim.max_nonfinite_steps:
                raise GrpoError(f"{self.nonfinite_streak} consecutive non-finite updates: stopping. Lower "
                                "optim.lr, enable optim.grad_clip, or check the rewards for NaN/Inf.")
        else:
            self.nonfinite_streak = 0

    def sync_weights(self) -> None:
        from grpo.weights import policy_weights_for_engine

        if self.is_main or not self.shared_server:
            self.engine.update_weights(policy_weights_for_engine(self.policy))
        if self.dist is not None:
            self.dist.barrier()  # nobody samples from a shared server before the push is done

    def extra_state(self) -> dict:
        return {"sampler": self.sampler.state(), "nonfinite_streak": self.nonfinite_streak}

    def close(self) -> None:
        for obj in (self.engine if self.owns_engine else None, self.scorer):
            if obj is None:
                continue
            try:
                (obj.shutdown if hasattr(obj, "shutdown") else obj.close)()
            except Exception as e:  # closing must not hide the error that got us here
                log.warning("error while closing %s: %s", type(obj).__name__, e)


def build_policy(state: RunState) -> None:
    from grpo.models.loader import load_causal_lm, load_tokenizer, resolve_model
    from grpo.optim import build_optimizer, make_reference_model, prepare_model

    cfg = state.cfg
    state.model_dir = resolve_model(cfg.model.name)
    state.tokenizer = load_tokenizer(state.model_dir)
    policy = load_causal_lm(state.model_dir, cfg.model.dtype)
    state.policy = prepare_model(policy, cfg.model)
    state.moe = _moe_controller(state.policy, state)
    if cfg.algo.beta > 0 and not cfg.model.lora.enabled:
        state.ref_model = make_reference_model(state.policy)
    state.optimizer, state.scheduler = build_optimizer(state.policy, cfg.optim, cfg.train.steps)


def build_sampler(state: RunState) -> None:
    from grpo.sampler import PromptSampler

    cfg, train = state.cfg, state.task.train
    state.sampler = PromptSampler(len(train), seed=cfg.data.seed, curriculum=cfg.data.curriculum,
                                  difficulty=train["difficulty"] if "difficulty" in train.column_names else None)


def _moe_controller(policy, state: RunState):
    from grpo.moe_controller import MoEController, is_moe

    cfg = state.cfg
    if not is_moe(policy, needs_hooks=cfg.moe.routing_replay != "none"):
        if cfg.moe.routing_replay != "none":
            raise GrpoError(f"moe.routing_replay={cfg.moe.routing_replay} needs an MoE policy; "
                            f"{cfg.model.name} is dense. Set moe.routing_replay=none.")
        return None
    return MoEController(policy, cfg.moe, state.wants_routing, state.temperature,
                         cfg.optim.micro_batch_tokens, cfg.optim.logprob_chunk)


def check_context(state: RunState) -> None:
    """Every prompt + max_tokens must fit the engine's context: checked before the engine starts."""
    from rollouts.prompts import encode_prompts

    r = state.cfg.rollout
    limit = r.max_model_len - r.max_tokens
    model_max = getattr(state.policy.config, "max_position_embeddings", None)
    if model_max is not None and r.max_model_len > model_max:
        raise DataError(f"rollout.max_model_len={r.max_model_len} exceeds the model's context ({model_max}).")
    for split in ("train", "eval"):
        ds = getattr(state.task, split)
        lengths = [len(ids) for ids in encode_prompts(state.tokenizer, ds["prompt"])]
        too_long = [i for i, n in enumerate(lengths) if n > limit]
        if not too_long:
            continue
        worst = max(too_long, key=lengths.__getitem__)
        if not state.cfg.data.drop_long_prompts or len(too_long) == len(lengths):
            raise DataError(
                f"{split} prompt #{worst} has {lengths[worst]} tokens ({len(too_long)} of {len(lengths)} prompts too "
                f"long); with rollout.max_tokens={r.max_tokens} it does not fit rollout.max_model_len="
                f"{r.max_model_len}. Raise max_model_len, shorten prompts, or set data.drop_long_prompts=true."
            )
        log.warning("dropping %d of %d %s prompts longer than %d tokens", len(too_long), len(lengths), split, limit)
        keep = sorted(set(range(len(lengths))) - set(too_long))
        setattr(state.task, split, ds.select(keep))


def maybe_resume(state: RunState) -> int:
    from grpo.checkpoint import load_latest_checkpoint

    if not state.cfg.train.resume:
        return 0
    found = load_latest_checkpoint(state.run_dir, state.policy, state.optimizer, state.scheduler)
    if found is None:
        log.info("resume requested but %s has no checkpoint: starting from scratch", state.run_dir)
        return 0
    ckpt, saved = found  # the newest one that loads: a corrupt latest falls back to the one before
    state.sampler.load_state(saved["extra"]["sampler"])
    state.nonfinite_streak = saved["extra"].get("nonfinite_streak", 0)
    log.info("resumed from %s (step %d)", ckpt, saved["step"])
    return int(saved["step"])


def build_engine(state: RunState, engine=None) -> None:
    from rollouts import make_engine

    r, cfg = state.cfg.rollout, state.cfg
    if engine is not None:
        state.engine, state.owns_engine = engine, False
        state.sync_weights()  # the engine may hold another run's weights
        return
    n_seqs = max(cfg.train.prompts_per_step * r.group_size, 8)
    opts = dict(max_model_len=r.max_model_len, max_num_seqs=n_seqs, seed=cfg.train.seed, kv_cache_gb=r.kv_cache_gb)
    dist = state.dist
    if r.engine == "vllm_server" and r.server_url is None and dist is not None and dist.enabled:
        # One shared server for all ranks: rank 0 starts it, the others connect to its URL.
        state.engine = make_engine(r.engine, state.model_dir, **opts) if dist.is_main else None
        url = dist.gather(state.engine.url if dist.is_main else None)[0]
        if not dist.is_main:
            state.engine = make_engine(r.engine, state.model_dir, server_url=url, **opts)
    else:
        state.engine = make_engine(r.engine, state.model_dir, server_url=r.server_url, **opts)
    if state.cfg.train.resume:  # the engine loaded the base weights: push the resumed ones
        state.sync_weights()
    _restore_torch_threads()


def _restore_torch_threads() -> None:
    """vLLM's CPU worker drops torch to 1 thread for serving; the colocated trainer wants them all."""
    import os

    import torch

    wanted = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
