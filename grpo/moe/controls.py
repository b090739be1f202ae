"""Router controls: freeze the router, compute router logits in float32.

Precision in the transformers v5 routers (read from the modeling code):
- Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE: the logits linear runs in the
  *model* dtype (`F.linear(hidden, weight)`); only the softmax is float32. In a
  bf16 model two near-tied experts can swap from bf16 rounding alone.
- GPT-OSS: linear and softmax both in the model dtype.
- DeepSeek-V3: already float32 (`F.linear(hidden.float(), weight.float())`).

`force_router_fp32` keeps the router weight in float32 (a small fp32 master copy:
E x H per layer) and casts the router's input to float32 with a pre-hook, so the
logits are computed in float32 end to end. Call it *after* any `model.to(dtype)`,
which would cast the weight back. A float32 model needs nothing (no-op).
The optimizer must be built after `freeze_router` (or skip params without grad).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from grpo.moe.routers import moe_routers

_ALREADY_FP32 = {"DeepseekV3TopkRouter"}


def freeze_router(model: nn.Module) -> list[str]:
    """requires_grad=False on every MoE router parameter; returns their names."""
    frozen = []
    for r in moe_routers(model):
        for pname, p in r.module.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{r.name}.{pname}")
    return frozen


def _cast_input_fp32(module: nn.Module, args: tuple) -> tuple:
    (hidden, *rest) = args
    return (hidden.float(), *rest)


def force_router_fp32(model: nn.Module) -> dict[str, str]:
    """Make every router compute its logits in float32; returns {router: what was done}."""
    report: dict[str, str] = {}
    for r in moe_routers(model):
        if type(r.module).__name__ in _ALREADY_FP32:
            report[r.name] = "already float32 (the router casts itself)"
            continue
        if all(p.dtype == torch.float32 for p in r.module.parameters()) and _model_dtype(model) == torch.float32:
            report[r.name] = "float32 model: nothing to do"
            continue
        r.module.float()
        if not getattr(r.module, "_grpo_fp32_hook", False):
            r.module.register_forward_pre_hook(_cast_input_fp32)
            r.module._grpo_fp32_hook = True
        report[r.name] = "forced float32 (weight kept in float32, input cast)"
    return report


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def apply_router_controls(model: nn.Module, moe_cfg: Any) -> dict[str, Any]:
    """Apply `MoEConfig.freeze_router` / `router_fp32` to a loaded policy (before building the optimizer)."""
    summary: dict[str, Any] = {}
    if getattr(moe_cfg, "router_fp32", False):
        summary["router_fp32"] = force_router_fp32(model)
    if getattr(moe_cfg, "freeze_router", False):
        summary["frozen"] = freeze_router(model)
    return summary
