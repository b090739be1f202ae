"""Group-relative advantages and the small pure helpers around them.

Rewards arrive flat, one per completion ([N]), with a group id per completion
(the prompt index) or the group size G when groups are contiguous. NaN rewards mean "unscorable": they are left out of the
group baseline and get advantage 0, as TRL does.

Modes (AlgoConfig.advantage):
  group  (r - mean_g) / (std_g + eps)        GRPO (DeepSeekMath)
  batch  (r - mean_g) / (std_batch + eps)    Lite-PPO / REINFORCE++-baseline style
  none   r - mean_g                          Dr. GRPO
  rloo   r - mean_{j != i in g} r_j           RLOO leave-one-out = G/(G-1) * (r - mean_g)
Standard deviations are unbiased (Bessel), like TRL's `nanstd`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Literal, Sequence, Union

import torch

AdvantageMode = Literal["group", "batch", "none", "rloo"]
GroupIds = Union[Sequence[Hashable], torch.Tensor, int]  # per-completion ids, or the size G of contiguous groups
STD_EPS = 1e-4  # TRL's epsilon: a zero-variance group gets advantage 0, never a division by 0


@dataclass
class GroupStats:
    """Per-completion views of the group statistics (all [N])."""

    index: torch.Tensor  # [N] long, dense group index 0..G_count-1
    count: torch.Tensor  # [N] scorable completions in the group
    mean: torch.Tensor  # [N] group mean (NaN-aware)
    std: torch.Tensor  # [N] unbiased group std (0 when count < 2)


def group_stats(rewards: torch.Tensor, group_ids: GroupIds) -> GroupStats:
    """Mean / std of each completion's group, NaN rewards excluded. rewards: [N]."""
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    index = _dense_index(group_ids, rewards.numel())  # [N]
    n_groups = int(index.max()) + 1 if index.numel() else 0
    valid = ~torch.isnan(rewards)  # [N]
    r0 = torch.where(valid, rewards, torch.zeros_like(rewards))
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, index, valid.double())  # [G]
    total = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, index, r0)  # [G]
    mean = total / count.clamp(min=1)  # [G]
    sq = torch.where(valid, (rewards - mean[index]) ** 2, torch.zeros_like(rewards))
    var = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, index, sq) / (count - 1).clamp(min=1)
    std = torch.where(count > 1, var.sqrt(), torch.zeros_like(var))  # [G]
    return GroupStats(index=index, count=count[index], mean=mean[index], std=std[index])


def compute_advantages(
    rewards: torch.Tensor | Sequence[float],
    group_ids: GroupIds,
    mode: AdvantageMode = "group",
    eps: float = STD_EPS,
) -> torch.Tensor:
    """Advantages [N] (float32) from rewards [N] and group ids [N]."""
    r = torch.as_tensor(rewards, dtype=torch.float64)  # [N]
    st = group_stats(r, group_ids)
    centred = r - st.mean  # [N]
    if mode == "group":
        adv = centred / (st.std + eps)
    elif mode == "batch":
        valid = r[~torch.isnan(r)]
        batch_std = valid.std() if valid.numel() > 1 else torch.zeros((), dtype=torch.float64)
        adv = centred / (batch_std + eps)
    elif mode == "none":
        adv = centred
    elif mode == "rloo":
        # mean of the others = (G*mean - r) / (G-1)  =>  r - that = G/(G-1) * (r - mean)
        adv = centred * st.count / (st.count - 1).clamp(min=1)
        adv = torch.where(st.count > 1, adv, torch.zeros_like(adv))
    else:
        raise ValueError(f"unknown advantage mode {mode!r}; choose group, batch, none or rloo")
    return torch.nan_to_num(adv, nan=0.0).float()  # unscorable completions carry no signal


def zero_variance_groups(
    rewards: torch.Tensor | Sequence[float], group_ids: GroupIds, tol: float = 0.0
) -> torch.Tensor:
    """Bool [N]: the completion's group has (near) identical rewards, so zero advantage."""
    st = group_stats(torch.as_tensor(rewards, dtype=torch.float64), group_ids)
    return st.std <= tol


