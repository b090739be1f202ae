"""MoE-aware RL: routing replay (R2/R3), router controls, expert-load metrics, KL guard.

Hooks live on the transformers v5 router modules (`routers.SUPPORTED_ROUTERS`).
What the trainer loop does (details in `step.py`, the R2/R3 table in `modes.py`):

    apply_router_controls(policy, cfg.moe)            # freeze / fp32 router, before the optimizer
    rr = RoutingReplay(policy)                        # once; hooks idle outside a context
    guard = KLGuard.from_config(cfg.moe)
    per step, with batch = RolloutBatch.from_completions(...):
        diag = kl_diagnostics(policy, rr, batch, T)   # before the update (= the engine's weights)
        hook = MoEStepHook(rr, cfg.moe, batch)
        metrics = policy_update(..., forward_hook=hook)
        metrics |= hook.metrics() | diag              # moe/load/..., moe/router_agreement, moe/kl_*
        guard.check(diag[trained_kl_key(cfg.moe.routing_replay)], step)
    at the end: plot_expert_load(metrics_jsonl, "expert_load.png")
"""

from grpo.moe.controls import apply_router_controls, force_router_fp32, freeze_router
from grpo.moe.guard import KLGuard
from grpo.moe.losses import load_balancing_loss, router_loss_terms, router_z_loss
from grpo.moe.metrics import moe_step_metrics, rollout_kl, router_agreement
from grpo.moe.modes import check_replay_mode, diagnostic_pass, replay_routes_for, routing_pass, trained_kl_key
from grpo.moe.plots import plot_expert_load
from grpo.moe.replay import NO_ROUTE, RouterCapture, RoutingReplay
from grpo.moe.routers import SUPPORTED_ROUTERS, moe_layer_indices, moe_layers, moe_routers
from grpo.moe.routes import pad_routes, to_route_tensor
from grpo.moe.step import MoEStepHook, kl_diagnostics

__all__ = [
    "KLGuard", "MoEStepHook", "NO_ROUTE", "RouterCapture", "RoutingReplay", "SUPPORTED_ROUTERS",
    "apply_router_controls", "check_replay_mode", "diagnostic_pass", "force_router_fp32", "freeze_router",
    "kl_diagnostics", "load_balancing_loss", "moe_layer_indices", "moe_layers", "moe_routers",
    "moe_step_metrics", "pad_routes", "plot_expert_load", "replay_routes_for", "rollout_kl",
    "router_agreement", "router_loss_terms", "router_z_loss", "routing_pass", "to_route_tensor",
    "trained_kl_key",
]
