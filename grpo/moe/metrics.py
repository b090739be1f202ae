"""Per-step MoE observability: expert load, imbalance, router agreement, train-vs-rollout KL.

Call once per step on the step's tokens (concatenate the micro-batches' routes
and logprobs along the token axis first: the statistics are not averages of
per-micro-batch values).

Keys produced by `moe_step_metrics` (all floats; only those whose inputs were given):
- `moe/load/layer{l}/expert{e}`: share of layer l's routing assignments that went to
  expert e (sums to 1 over e; a token counts k times, once per pick).
- `moe/imbalance_max_over_mean`: max/mean expert load, averaged over layers
  (1 = perfectly balanced, E = everything on one expert); `moe/imbalance_max_layer`
  is the worst layer's value.
- `moe/load_entropy`: entropy of the load normalised by log E, averaged over layers
  (1 = uniform); `moe/dead_experts`: experts with zero load, summed over layers.
- `moe/router_agreement`: mean |rollout picks ∩ trainer picks| / k over recorded
  (token, layer) rows; `moe/router_set_match`: rows whose k-sets are identical;
  `moe/tokens_route_differs`: tokens differing in at least one layer.
- `moe/kl_rollout_replay`, `moe/kl_rollout_live`: k3 estimate of KL(mu_rollout ||
  pi_trainer) on the sampled tokens, mean over masked tokens, with the trainer
  replaying the rollout routes / routing live; `moe/logprob_absdiff_{replay,live}`:
  mean |log pi - log mu|.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from rollouts.types import NO_ROUTE  # -1: no record, route live


def expert_load(indices: torch.Tensor, num_experts: int, token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Load share per expert for one layer: indices [S, k] -> [E] summing to 1."""
    idx = indices.reshape(indices.shape[0], -1).long()
    keep = idx != NO_ROUTE
    if token_mask is not None:
        keep &= token_mask.reshape(-1, 1).bool()
    counts = torch.bincount(idx[keep], minlength=num_experts).float()[:num_experts]
    return counts / counts.sum().clamp_min(1.0)


def load_stats(routes: torch.Tensor, num_experts: int,
               token_mask: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Load, imbalance and entropy from routes [S, L, k]."""
    out: dict[str, float] = {}
    imbalance, entropy, dead = [], [], 0
    for layer in range(routes.shape[1]):
        load = expert_load(routes[:, layer], num_experts, token_mask)  # [E]
        for e, v in enumerate(load.tolist()):
            out[f"moe/load/layer{layer}/expert{e}"] = v
        imbalance.append(float(load.max() / load.mean().clamp_min(1e-12)))
        p = load[load > 0]
        entropy.append(float(-(p * p.log()).sum()) / math.log(num_experts) if num_experts > 1 else 1.0)
        dead += int((load == 0).sum())
    out["moe/imbalance_max_over_mean"] = sum(imbalance) / len(imbalance)
    out["moe/imbalance_max_layer"] = max(imbalance)
    out["moe/load_entropy"] = sum(entropy) / len(entropy)
    out["moe/dead_experts"] = float(dead)
    return out


def router_agreement(reference: torch.Tensor, trainer: torch.Tensor,
                     token_mask: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Agreement of two routings [S, L, k] (order within a row ignored); NO_ROUTE rows skipped."""
    ref, tr = reference.long(), trainer.long().to(reference.device)
    valid = (ref != NO_ROUTE).all(-1) & (tr != NO_ROUTE).all(-1)  # [S, L]
    if token_mask is not None:
        valid &= token_mask.reshape(-1, 1).bool()
    if not valid.any():
        return {}
    overlap = (ref[..., :, None] == tr[..., None, :]).any(-1).float().mean(-1)  # [S, L] in [0, 1]
    same = overlap == 1.0
    tokens = valid.any(-1)  # [S] with at least one comparable layer
    differs = (~same & valid).any(-1)
    return {
        "moe/router_agreement": float(overlap[valid].mean()),
        "moe/router_set_match": float(same[valid].float().mean()),
        "moe/tokens_route_differs": float(differs[tokens].float().mean()),
    }


def rollout_kl(logp_train: torch.Tensor, logp_rollout: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> tuple[float, float]:
    """(k3 KL(mu || pi), mean |log pi - log mu|) over masked sampled tokens; shapes match, e.g. [N]."""
    d = (logp_train.float() - logp_rollout.float().to(logp_train.device)).detach()  # log(pi/mu)
    m = torch.ones_like(d, dtype=torch.bool) if mask is None else mask.bool().to(d.device)
    d = d[m]
    if d.numel() == 0:
        return 0.0, 0.0
    k3 = torch.exp(d) - 1.0 - d  # unbiased for KL(mu||pi) under samples from mu, >= 0
    return float(k3.mean()), float(d.abs().mean())


def moe_step_metrics(
    num_experts: int,
    used_routes: Optional[torch.Tensor] = None,  # [S, L, k] experts that ran in the training forward
    rollout_routes: Optional[torch.Tensor] = None,  # [S, L, k] engine-recorded (NO_ROUTE = none)
    live_routes: Optional[torch.Tensor] = None,  # [S, L, k] trainer's own router choices
    token_mask: Optional[torch.Tensor] = None,  # [S] tokens that count (e.g. not padding)
    logp_rollout: Optional[torch.Tensor] = None,  # [N] sampler logprobs of completion tokens
    logp_replay: Optional[torch.Tensor] = None,  # [N] trainer logprobs, rollout routes replayed
    logp_live: Optional[torch.Tensor] = None,  # [N] trainer logprobs, live routing
    logp_mask: Optional[torch.Tensor] = None,  # [N]
) -> dict[str, float]:
    """Flat metrics dict for one step (see the module docstring for the keys)."""
    out: dict[str, float] = {}
    if used_routes is not None:
        out.update(load_stats(used_routes, num_experts, token_mask))
    if rollout_routes is not None and live_routes is not None:
        out.update(router_agreement(rollout_routes, live_routes, token_mask))
    if logp_rollout is not None:
        for name, lp in (("replay", logp_replay), ("live", logp_live)):
            if lp is not None:
                kl, absdiff = rollout_kl(lp, logp_rollout, logp_mask)
                out[f"moe/kl_rollout_{name}"] = kl
                out[f"moe/logprob_absdiff_{name}"] = absdiff
    return out

