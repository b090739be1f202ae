"""KL guardrail: shout when the trainer and the sampler disagree too much.

Train-vs-rollout KL (k3, `moe/kl_rollout_*`) measures how far the trainer's
pi_old is from the distribution the engine actually sampled. For MoE policies it
is dominated by routing flips; when it grows, token-level importance ratios
explode and GRPO is known to collapse (arXiv 2510.11370, GSPO paper).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from grpo.errors import ConfigError, GrpoError

logger = logging.getLogger("grpo.moe")

ADVICE = (
    "What to do: enable routing replay (moe.routing_replay=r3 with rollout.return_routing=true, or r2 "
    "with several updates per batch), keep an importance-sampling correction on (algo.is_correction), "
    "lower optim.lr, check that engine weights are synced every step (a stale engine shows as growing KL), "
    "and compare dtypes of engine and trainer (bf16 vs fp32 flips near-tied experts)."
)


@dataclass
class KLGuard:
    """`check(kl, step)` after each step; warns (or raises, action="stop") above `threshold`."""

    threshold: Optional[float]
    action: Literal["warn", "stop"] = "warn"
    trips: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ("warn", "stop"):
            raise ConfigError(f"moe.kl_guard_action={self.action!r}: choose warn or stop.")
        if self.threshold is not None and not self.threshold > 0:
            raise ConfigError(f"moe.kl_guard_threshold={self.threshold}: must be > 0 (or null to disable).")

    @classmethod
    def from_config(cls, moe_cfg: Any) -> "KLGuard":
        return cls(moe_cfg.kl_guard_threshold, moe_cfg.kl_guard_action)

    def check(self, kl: float, step: int, name: str = "moe/kl_rollout") -> bool:
        """True if the guard tripped this step (after warning; raises GrpoError when action='stop')."""
        if self.threshold is None or not (kl > self.threshold or kl != kl):  # kl != kl: NaN trips too
            return False
        self.trips += 1
        msg = (
            f"train-vs-rollout KL guard tripped at step {step}: {name} = {kl:.4g} > threshold "
            f"{self.threshold:.4g} (trip {self.trips}). The trainer no longer scores the tokens the way the "
            f"engine sampled them. {ADVICE}"
        )
        if self.action == "stop":
            raise GrpoError(msg + " Stopping (moe.kl_guard_action=stop; set it to warn to continue).")
        logger.warning(msg)
        return True
