"""The trainer loop's side of MoE-aware RL: one object per run that applies the
router controls, owns the routing-replay hooks, and produces per-step hooks,
diagnostics and guard checks (see grpo/moe/__init__.py for the pieces)."""

from __future__ import annotations

from typing import Any

from grpo.config import MoEConfig


def is_moe(model, needs_hooks: bool) -> bool:
    """True for an MoE whose routers we can hook. An MoE we cannot hook is an error
    only when MoE features (replay) are asked for; otherwise it trains as a plain model."""
    from grpo.errors import ConfigError
    from grpo.moe import moe_routers

    try:
        return len(moe_routers(model)) > 0
    except ConfigError:
        if needs_hooks:
            raise
        return False


class MoEController:
    def __init__(self, policy, cfg: MoEConfig, returns_routing: bool, temperature: float,
                 micro_batch_tokens: int, chunk: int) -> None:
        from grpo.moe import KLGuard, RoutingReplay, apply_router_controls, check_replay_mode

        check_replay_mode(cfg.routing_replay, True, returns_routing)
        apply_router_controls(policy, cfg)
        self.cfg, self.policy = cfg, policy
        self.rr = RoutingReplay(policy)
        self.guard = KLGuard.from_config(cfg)
        self.temperature, self.mbt, self.chunk = temperature, micro_batch_tokens, chunk
        self._hook = None
        self._diag: dict[str, float] = {}

    def forward_hook(self, batch, step: int):
        """Diagnostics first (the trainer still holds the weights the engine sampled with), then the hook."""
        from grpo.moe import MoEStepHook, kl_diagnostics

        self._diag = {}
        if self.cfg.kl_diag_every and step % self.cfg.kl_diag_every == 0 and batch.sampler_logprobs[0]:
            self._diag = kl_diagnostics(self.policy, self.rr, batch, self.temperature,
                                        micro_batch_tokens=self.mbt, chunk=self.chunk)
        self._hook = MoEStepHook(self.rr, self.cfg, batch)
        return self._hook

    def step_metrics(self, step: int) -> dict[str, Any]:
        from grpo.moe import trained_kl_key

        out = dict(self._hook.metrics()) if self._hook is not None else {}
        out.update(self._diag)
        key = trained_kl_key(self.cfg.routing_replay)
        if key in self._diag:
            self.guard.check(self._diag[key], step)
        return out
