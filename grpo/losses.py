"""Policy-loss variants of the GRPO family, each its own small function.

Every loss takes padded tensors
    logp        [N, T]  current policy log-probs of the completion tokens (with grad)
    old_logp    [N, T]  old policy (trainer) log-probs, no grad
    advantages  [N]     one per completion
    mask        [N, T]  1 on completion tokens that enter the loss
and optionally
    ref_logp    [N, T]  reference log-probs for the k3 KL term (coefficient beta)
    is_weights  [N, T]  rollout-mismatch importance weights pi_old / mu_sampler (detached)
    kl_ratio    multiply the k3 term by the policy ratio (DeepSeek-V3.2 unbiased KL gradient)
    norm        LossNorm: normalisers over the WHOLE batch. With gradient
                accumulation each micro-batch passes the full batch's norm, so the
                sum of micro-batch losses (and gradients) equals the full-batch one.
and returns (loss, metrics) where metrics are floats: masked means over the
micro-batch's tokens (weight them by metrics["tokens"] to aggregate) and
ratio_min / ratio_max.

Order of terms follows TRL 1.16 `GRPOTrainer._compute_loss`: the clipped
surrogate is multiplied by the IS weight, then beta * k3 KL is added, then the
variant's aggregation is applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class LossNorm:
    """Whole-batch normalisers. num_sequences: sequences in the loss; num_tokens: loss tokens;
    max_tokens: Dr. GRPO's constant per-sequence budget (generation max_tokens)."""

    num_sequences: float
    num_tokens: float
    max_tokens: float

    @classmethod
    def from_mask(cls, mask: Tensor, max_tokens: Optional[int] = None) -> "LossNorm":
        """For a single (non-accumulated) batch: mask [N, T]."""
        return cls(float(mask.shape[0]), float(mask.sum()), float(max_tokens or mask.shape[1]))


