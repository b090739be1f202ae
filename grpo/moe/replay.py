"""Routing replay and routing capture through forward hooks on MoE routers.

    rr = RoutingReplay(model)                  # hooks stay installed, idle outside a context
    with rr.record() as cap:                   # live routing; capture what the routers did
        model(input_ids)
    routes = cap.routes()                      # [S, L, k] int64, S = B*T flattened tokens
    with rr.replay(routes) as cap:             # force these experts, gate weights from live logits
        loss = f(model(input_ids)); loss.backward()

Replay swaps the router's `(logits, weights, index)` output for
`(logits, gate_weights(logits, routes), routes)`: the experts that run are the
given ones, and their weights are recomputed from the live router logits, so the
router still gets a gradient (a hard override of the weights would cut it). A
(token, layer) row holding any NO_ROUTE (-1) routes live.

Gradient checkpointing re-runs each router in backward. Routes are looked up
per layer from the active context (not consumed from a queue), so the recompute
sees the same experts as the forward as long as `backward()` runs inside the
`with rr.replay(...)` block; a recompute after the block exits raises instead of
silently routing live. Captured logits stay in the autograd graph (the losses in
`router_losses` need them); with the non-reentrant checkpointing transformers v5
uses by default that holds under checkpointing too.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
from torch import nn

from grpo.errors import ConfigError, GrpoError
from grpo.moe.routers import RouterInfo, ScoreKind, gate_weights, moe_routers
from rollouts.types import NO_ROUTE  # -1: no record, route live


def _in_backward() -> bool:
    """True while the autograd engine runs (i.e. a checkpoint recompute)."""
    return torch._C._current_graph_task_id() != -1


@dataclass
class RouterCapture:
    """What the MoE routers did in the forwards run inside one context.

    Per layer and per forward: `logits` [S, E] (graph-attached when grad is on),
    `live` [S, k] the router's own top-k choice, `used` [S, k] the experts that ran
    (== live outside replay). Under replay, `live` at layer l is the choice the
    trainer's router makes given the replayed upstream layers.
    """

    n_layers: int
    num_experts: int = 0
    kind: ScoreKind = "softmax"  # router score function (softmax / sigmoid / ...)
    logits: list[list[torch.Tensor]] = field(default_factory=list)
    live: list[list[torch.Tensor]] = field(default_factory=list)
    used: list[list[torch.Tensor]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logits = [[] for _ in range(self.n_layers)]
        self.live = [[] for _ in range(self.n_layers)]
        self.used = [[] for _ in range(self.n_layers)]

    @property
    def n_forwards(self) -> int:
        return len(self.used[0]) if self.n_layers else 0

    def _pick(self, forward: Optional[int]) -> int:
        if self.n_forwards == 0:
            raise GrpoError("no forward pass ran inside the routing context: nothing was captured.")
        if forward is None:
            if self.n_forwards != 1:
                raise GrpoError(f"{self.n_forwards} forwards ran in this context: pass forward=<index>.")
            return 0
        return forward

    def routes(self, forward: Optional[int] = None) -> torch.Tensor:
        """Experts used, [S, L, k] int64 (the record for R2 replay)."""
        f = self._pick(forward)
        return torch.stack([layer[f] for layer in self.used], dim=1)

    def used_indices(self, forward: Optional[int] = None) -> list[torch.Tensor]:
        """Experts used per MoE layer, each [S, k]."""
        f = self._pick(forward)
        return [layer[f] for layer in self.used]

    def live_routes(self, forward: Optional[int] = None) -> torch.Tensor:
        """The routers' own choices, [S, L, k] int64 (for the agreement metric)."""
        f = self._pick(forward)
        return torch.stack([layer[f] for layer in self.live], dim=1)

    def router_logits(self, forward: Optional[int] = None) -> list[torch.Tensor]:
        """Router logits per MoE layer, each [S, E]."""
        f = self._pick(forward)
        if not self.logits[0]:
            raise GrpoError("router logits were not kept: build RoutingReplay(model, keep_logits=True).")
        return [layer[f] for layer in self.logits]


@dataclass
class _Active:
    capture: RouterCapture
    routes: Optional[torch.Tensor]  # [S, L, k] int64 or None (live)
    grad_forward: bool = False  # a forward with autograd on ran in this context


