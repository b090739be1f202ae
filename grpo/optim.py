"""Optimiser, schedule, LoRA wrapping, gradient checkpointing, reference model."""

from __future__ import annotations

import copy
import math

import torch

from grpo.config import LoraConfig, ModelConfig, OptimConfig
from grpo.errors import ConfigError


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW + its warm-up/cosine schedule over `total_steps` trainer steps (train.steps)."""
    opt = build_adamw(model, cfg)
    return opt, build_scheduler(opt, cfg, total_steps)


def build_adamw(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (all weights, or the LoRA adapters)."""
    params = trainable_parameters(model)
    if not params:
        raise ConfigError("the model has no trainable parameters (frozen everything? LoRA targets matched nothing?)")
    check_adamw_options(cfg)
    betas = tuple(cfg.betas)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)  # type: ignore[arg-type]


def check_adamw_options(cfg: OptimConfig) -> None:
    """The ranges torch.optim.AdamW would refuse with a bare ValueError, as ConfigErrors naming the key."""
    if len(cfg.betas) != 2:
        raise ConfigError(f"optim.betas must have two values, got {cfg.betas}")
    if not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise ConfigError(f"optim.betas must each be in [0, 1), got {cfg.betas}")
    if not cfg.lr >= 0.0:  # `not >=` also refuses NaN
        raise ConfigError(f"optim.lr must be >= 0, got {cfg.lr}")
    if not cfg.weight_decay >= 0.0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {cfg.weight_decay}")


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Learning-rate factor after `step` optimiser steps: linear warm-up, then constant or cosine to min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ConfigError(f"optim.schedule: unknown schedule {schedule!r}; choose constant or cosine")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR; `policy_update` steps it once per trainer step (not per inner iteration),
    so warmup_steps and total_steps count trainer steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, cfg.warmup_steps, total_steps, cfg.schedule)
    )


def apply_lora(model: torch.nn.Module, cfg: LoraConfig):
    """Wrap with peft LoRA adapters; only the adapters train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        raise ConfigError(f"lora.target_modules {missing} match no module of {type(model).__name__}")
    if "lm_head" in cfg.target_modules:
        raise ConfigError("LoRA on lm_head is not supported by the chunked log-prob head: "
                          "remove it from target_modules")
    pcfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, pcfg)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in backward (non-reentrant: works with frozen inputs and LoRA)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "config"):
        model.config.use_cache = False


def disable_dropout(model: torch.nn.Module) -> None:
    """RL log-prob ratios assume a deterministic forward (the update reuses detached train log-probs)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):  # read by the attention modules at call time
            m.attention_dropout = 0.0
    cfg = getattr(model, "config", None)
    for attr in ("attention_dropout", "hidden_dropout", "dropout"):
        if cfg is not None and isinstance(getattr(cfg, attr, None), float):
            setattr(cfg, attr, 0.0)


def prepare_model(model: torch.nn.Module, cfg: ModelConfig):
    """Dropout off, LoRA if enabled, gradient checkpointing if enabled. Returns the (maybe wrapped) model."""
    disable_dropout(model)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def make_reference_model(policy: torch.nn.Module) -> torch.nn.Module:
    """Frozen deep copy for the KL term. Only for beta > 0 without LoRA (LoRA disables its adapters instead)."""
    if hasattr(policy, "disable_adapter"):
        raise ValueError("a LoRA policy is its own reference (adapters disabled): do not copy it")
    ref = copy.deepcopy(policy)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