def k3_kl(ref_logp: Tensor, logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1, d = ref - logp. [N, T]"""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(
    ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float, dual_clip: Optional[float]
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped objective as a loss. ratio [N, T] or [N, 1]; adv [N, 1]. Returns (loss, flags)."""
    loss = -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    flags = {
        "clip_low": (ratio < 1 - eps_low) & (adv < 0),
        "clip_high": (ratio > 1 + eps_high) & (adv > 0),
    }
    if dual_clip is not None:
        # Dual clip (Ye et al. 2020): for A < 0 the loss |A|*r is unbounded in r; cap it at |A|*c.
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
        flags["dual_clip"] = (adv < 0) & (ratio > dual_clip)
    return loss, flags


def _finish_per_token(
    pg: Tensor, logp: Tensor, ratio: Tensor, ref_logp: Optional[Tensor], beta: float,
    is_weights: Optional[Tensor], kl_ratio: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """IS-weight the surrogate, add beta * k3 (times the policy ratio if kl_ratio).
    pg, ratio [N, T] or [N, 1] -> ([N, T], kl [N, T] or None)."""
    if is_weights is not None:
        pg = pg * is_weights
    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp (reference model log-probs)")
        kl = k3_kl(ref_logp, logp)
        # DeepSeek-V3.2 unbiased KL: (pi_theta / pi_old) * k3; TRL's use_bias_correction_kl (default on there)
        pg = pg + beta * (kl * ratio if kl_ratio else kl)
    return pg.expand_as(logp), kl


@torch.no_grad()
def _metrics(mask: Tensor, ratio: Tensor, flags: dict[str, Tensor], kl: Optional[Tensor]) -> dict[str, float]:
    m = mask.bool()
    n = int(m.sum())
    r = ratio.expand_as(mask)[m]
    out: dict[str, float] = {"tokens": float(n)}
    denom = max(n, 1)
    for name, f in flags.items():
        out[f"{name}_frac"] = float(f.expand_as(mask)[m].float().sum()) / denom
    out["ratio_mean"] = float(r.sum()) / denom
    out["ratio_min"] = float(r.min()) if n else 1.0
    out["ratio_max"] = float(r.max()) if n else 1.0
    if kl is not None:
        out["kl"] = float(kl[m].sum()) / denom
    return out


def _seq_mean_of_token_mean(per_tok: Tensor, mask: Tensor, num_sequences: float) -> Tensor:
    """sum_i [ sum_t L_it m_it / |o_i| ] / num_sequences. [N, T] -> scalar"""
    per_seq = (per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [N]
    return per_seq.sum() / num_sequences


def grpo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
    eps_low: float = 0.2, eps_high: float = 0.2, dual_clip: Optional[float] = None,
    ref_logp: Optional[Tensor] = None, beta: float = 0.0, is_weights: Optional[Tensor] = None,
    norm: Optional[LossNorm] = None, kl_ratio: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO (DeepSeekMath): token-mean within each sequence, then mean over sequences."""
    norm = norm or LossNorm.from_mask(mask)
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # [N, T]
    pg, flags = clipped_surrogate(ratio, advantages[:, None], eps_low, eps_high, dual_clip)
    per_tok, kl = _finish_per_token(pg, logp, ratio, ref_logp, beta, is_weights, kl_ratio)
    loss = _seq_mean_of_token_mean(per_tok, mask, norm.num_sequences)
    return loss, _metrics(mask, ratio, flags, kl)


def dapo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
    eps_low: float = 0.2, eps_high: float = 0.28, dual_clip: Optional[float] = None,
    ref_logp: Optional[Tensor] = None, beta: float = 0.0, is_weights: Optional[Tensor] = None,
    norm: Optional[LossNorm] = None, kl_ratio: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """DAPO: token-level sum over the batch / total loss tokens, clip-higher (eps_high > eps_low)."""
    norm = norm or LossNorm.from_mask(mask)
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # [N, T]
    pg, flags = clipped_surrogate(ratio, advantages[:, None], eps_low, eps_high, dual_clip)
    per_tok, kl = _finish_per_token(pg, logp, ratio, ref_logp, beta, is_weights, kl_ratio)
    loss = (per_tok * mask).sum() / max(norm.num_tokens, 1.0)
    return loss, _metrics(mask, ratio, flags, kl)


def dr_grpo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
    eps_low: float = 0.2, eps_high: float = 0.2, dual_clip: Optional[float] = None,
    ref_logp: Optional[Tensor] = None, beta: float = 0.0, is_weights: Optional[Tensor] = None,
    norm: Optional[LossNorm] = None, kl_ratio: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """Dr. GRPO: token sum / (num_sequences * max_tokens), a constant: no length bias."""
    norm = norm or LossNorm.from_mask(mask)
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # [N, T]
    pg, flags = clipped_surrogate(ratio, advantages[:, None], eps_low, eps_high, dual_clip)
    per_tok, kl = _finish_per_token(pg, logp, ratio, ref_logp, beta, is_weights, kl_ratio)
    loss = (per_tok * mask).sum() / (norm.num_sequences * norm.max_tokens)
    return loss, _metrics(mask, ratio, flags, kl)


def gspo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
    eps_low: float = 3e-4, eps_high: float = 4e-4, dual_clip: Optional[float] = None,
    ref_logp: Optional[Tensor] = None, beta: float = 0.0, is_weights: Optional[Tensor] = None,
    norm: Optional[LossNorm] = None, kl_ratio: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """GSPO: sequence ratio s_i = exp(mean_t(logp - old_logp)), clipped per sequence, mean over sequences."""
    norm = norm or LossNorm.from_mask(mask)
    mask = mask.to(logp.dtype)
    log_s = ((logp - old_logp) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)  # [N, 1]
    ratio = torch.exp(log_s)  # [N, 1]
    pg, flags = clipped_surrogate(ratio, advantages[:, None], eps_low, eps_high, dual_clip)  # [N, 1]
    per_tok, kl = _finish_per_token(pg, logp, ratio, ref_logp, beta, is_weights, kl_ratio)  # [N, T]
    loss = _seq_mean_of_token_mean(per_tok, mask, norm.num_sequences)
    return loss, _metrics(mask, ratio, flags, kl)


LossFn = Callable[..., tuple[Tensor, dict[str, float]]]
LOSSES: dict[str, LossFn] = {
    "grpo": grpo_loss,
    "dapo": dapo_loss,
    "dr_grpo": dr_grpo_loss,
    "gspo": gspo_loss,
}

# ------------------------------------------------------------ rollout mismatch

ISMode = Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


@torch.no_grad()
def rollout_is_weights(
    old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, mode: ISMode, cap: float = 2.0, min_value: float = 0.0
) -> tuple[Optional[Tensor], dict[str, float]]:
    """Importance weights pi_old / mu_sampler for the trainer/sampler mismatch (TIS / MIS).

    old_logp, sampler_logp, mask: [N, T]. Sampler log-probs that are NaN (not
    recorded) count as a perfect match. truncate: clamp to [min_value, cap];
    mask: weight 0 outside [min_value, cap], the ratio itself inside (as TRL).
    sequence_*: one weight per sequence, exp(sum_t diff). Returns (weights [N, T]
    or None for mode "none", metrics incl. the train-vs-rollout KL).
    """
    m = mask.to(old_logp.dtype)
    d = torch.nan_to_num(old_logp - sampler_logp, nan=0.0) * m  # [N, T] log(pi_old / mu)
    mb = m.bool()
    n = max(int(mb.sum()), 1)
    metrics = {
        # samples come from mu: KL(mu || pi_old) ~ E_mu[k3] with ratio pi_old / mu
        "rollout_kl_k3": float((torch.exp(d) - d - 1)[mb].sum()) / n,
        "rollout_logp_absdiff": float(d.abs()[mb].sum()) / n,
        "rollout_logp_absdiff_max": float(d.abs().max()) if mb.any() else 0.0,
    }
    if mode == "none":
        return None, metrics
    if mode.startswith("sequence"):
        w = torch.exp(d.sum(-1, keepdim=True)).expand_as(d)  # [N, T]
    elif mode.startswith("token"):
        w = torch.exp(d)  # [N, T]
    else:
        raise ValueError(f"unknown is_correction {mode!r}")
    outside = (w < min_value) | (w > cap)
    if mode.endswith("truncate"):
        w = w.clamp(min=min_value, max=cap)
    elif mode.endswith("mask"):
        w = w.masked_fill(outside, 0.0)
    else:
        raise ValueError(f"unknown is_correction {mode!r}")
    w = w * m
    metrics.update(
        is_weight_mean=float(w[mb].sum()) / n,
        is_weight_min=float(w[mb].min()) if mb.any() else 1.0,
        is_weight_max=float(w[mb].max()) if mb.any() else 1.0,
        is_clipped_frac=float(outside[mb].float().sum()) / n,
    )
    return w, metrics
