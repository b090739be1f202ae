"""Which prompts each step trains on: seeded order, exact resume, optional curriculum.

- "none": a seeded shuffle per epoch.
- "difficulty": easy first (the generator's difficulty), a new seeded shuffle
  within equal difficulty each epoch.
- "pass_rate": prompts are drawn with weights that favour those whose running
  pass rate is closest to 0.5 (where GRPO's group advantage carries signal);
  unseen prompts count as 0.5.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class PromptSampler:
    n_prompts: int
    seed: int = 0
    curriculum: str = "none"
    difficulty: list[float] | None = None
    epoch: int = 0
    position: int = 0
    pass_rate: dict[int, float] = field(default_factory=dict)
    _order: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.n_prompts < 1:
            raise ValueError("PromptSampler needs at least one prompt")
        self._order = self._make_order(self.epoch)

    def _make_order(self, epoch: int) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(self.n_prompts))
        rng.shuffle(order)
        if self.curriculum == "difficulty" and self.difficulty is not None:
            order.sort(key=lambda i: self.difficulty[i])  # stable: shuffle breaks ties
        return order

    def next_batch(self, size: int) -> list[int]:
        if self.curriculum == "pass_rate":
            return self._weighted(size)
        out = []
        while len(out) < size:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._make_order(self.epoch)
            out.append(self._order[self.position])
            self.position += 1
        return out

    def _weighted(self, size: int) -> list[int]:
        rng = random.Random(self.seed * 7_919 + self.position)
        self.position += 1
        weights = [0.05 + 1.0 - 2.0 * abs(self.pass_rate.get(i, 0.5) - 0.5) for i in range(self.n_prompts)]
        picked: list[int] = []
        while len(picked) < min(size, self.n_prompts):
            i = rng.choices(range(self.n_prompts), weights=weights)[0]
            if i not in picked:
                picked.append(i)
        return picked

    def record(self, prompt_id: int, pass_rate: float, momentum: float = 0.5) -> None:
        old = self.pass_rate.get(prompt_id)
        self.pass_rate[prompt_id] = pass_rate if old is None else momentum * old + (1 - momentum) * pass_rate

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "pass_rate": dict(self.pass_rate)}

    def load_state(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.pass_rate = {int(k): v for k, v in state.get("pass_rate", {}).items()}
        self._order = self._make_order(self.epoch)
