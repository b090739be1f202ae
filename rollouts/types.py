"""Message types between the generation engines and the trainer.

Plain dataclasses of lists / numpy arrays: no vLLM or torch types cross this
boundary, so an engine can live in another process or machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence, Union

import numpy as np

# A prompt is raw text or a chat conversation ([{"role": ..., "content": ...}]).
Prompt = Union[str, list[dict]]

# Sentinel in routed-expert arrays: "no record for this slot, route live".
NO_ROUTE = -1


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings shared by every engine.

    Logprobs returned by engines are those of the distribution actually sampled
    from *after* temperature scaling (and before top-p/top-k truncation), which
    is what the trainer computes with `logits / temperature`.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Completion:
    """One sampled completion of one prompt.

    routed_experts: for MoE policies when requested, int16 array
    [len(prompt_ids) + len(completion_ids), n_moe_layers, top_k]: row i holds the
    experts that processed the token at position i. Rows the engine could not
    record (e.g. the last sampled token, which is never fed back) hold NO_ROUTE.
    """

    prompt_index: int  # index of the prompt in the request: the group id
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # one per completion token
    text: str
    finish_reason: str  # "stop" | "length"
    routed_experts: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class Engine(Protocol):
    """What the trainer needs from a generation engine."""

    def generate(
        self,
        prompts: Sequence[Prompt],
        group_size: int,
        sampling: SamplingConfig,
        return_routing: bool = False,
    ) -> list[Completion]:
        """B prompts -> B*G completions, grouped in prompt order (all G of prompt 0 first)."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, "object"]]) -> None:
        """Load new policy weights in place (HF parameter names, torch tensors)."""
        ...

    def shutdown(self) -> None: ...
