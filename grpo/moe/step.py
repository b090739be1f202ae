"""Glue for the trainer loop: routing replay as `policy_update`'s `forward_hook`, and
the train-vs-rollout KL diagnostics.

    rr = RoutingReplay(policy)                                  # once, after loading
    guard = KLGuard.from_config(cfg.moe)
    for step ...:
        batch = RolloutBatch.from_completions(completions, advantages)
        diag = kl_diagnostics(policy, rr, batch, temperature)   # before the update (engine's weights)
        hook = MoEStepHook(rr, cfg.moe, batch)
        metrics = policy_update(..., forward_hook=hook)
        metrics |= hook.metrics() | diag
        guard.check(diag[trained_kl_key(cfg.moe.routing_replay)], step)

`MoEStepHook(mb, phase)` returns the context `policy_update` enters around each
forward (and, for "train", the backward): R2/R3 replay per `modes.py`, routing
capture for the load / agreement statistics, and `aux_loss` (balance + z-loss)
for the training passes. The "ref" phase routes freely (the reference model keeps
its own routing, as slime does).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Optional

import torch

from grpo.errors import ConfigError
from grpo.moe.losses import router_loss_terms
from grpo.moe.metrics import moe_step_metrics
from grpo.moe.modes import REPLAY_MODES, routing_pass
from grpo.moe.replay import NO_ROUTE, RouterCapture, RoutingReplay


def _rollout_routes(batch, mb) -> Optional[torch.Tensor]:
    """Engine routes laid out like the packed micro-batch: [R*S, L, k] int64, or None."""
    if batch.routed_experts is None:
        return None
    from grpo.packing import layout_token_features

    return layout_token_features(batch.routed_experts, mb, fill=NO_ROUTE).long()


class _Handle:
    """What the hook yields: `aux_loss` is computed on first access, after the forward."""

    def __init__(self, capture: RouterCapture, aux_coef: float, z_coef: float, mask: torch.Tensor, train: bool):
        self.capture, self._coefs, self._mask, self._train = capture, (aux_coef, z_coef), mask, train

    @property
    def aux_loss(self) -> Optional[torch.Tensor]:
        if not self._train or self._coefs == (0.0, 0.0):
            return None
        return router_loss_terms(self.capture, *self._coefs, token_mask=self._mask, forward=-1)["loss"]


class MoEStepHook:
    """`forward_hook` for one `policy_update` call (build a new one per batch)."""

    def __init__(self, rr: RoutingReplay, moe_cfg: Any, batch: Any) -> None:
        mode = moe_cfg.routing_replay
        if mode not in REPLAY_MODES:
            raise ConfigError(f"moe.routing_replay={mode!r}: choose one of {', '.join(REPLAY_MODES)}.")
        self.rr, self.mode, self.batch = rr, mode, batch
        self.aux_coef, self.z_coef = float(moe_cfg.aux_loss_coef), float(moe_cfg.z_loss_coef)
        self._old_routes: dict[int, torch.Tensor] = {}  # id(mb) -> [R*S, L, k] (R2)
        self._seen: set[int] = set()
        self._used, self._live, self._rollout = [], [], []  # per micro-batch, real tokens only

    def __call__(self, mb, phase: str):
        if phase == "ref":
            return nullcontext()
        return self._pass(mb, phase)

    @contextmanager
    def _pass(self, mb, phase: str) -> Iterator[_Handle]:
        rollout = _rollout_routes(self.batch, mb) if self.mode == "r3" or not self._seen_mb(mb) else None
        old = self._old_routes.get(id(mb))
        if self.mode == "r2" and phase == "train" and old is None:
            mode = "none"  # no old pass ran (one update per batch): the train pass *is* pi_old, route live
        else:
            mode = self.mode
        real = (mb.source_seq.reshape(-1) >= 0).to(mb.input_ids.device)  # [R*S]
        ph = "old" if phase == "old" else "train"
        with routing_pass(self.rr, mode, ph, rollout_routes=rollout, old_routes=old) as cap:
            yield _Handle(cap, self.aux_coef, self.z_coef, real.float(), train=phase == "train")
        if self.mode == "r2" and phase == "old":
            self._old_routes[id(mb)] = cap.routes()
        if not self._seen_mb(mb) and cap.n_forwards:
            self._seen.add(id(mb))  # statistics from the first pass over mb: pi_old, the engine's weights
            keep = real.cpu()
            self._used.append(cap.routes(-1).cpu()[keep])
            self._live.append(cap.live_routes(-1).cpu()[keep])
            if rollout is not None:
                self._rollout.append(rollout.cpu()[keep])

    def _seen_mb(self, mb) -> bool:
        return id(mb) in self._seen

    def metrics(self) -> dict[str, float]:
        """Expert load / imbalance over the step's tokens, and rollout-vs-trainer router agreement."""
        if not self._used:
            return {}
        return moe_step_metrics(
            self.rr.num_experts,
            used_routes=torch.cat(self._used),
            rollout_routes=torch.cat(self._rollout) if len(self._rollout) == len(self._used) else None,
            live_routes=torch.cat(self._live),
        )


@torch.no_grad()
def kl_diagnostics(model, rr: RoutingReplay, batch, temperature: float = 1.0, *,
                   micro_batch_tokens: int = 4096, chunk: int = 8192) -> dict[str, float]:
    """Train-vs-rollout KL with the rollout routes replayed and with live routing, plus
    router agreement: two no-grad forwards of the batch. Call before the update, while
    the trainer holds the weights the engine sampled with. Needs sampler logprobs;
    the replay side needs `batch.routed_experts`."""
    from grpo.logprobs import packed_logprobs
    from grpo.packing import pack_micro_batches
    from grpo.update import scatter_tokens

    mbs = pack_micro_batches(batch.prompt_ids, batch.completion_ids, batch.group_ids,
                             micro_batch_tokens=micro_batch_tokens, max_row_tokens=min(micro_batch_tokens, 1024))
    n, t = len(batch), batch.max_completion_len
    lp = {"replay": torch.zeros(n, t), "live": torch.zeros(n, t)}
    rollout_all, live_all = [], []
    was_training = model.training
    model.eval()
    try:
        for mb in mbs:
            real = (mb.source_seq.reshape(-1) >= 0).cpu()
            routes = _rollout_routes(batch, mb)
            if routes is not None:
                with rr.replay(routes):
                    lp["replay"][mb.seq_index] = scatter_tokens(
                        packed_logprobs(model, mb, temperature, chunk)[0].float(), mb, t)
                rollout_all.append(routes[real])
            with rr.record() as cap:
                lp["live"][mb.seq_index] = scatter_tokens(
                    packed_logprobs(model, mb, temperature, chunk)[0].float(), mb, t)
            live_all.append(cap.live_routes().cpu()[real])
    finally:
        model.train(was_training)
    sampler = batch.sampler_logp()  # [N, T], NaN where not recorded
    mask = batch.completion_mask().bool() & ~sampler.isnan()
    return moe_step_metrics(
        rr.num_experts,
        rollout_routes=torch.cat(rollout_all) if rollout_all else None,
        live_routes=torch.cat(live_all),
        logp_rollout=torch.nan_to_num(sampler)[mask],
        logp_replay=lp["replay"][mask] if rollout_all else None,
        logp_live=lp["live"][mask],
    )
