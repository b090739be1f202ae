"""Group-relative advantages and the small pure helpers around them.

Rewards arrive flat, one per completion ([N]), with a group id per completion
(the prompt index) or the group size G when groups are contiguous. NaN rewards mean "unscorable": they are left out of
the group baseline and get advantage 0, as TRL does.

Modes (AlgoConfig.advantage):
  group  (r - mean_g) / (std_g + eps)        GRPO (DeepSeekMath)
  batch  (r - mean_g) / (std_batch + eps)    Lite-PPO / REINFORCE++-baseline style
  none   r - mean_g                          Dr. GRPO
  rloo   r - mean_{j != i in g} r_j           RLOO leave-one-out = G/(G-1) * (r - mean_g)
Standard deviations are unbiased (Bessel), like TRL's `nanstd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Literal, Sequence, Union

import torch

from rewards.health import zero_variance_by_group

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


def zero_variance_groups(rewards: torch.Tensor | Sequence[float], group_ids: GroupIds) -> torch.Tensor:
    """Bool [N]: the completion's group gives no learning signal (all its scorable rewards equal).

    The definition and tolerance are rewards.health.zero_variance_by_group's, the one copy.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64)  # [N]
    index = _dense_index(group_ids, r.numel()).tolist()
    flat = zero_variance_by_group(r.tolist(), index)
    return torch.tensor([flat[g] for g in index], dtype=torch.bool)


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