def advantage_report(
    rewards: torch.Tensor | Sequence[float], group_ids: GroupIds
) -> dict[str, float]:
    """Metrics for the log: reward mean/std, fraction of zero-variance groups and of NaN rewards."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    st = group_stats(r, group_ids)
    n_groups = int(st.index.max()) + 1 if st.index.numel() else 0
    zero = torch.zeros(n_groups, dtype=torch.bool).index_fill_(0, st.index[st.std == 0], True)
    valid = r[~torch.isnan(r)]
    return {
        "reward_mean": float(valid.mean()) if valid.numel() else math.nan,
        "reward_std": float(valid.std()) if valid.numel() > 1 else 0.0,
        "zero_std_group_frac": float(zero.float().mean()) if n_groups else 0.0,
        "nan_reward_frac": float(torch.isnan(r).float().mean()) if r.numel() else 0.0,
    }


def dynamic_sampling_keep(
    rewards: torch.Tensor | Sequence[float], group_ids: GroupIds, tol: float = 0.0
) -> torch.Tensor:
    """DAPO dynamic sampling: bool [N], True for completions of groups with a learning signal.

    The caller keeps these, draws more prompts for the rest, and stops when
    `groups_needed(...)` reaches 0 or it runs out of rounds.
    """
    return ~zero_variance_groups(rewards, group_ids, tol)


def groups_needed(kept_groups: int, target_groups: int) -> int:
    """How many more informative groups to draw to fill the batch (>= 0)."""
    return max(0, target_groups - kept_groups)


def _dense_index(group_ids: GroupIds, n: int) -> torch.Tensor:
    """Map group ids to 0..G-1 in order of first appearance. [N] long. An int is the group
    size of contiguous groups (all G completions of prompt 0 first, as engines return them)."""
    if isinstance(group_ids, int):
        if group_ids < 1 or n % group_ids:
            raise ValueError(f"{n} rewards do not split into groups of {group_ids}")
        return torch.arange(n) // group_ids
    ids = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} group ids for {n} rewards")
    seen: dict[Hashable, int] = {}
    return torch.tensor([seen.setdefault(g, len(seen)) for g in ids], dtype=torch.long)


# ---------------------------------------------------------------- curriculum


@dataclass
class PassRateCurriculum:
    """Running pass rate per prompt id -> sampling weights that favour prompts with signal.

    A prompt whose groups all pass (or all fail) teaches GRPO nothing, so its
    weight is p*(1-p) of its running (EMA) pass rate, floored so no prompt
    starves; unseen prompts get the `prior` pass rate.
    """

    decay: float = 0.5  # EMA weight of the old value
    prior: float = 0.5
    floor: float = 0.02
    rates: dict[Hashable, float] = field(default_factory=dict)

    def update(self, prompt_ids: Sequence[Hashable], passed: Sequence[float]) -> None:
        """Fold one step's results in: one (prompt id, pass in [0,1]) per completion."""
        sums: dict[Hashable, list[float]] = {}
        for pid, ok in zip(prompt_ids, passed):
            sums.setdefault(pid, []).append(float(ok))
        for pid, vals in sums.items():
            step_rate = sum(vals) / len(vals)
            old = self.rates.get(pid)
            self.rates[pid] = step_rate if old is None else self.decay * old + (1 - self.decay) * step_rate

    def weights(self, prompt_ids: Sequence[Hashable]) -> list[float]:
        """Unnormalised sampling weights, one per prompt id."""
        out = []
        for pid in prompt_ids:
            p = self.rates.get(pid, self.prior)
            out.append(max(self.floor, p * (1 - p)))
        return out

    def state_dict(self) -> dict:
        return {"decay": self.decay, "prior": self.prior, "floor": self.floor, "rates": dict(self.rates)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PassRateCurriculum":
        return cls(**state)


def difficulty_order(difficulties: Sequence[float], seed: int | None = None) -> list[int]:
    """Indices sorted easiest first; ties shuffled with `seed` (stable if None)."""
    idx = list(range(len(difficulties)))
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(idx), generator=g).tolist()
    return sorted(idx, key=lambda i: difficulties[i])
