"""Routing replay wired into `policy_update` through its forward_hook, on packed
(shared-prompt) micro-batches, plus the KL diagnostics the trainer logs."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from grpo.batch import RolloutBatch
from grpo.config import AlgoConfig, MoEConfig, OptimConfig
from grpo.models.loader import load_causal_lm, resolve_model
from grpo.moe import NO_ROUTE, RoutingReplay, moe_routers
from grpo.moe.step import MoEStepHook, kl_diagnostics
from grpo.packing import layout_token_features
from grpo.update import policy_update
from rollouts.types import Completion

P, C, G = 8, 10, 2  # prompt length, completion length, group size


@pytest.fixture(scope="module")
def setup():
    """Trainer (near-uniform routers) and 4 completions 'sampled' by a router-perturbed copy,
    with the sampler's routes and logprobs as an engine returns them."""
    trainer = load_causal_lm(resolve_model("tiny-mixtral"))
    with torch.no_grad():
        for r in moe_routers(trainer):
            r.module.weight.mul_(0.1)
    sampler = copy.deepcopy(trainer).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for r in moe_routers(sampler):
            r.module.weight.add_(torch.randn(r.module.weight.shape, generator=g) * r.module.weight.std() * 0.1)
    rs = RoutingReplay(sampler)
    comps = []
    for i in range(2 * G):
        prompt = torch.randint(5, 100, (P,), generator=torch.Generator().manual_seed(i // G)).tolist()
        completion = torch.randint(5, 100, (C,), generator=torch.Generator().manual_seed(10 + i)).tolist()
        ids = torch.tensor([prompt + completion])
        with torch.no_grad(), rs.record() as cap:
            logp = sampler(ids).logits[0].log_softmax(-1)
        lps = logp[P - 1:-1].gather(-1, ids[0, P:, None])[:, 0].tolist()
        routes = cap.routes().numpy().astype(np.int16)
        routes[-1] = NO_ROUTE  # the engine never forwards the last sampled token
        comps.append(Completion(i // G, prompt, completion, lps, "", "length", routed_experts=routes))
    return trainer, comps


def _run(trainer, comps, mode: str, iterations: int, lr: float):
    model = copy.deepcopy(trainer)
    rr = RoutingReplay(model)
    batch = RolloutBatch.from_completions(comps, advantages=[1.0, -1.0, 0.5, -0.5])
    hook = MoEStepHook(rr, MoEConfig(routing_replay=mode, aux_loss_coef=0.01), batch)
    passes = []

    def forward_hook(mb, phase):
        @contextmanager
        def ctx():
            with hook(mb, phase) as h:
                yield h
            passes.append((phase, mb, h.capture))
        return ctx()

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    metrics = policy_update(model, opt, None, batch, AlgoConfig(num_iterations=iterations),
                            OptimConfig(micro_batch_tokens=4096), forward_hook=forward_hook)
    rr.remove()
    return model, batch, passes, metrics, hook.metrics()


def test_r3_training_forward_uses_the_engine_routes_on_packed_batches(setup):
    trainer, comps = setup
    _, batch, passes, metrics, moe = _run(trainer, comps, "r3", iterations=1, lr=1e-3)
    train = [(mb, cap) for phase, mb, cap in passes if phase == "train"]
    assert train and metrics["nonfinite"] == 0.0
    for mb, cap in train:
        want = layout_token_features(batch.routed_experts, mb, fill=NO_ROUTE).long()  # [R*S, L, k]
        recorded = (want != NO_ROUTE).all(-1)  # [R*S, L]
        assert recorded.sum() > 0.8 * (mb.source_seq >= 0).sum() * want.shape[1]
        assert torch.equal(cap.routes()[recorded], want[recorded])
    assert moe["moe/router_agreement"] < 1.0  # the sampler did route differently
    assert {"moe/load_entropy", "moe/imbalance_max_over_mean", "moe/load/layer1/expert3"} <= moe.keys()


def test_r2_replays_the_old_pass_routing_in_later_iterations(setup):
    trainer, comps = setup
    _, _, passes, metrics, _ = _run(trainer, comps, "r2", iterations=2, lr=5.0)  # big steps: routes move
    old = {id(mb): cap.routes() for phase, mb, cap in passes if phase == "old"}
    train = [(mb, cap) for phase, mb, cap in passes if phase == "train"]
    assert old and len(train) == 2 * len(old) and metrics["iterations"] == 2.0
    for mb, cap in train:
        assert torch.equal(cap.routes(), old[id(mb)])
    last = train[-1][1]
    assert not torch.equal(last.live_routes(), last.routes())  # after a step, live routing had moved


def test_kl_diagnostics_replay_closes_the_gap(setup):
    trainer, comps = setup
    batch = RolloutBatch.from_completions(comps, advantages=[1.0, -1.0, 0.5, -0.5])
    rr = RoutingReplay(trainer)
    d = kl_diagnostics(trainer, rr, batch)
    rr.remove()
    print({k: round(v, 6) for k, v in d.items()})
    assert d["moe/logprob_absdiff_live"] >= 10 * d["moe/logprob_absdiff_replay"]
    assert d["moe/kl_rollout_live"] > d["moe/kl_rollout_replay"] >= 0.0
    assert 0.5 < d["moe/router_agreement"] < 1.0