class RoutingReplay:
    """Forward hooks on every MoE router of `model` for replay and capture."""

    def __init__(self, model: nn.Module, keep_logits: bool = True) -> None:
        self.routers: list[RouterInfo] = moe_routers(model)
        if not self.routers:
            raise ConfigError(
                f"{type(model).__name__} has no MoE layers: routing replay and router statistics need an "
                f"MoE policy. Set moe.routing_replay=none for dense models."
            )
        self.keep_logits = keep_logits
        self._active: Optional[_Active] = None
        self._armed = False  # a grad forward replayed: a later recompute outside replay is a bug
        self._handles = [
            r.module.register_forward_hook(self._make_hook(i)) for i, r in enumerate(self.routers)
        ]

    @property
    def n_layers(self) -> int:
        return len(self.routers)

    @property
    def top_k(self) -> int:
        return self.routers[0].top_k

    @property
    def num_experts(self) -> int:
        return self.routers[0].num_experts

    def remove(self) -> None:
        """Uninstall the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextmanager
    def record(self) -> Iterator[RouterCapture]:
        """Route live and capture routes/logits of the forwards run inside."""
        with self._activate(None) as cap:
            yield cap

    @contextmanager
    def replay(self, routes: torch.Tensor) -> Iterator[RouterCapture]:
        """Force the experts in `routes` [S, L, k] (NO_ROUTE rows route live); also capture."""
        with self._activate(self._check_routes(routes)) as cap:
            yield cap

    @contextmanager
    def _activate(self, routes: Optional[torch.Tensor]) -> Iterator[RouterCapture]:
        if self._active is not None:
            raise GrpoError("RoutingReplay contexts do not nest: close the current record()/replay() first.")
        cap = RouterCapture(self.n_layers, self.num_experts, self.routers[0].kind)
        state = _Active(cap, routes)
        self._active, self._armed = state, False
        try:
            yield state.capture
        finally:
            self._active = None
            self._armed = routes is not None and state.grad_forward

    def _check_routes(self, routes: torch.Tensor) -> torch.Tensor:
        if not isinstance(routes, torch.Tensor):
            routes = torch.as_tensor(routes)
        if routes.dtype.is_floating_point or routes.dim() != 3:
            raise ConfigError(f"replay routes must be an integer tensor [S, L, k]; got {routes.dtype} "
                              f"{tuple(routes.shape)}.")
        if routes.shape[1] != self.n_layers or routes.shape[2] != self.top_k:
            raise ConfigError(
                f"replay routes have shape {tuple(routes.shape)} but the model has {self.n_layers} MoE layers "
                f"with top-{self.top_k}: expected [S, {self.n_layers}, {self.top_k}]."
            )
        routes = routes.to(device=self.routers[0].module.weight.device, dtype=torch.long)
        lo, hi = (int(routes.min()), int(routes.max())) if routes.numel() else (0, 0)
        if lo < NO_ROUTE or hi >= self.num_experts:
            raise ConfigError(f"replay routes hold expert ids in [{lo}, {hi}]; valid: 0..{self.num_experts - 1} "
                              f"or {NO_ROUTE} (route live).")
        s = routes.sort(dim=-1).values
        dup = ((s[..., 1:] == s[..., :-1]) & (s[..., 1:] != NO_ROUTE)).any(-1)  # [S, L]
        if dup.any():
            t, layer = (int(v) for v in dup.nonzero()[0])
            raise ConfigError(
                f"replay routes repeat an expert within one token (token {t}, MoE layer {layer}: "
                f"{routes[t, layer].tolist()}): a layout bug, e.g. dense-layer rows not dropped from vLLM's array."
            )
        return routes

    def _make_hook(self, layer: int):
        info = self.routers[layer]

        def hook(module: nn.Module, args, output):
            state = self._active
            if state is None:
                if _in_backward() and self._armed:
                    raise GrpoError(
                        "gradient checkpointing re-ran an MoE router during backward after the "
                        "RoutingReplay.replay() block closed, so the recompute would route live. "
                        "Call loss.backward() inside the `with rr.replay(routes):` block."
                    )
                if not _in_backward():
                    self._armed = False
                return None
            logits, scores, live_idx = output  # [S, E], [S, k], [S, k]
            used = live_idx
            if state.routes is not None:
                used = self._replayed_index(state.routes, layer, live_idx)
                w = gate_weights(module, info.kind, logits, used).to(scores.dtype)
                output = (logits, w, used)
            if _in_backward():  # checkpoint recompute: same routes, nothing new to capture
                return output
            state.grad_forward |= torch.is_grad_enabled()
            cap = state.capture
            cap.live[layer].append(live_idx.detach())
            cap.used[layer].append(used.detach())
            if self.keep_logits:
                cap.logits[layer].append(logits)
            return output

        return hook

    @staticmethod
    def _replayed_index(routes: torch.Tensor, layer: int, live_idx: torch.Tensor) -> torch.Tensor:
        want = routes[:, layer, :]  # [S, k]
        if want.shape[0] != live_idx.shape[0]:
            raise ConfigError(
                f"replay routes cover {want.shape[0]} tokens but the forward has {live_idx.shape[0]} "
                f"(batch * sequence, flattened): lay the routes out per token of this exact batch."
            )
        live_rows = (want == NO_ROUTE).any(dim=-1, keepdim=True)  # [S, 1]
        return torch.where(live_rows, live_idx, want)
