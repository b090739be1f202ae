"""R2 / R3 selection: which routing each trainer forward uses.

Per micro-batch of a step (the reference model, if any, routes freely):

| mode | old-logprob pass (no grad)        | training passes                 |
|------|-----------------------------------|---------------------------------|
| none | live, captured (stats)            | live, captured (aux/z loss)     |
| r2   | live, *recorded* -> old_routes    | replay old_routes               |
| r3   | replay rollout routes             | replay rollout routes           |

R2 ("vanilla routing replay", GSPO paper) removes the drift of routing between
pi_old and pi_theta across mini-batches; R3 ("rollout routing replay", arXiv
2510.11370) also removes the sampler/trainer routing mismatch, at the price of a
small bias even on-policy. R2 routes are tied to the packed layout of the
micro-batch they were recorded in: reuse them with the same packing.

`diagnostic_pass` names the one extra no-grad forward that gives the missing
side of the replay-vs-live KL metrics.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal, Optional

import torch

from grpo.errors import ConfigError
from grpo.moe.replay import RouterCapture, RoutingReplay

ReplayMode = Literal["none", "r2", "r3"]
Phase = Literal["old", "train"]
REPLAY_MODES: tuple[str, ...] = ("none", "r2", "r3")


def check_replay_mode(mode: str, is_moe: bool, rollout_returns_routing: bool) -> None:
    """Config-time validation (call once before training)."""
    if mode not in REPLAY_MODES:
        raise ConfigError(f"moe.routing_replay={mode!r}: choose one of {', '.join(REPLAY_MODES)}.")
    if mode != "none" and not is_moe:
        raise ConfigError(f"moe.routing_replay={mode} needs an MoE policy; the model is dense. Set it to none.")
    if mode == "r3" and not rollout_returns_routing:
        raise ConfigError("moe.routing_replay=r3 replays the engine's routing: set rollout.return_routing=true.")


def replay_routes_for(mode: ReplayMode, phase: Phase, rollout_routes: Optional[torch.Tensor],
                      old_routes: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Routes [S, L, k] a pass replays, or None for live routing."""
    if mode == "none" or (mode == "r2" and phase == "old"):
        return None
    if mode == "r2":
        if old_routes is None:
            raise ConfigError("R2 training pass without recorded routes: run the old-logprob pass under "
                              "routing_pass(mode='r2', phase='old') first and keep capture.routes().")
        return old_routes
    if mode == "r3":
        if rollout_routes is None:
            raise ConfigError("R3 needs the rollout engine's routes: generate with return_routing=True.")
        return rollout_routes
    raise ConfigError(f"unknown routing replay mode {mode!r}; choose one of {', '.join(REPLAY_MODES)}.")


@contextmanager
def routing_pass(rr: RoutingReplay, mode: ReplayMode, phase: Phase,
                 rollout_routes: Optional[torch.Tensor] = None,
                 old_routes: Optional[torch.Tensor] = None) -> Iterator[RouterCapture]:
    """Context for one trainer forward (+ its backward): replays or records per the table above.

    The yielded capture has `.routes()` (R2: keep the old pass's as old_routes),
    `.live_routes()` (agreement metric) and `.router_logits()` (aux / z-loss).
    """
    routes = replay_routes_for(mode, phase, rollout_routes, old_routes)
    ctx = rr.record() if routes is None else rr.replay(routes)
    with ctx as cap:
        yield cap


def diagnostic_pass(mode: ReplayMode) -> Literal["live", "replay_rollout"]:
    """The extra no-grad forward that completes `kl_rollout_live` / `kl_rollout_replay`.

    r3's old pass already replays rollout routes, so the missing side is a live
    forward; none/r2's old pass is live, so the missing side replays rollout routes.
    """
    return "live" if mode == "r3" else "replay_rollout"


def trained_kl_key(mode: ReplayMode) -> str:
    """The train-vs-rollout KL the update actually sees (what the KL guard should watch)."""
    return "moe/kl_rollout_replay" if mode == "r3" else "moe/kl_rollout_live"
