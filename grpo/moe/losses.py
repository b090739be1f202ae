"""Router regularisers computed from captured router logits.

- Load-balancing aux loss (Switch Transformer, arXiv 2101.03961):
  `E * sum_e f_e * P_e`, f_e = fraction of routing assignments sent to expert e,
  P_e = mean routing probability of e, pooled over layers as transformers'
  `load_balancing_loss_func` pools them. f_e comes from the experts that *ran*:
  under replay those are the replayed indices, not a fresh top-k of the logits
  (transformers' function re-derives f_e with its own top-k, which under replay
  would describe routing that did not happen). Without replay the two agree
  exactly (pinned by a test). Sigmoid routers (DeepSeek-V3) use normalised
  sigmoid scores for P_e.
- Router z-loss (ST-MoE, arXiv 2202.08906): mean over tokens and layers of
  logsumexp(logits)^2; keeps router logits small (fp stability).

RL default is 0 for both (verl and slime turn the aux loss off for RL).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from grpo.errors import GrpoError
from grpo.moe.replay import RouterCapture
from grpo.moe.routers import ScoreKind, router_probs


def _row_weights(mask: Optional[torch.Tensor], n: int, device) -> torch.Tensor:
    if mask is None:
        return torch.ones(n, device=device)
    return mask.reshape(-1).to(device=device, dtype=torch.float32)


def load_balancing_loss(
    logits: Sequence[torch.Tensor],  # per layer [S, E]
    indices: Sequence[torch.Tensor],  # per layer [S, k], experts that ran
    num_experts: int,
    token_mask: Optional[torch.Tensor] = None,  # [S] 1 = real token
    kind: ScoreKind = "softmax",
) -> torch.Tensor:
    """Switch-style balance loss pooled over layers (a scalar, differentiable in logits)."""
    device = logits[0].device
    tokens_per_expert = torch.zeros(num_experts, device=device)
    prob_per_expert = torch.zeros(num_experts, device=device)
    rows = torch.zeros((), device=device)
    for layer_logits, idx in zip(logits, indices):
        m = _row_weights(token_mask, layer_logits.shape[0], device)  # [S]
        k = idx.shape[-1]
        tokens_per_expert = tokens_per_expert.scatter_add(0, idx.reshape(-1), m.repeat_interleave(k))
        prob_per_expert = prob_per_expert + (router_probs(kind, layer_logits) * m[:, None]).sum(0)
        rows = rows + m.sum()
    rows = rows.clamp_min(1.0)
    # f_e sums to k (transformers' convention), P_e to 1.
    return num_experts * torch.sum((tokens_per_expert / rows) * (prob_per_expert / rows))


def router_z_loss(logits: Sequence[torch.Tensor], token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over tokens and layers of logsumexp(logits)^2."""
    total, rows = logits[0].new_zeros((), dtype=torch.float32), 0.0
    for layer_logits in logits:
        z = torch.logsumexp(layer_logits.float(), dim=-1) ** 2  # [S]
        m = _row_weights(token_mask, z.shape[0], z.device)
        total = total + (z * m).sum()
        rows = rows + m.sum()
    return total / max(float(rows), 1.0)


def router_loss_terms(
    capture: RouterCapture,
    aux_loss_coef: float,
    z_loss_coef: float,
    token_mask: Optional[torch.Tensor] = None,
    forward: Optional[int] = None,
) -> dict[str, torch.Tensor]:
    """Extra loss terms for one captured forward.

    Returns {"loss": aux_coef * aux + z_coef * z} plus the unweighted parts
    ("aux_loss", "z_loss", detached) for logging. With both coefficients 0 the
    loss is a constant 0 and nothing touches the logits.
    """
    out: dict[str, torch.Tensor] = {}
    loss = torch.zeros(())
    if aux_loss_coef == 0.0 and z_loss_coef == 0.0:
        return {"loss": loss}
    logits = capture.router_logits(forward)
    if torch.is_grad_enabled() and not logits[0].requires_grad:
        raise GrpoError(
            "captured router logits carry no gradient, so aux/z-loss would not train anything. Run the "
            "forward with autograd on; with gradient checkpointing use the non-reentrant kind "
            "(gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False}), "
            "the transformers v5 default)."
        )
    loss = loss.to(logits[0].device)
    if aux_loss_coef:
        used = capture.used_indices(forward)
        aux = load_balancing_loss(logits, used, capture.num_experts, token_mask, capture.kind)
        loss = loss + aux_loss_coef * aux
        out["aux_loss"] = aux.detach()
    if z_loss_coef:
        z = router_z_loss(logits, token_mask)
        loss = loss + z_loss_coef * z
        out["z_loss"] = z.detach()
    out["loss"] = loss
    return out
