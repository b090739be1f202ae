"""`RolloutBatch`: what the policy update consumes, built from engine `Completion`s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import numpy as np
import torch

from rollouts.types import Completion


@dataclass
class RolloutBatch:
    """N completions with their advantages. Lists are per completion, in one order."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    sampler_logprobs: list[list[float]]  # per completion token, temperature-scaled; [] = not recorded
    advantages: torch.Tensor  # [N] float32
    group_ids: list[Hashable]  # completions of one prompt share an id (prompt sharing, metrics)
    truncated: list[bool]  # hit max_tokens (finish_reason "length")
    routed_experts: Optional[list[Optional[np.ndarray]]] = None  # per completion [P+C, L, k] int16, or None

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        self.advantages = torch.as_tensor(self.advantages, dtype=torch.float32).reshape(-1)
        lens = {len(self.prompt_ids), len(self.sampler_logprobs), self.advantages.numel(),
                len(self.group_ids), len(self.truncated), n}
        if len(lens) != 1:
            raise ValueError(f"RolloutBatch fields disagree on the number of completions: {sorted(lens)}")
        for i, (c, lp) in enumerate(zip(self.completion_ids, self.sampler_logprobs)):
            if lp and len(lp) != len(c):
                raise ValueError(f"completion {i}: {len(lp)} sampler logprobs for {len(c)} tokens")

    @classmethod
    def from_completions(
        cls, completions: Sequence[Completion], advantages: torch.Tensor | Sequence[float],
        group_ids: Optional[Sequence[Hashable]] = None,
    ) -> "RolloutBatch":
        """group_ids default to each completion's prompt_index."""
        routed = [c.routed_experts for c in completions]
        return cls(
            prompt_ids=[list(c.prompt_ids) for c in completions],
            completion_ids=[list(c.completion_ids) for c in completions],
            sampler_logprobs=[list(c.logprobs) for c in completions],
            advantages=torch.as_tensor(advantages, dtype=torch.float32),
            group_ids=list(group_ids) if group_ids is not None else [c.prompt_index for c in completions],
            truncated=[c.truncated for c in completions],
            routed_experts=routed if any(r is not None for r in routed) else None,
        )

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def max_completion_len(self) -> int:
        return max((len(c) for c in self.completion_ids), default=0)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)

    def padded(self, values: Sequence[Sequence[float]], fill: float = 0.0) -> torch.Tensor:
        """Right-pad per-completion lists to [N, max_completion_len] float32."""
        out = torch.full((len(self), self.max_completion_len), fill, dtype=torch.float32)
        for i, v in enumerate(values):
            if len(v):
                out[i, : len(v)] = torch.as_tensor(v, dtype=torch.float32)
        return out

    def completion_mask(self) -> torch.Tensor:
        """[N, T] float: 1 on completion tokens."""
        return self.padded([[1.0] * len(c) for c in self.completion_ids])

    def sampler_logp(self) -> torch.Tensor:
        """[N, T] sampler log-probs, NaN where the engine recorded none (treated as no mismatch)."""
        return self.padded(
            [lp if lp else [float("nan")] * len(c) for lp, c in zip(self.sampler_logprobs, self.completion_ids)]
        )
