"""Policy-loss variants of the GRPO family, each its own small function.

Every loss takes one `LossInputs`: padded tensors
    logp        [N, T]  current policy log-probs of the completion tokens (with grad)
    old_logp    [N, T]  old policy (trainer) log-probs, no grad
    advantages  [N]     one per completion
    mask        [N, T]  1 on completion tokens that enter the loss
    ref_logp    [N, T]  optional: reference log-probs for the k3 KL term (coefficient beta)
    is_weights  [N, T]  optional: rollout-mismatch importance weights pi_old / mu_sampler (detached)
    norm        LossNorm: normalisers over the WHOLE batch. With gradient
                accumulation each micro-batch passes the full batch's norm, so the
                sum of micro-batch losses (and gradients) equals the full-batch one.
and the settings eps_low / eps_high (clip range), dual_clip, beta, kl_ratio (multiply
the k3 term by the policy ratio: DeepSeek-V3.2's unbiased KL gradient). It returns
(loss, metrics) where metrics are floats: masked means over the micro-batch's tokens
(weight them by metrics["tokens"] to aggregate) and ratio_min / ratio_max.

Order of terms follows TRL 1.16 `GRPOTrainer._compute_loss`: the clipped
surrogate is multiplied by the IS weight, then beta * k3 KL is added, then the
variant's aggregation is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch

from grpo.config import AlgoConfig

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


@dataclass(frozen=True)
class LossInputs:
    """What a loss variant reads for one (micro-)batch; shapes in the module docstring.
    `mask` is cast to logp's dtype and `norm` defaults to this batch alone (no accumulation)."""

    logp: Tensor
    old_logp: Tensor
    advantages: Tensor
    mask: Tensor
    norm: Optional[LossNorm] = None
    ref_logp: Optional[Tensor] = None
    is_weights: Optional[Tensor] = None
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: Optional[float] = None
    beta: float = 0.0
    kl_ratio: bool = False

    def __post_init__(self) -> None:  # frozen: set the derived fields once, here
        if self.norm is None:
            object.__setattr__(self, "norm", LossNorm.from_mask(self.mask))
        object.__setattr__(self, "mask", self.mask.to(self.logp.dtype))

    @classmethod
    def from_algo(cls, algo: AlgoConfig, logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                  norm: Optional[LossNorm] = None, ref_logp: Optional[Tensor] = None,
                  is_weights: Optional[Tensor] = None) -> "LossInputs":
        """The settings of `algo`, with the clip range of its loss variant."""
        eps_low, eps_high = LOSSES[algo.loss].clip_range(algo)
        return cls(logp, old_logp, advantages, mask, norm, ref_logp, is_weights, eps_low, eps_high,
                   algo.dual_clip, algo.beta, algo.kl_ratio)


def _surrogate(x: LossInputs, ratio: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate, IS-weighted, plus beta * k3 (times the policy ratio if kl_ratio).
    ratio [N, T] (token level) or [N, 1] (sequence level) -> (per-token loss [N, T], metrics)."""
    pg, flags = clipped_surrogate(ratio, x.advantages[:, None], x.eps_low, x.eps_high, x.dual_clip)
    if x.is_weights is not None:
        pg = pg * x.is_weights
    kl = None
    if x.beta != 0.0:
        if x.ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp (reference model log-probs)")
        kl = k3_kl(x.ref_logp, x.logp)
        # DeepSeek-V3.2 unbiased KL: (pi_theta / pi_old) * k3; TRL's use_bias_correction_kl (default on there)
        pg = pg + x.beta * (kl * ratio if x.kl_ratio else kl)
    return pg.expand_as(x.logp), _metrics(x.mask, ratio, flags, kl)


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


def _token_ratio(x: LossInputs) -> Tensor:
    return torch.exp(x.logp - x.old_logp)  # [N, T]


def grpo_loss(x: LossInputs) -> tuple[Tensor, dict[str, float]]:
    """GRPO (DeepSeekMath): token-mean within each sequence, then mean over sequences."""
    per_tok, metrics = _surrogate(x, _token_ratio(x))
    return _seq_mean_of_token_mean(per_tok, x.mask, x.norm.num_sequences), metrics


def dapo_loss(x: LossInputs) -> tuple[Tensor, dict[str, float]]:
    """DAPO: token-level sum over the batch / total loss tokens, clip-higher (eps_high > eps_low)."""
    per_tok, metrics = _surrogate(x, _token_ratio(x))
    return (per_tok * x.mask).sum() / max(x.norm.num_tokens, 1.0), metrics


def dr_grpo_loss(x: LossInputs) -> tuple[Tensor, dict[str, float]]:
    """Dr. GRPO: token sum / (num_sequences * max_tokens), a constant: no length bias."""
    per_tok, metrics = _surrogate(x, _token_ratio(x))
    return (per_tok * x.mask).sum() / (x.norm.num_sequences * x.norm.max_tokens), metrics


def gspo_loss(x: LossInputs) -> tuple[Tensor, dict[str, float]]:
    """GSPO: sequence ratio s_i = exp(mean_t(logp - old_logp)), clipped per sequence, mean over sequences."""
    m = x.mask
    log_s = ((x.logp - x.old_logp) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)  # [N, 1]
    per_tok, metrics = _surrogate(x, torch.exp(log_s))  # [N, T]
    return _seq_mean_of_token_mean(per_tok, m, x.norm.num_sequences), metrics


LossFn = Callable[[LossInputs], tuple[Tensor, dict[str, float]]]


def _token_clip(algo: AlgoConfig) -> tuple[float, float]:
    return algo.epsilon_low, algo.epsilon_high


def _sequence_clip(algo: AlgoConfig) -> tuple[float, float]:
    # A sequence ratio is a geometric mean: it stays ~1e-4 from 1, so GSPO has its own, narrow range.
    return algo.gspo_epsilon_low, algo.gspo_epsilon_high


@dataclass(frozen=True)
class LossVariant:
    """A loss function and the AlgoConfig clip range it uses."""

    fn: LossFn
    clip_range: Callable[[AlgoConfig], tuple[float, float]] = field(default=_token_clip)

    def __call__(self, x: LossInputs) -> tuple[Tensor, dict[str, float]]:
        return self.fn(x)


LOSSES: dict[str, LossVariant] = {
    "grpo": LossVariant(grpo_loss),
    "dapo": LossVariant(dapo_loss),
    "dr_grpo": LossVariant(dr_grpo_loss),
    "gspo": LossVariant(gspo_loss, _sequence_clip),
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
