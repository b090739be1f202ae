"""Router controls: balance aux loss, z-loss, freezing, float32 router logits."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from grpo.errors import GrpoError
from grpo.models.loader import load_causal_lm, resolve_model
from grpo.moe import (
    RoutingReplay,
    apply_router_controls,
    force_router_fp32,
    freeze_router,
    load_balancing_loss,
    moe_routers,
    router_loss_terms,
    router_z_loss,
)


@pytest.fixture(scope="module")
def mixtral():
    return load_causal_lm(resolve_model("tiny-mixtral"))


def _ids(b: int = 2, t: int = 16) -> torch.Tensor:
    return torch.randint(5, 100, (b, t), generator=torch.Generator().manual_seed(0))


def test_aux_loss_equals_transformers_without_replay_and_uses_replayed_experts_with_it(mixtral):
    rr = RoutingReplay(mixtral)
    ids = _ids()
    with torch.no_grad(), rr.record() as live:
        mixtral(ids)
    logits = live.router_logits()
    ours = load_balancing_loss(logits, live.used_indices(), rr.num_experts)
    theirs = load_balancing_loss_func(tuple(logits), rr.num_experts, rr.top_k)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    mask = torch.ones(ids.numel())
    mask[::3] = 0
    theirs_masked = load_balancing_loss_func(tuple(logits), rr.num_experts, rr.top_k, attention_mask=mask)
    torch.testing.assert_close(load_balancing_loss(logits, live.used_indices(), rr.num_experts, mask),
                               theirs_masked, atol=1e-6, rtol=1e-6)
    # replay everything onto experts 0 and 1: f_e follows the experts that ran
    routes = torch.tensor([0, 1]).expand(ids.numel(), rr.n_layers, 2)
    with torch.no_grad(), rr.replay(routes) as rep:
        mixtral(ids)
    probs = [torch.softmax(x.float(), -1) for x in rep.router_logits()]
    expected = rr.num_experts * sum((p[:, 0] + p[:, 1]).mean() for p in probs) / rr.n_layers
    torch.testing.assert_close(load_balancing_loss(rep.router_logits(), rep.used_indices(), rr.num_experts),
                               expected, atol=1e-6, rtol=1e-6)
    rr.remove()


def test_router_loss_terms_pin_values_and_train_the_router(mixtral):
    model = copy.deepcopy(mixtral)
    rr = RoutingReplay(model)
    with rr.record() as cap:
        model(_ids())
    logits = cap.router_logits()
    z_manual = torch.cat([torch.logsumexp(x, -1) ** 2 for x in logits]).mean()
    torch.testing.assert_close(router_z_loss(logits), z_manual)
    terms = router_loss_terms(cap, aux_loss_coef=0.01, z_loss_coef=0.001)
    expected = 0.01 * terms["aux_loss"] + 0.001 * terms["z_loss"]
    torch.testing.assert_close(terms["loss"].detach(), expected)
    terms["loss"].backward()
    for r in moe_routers(model):
        assert r.module.weight.grad.abs().sum() > 0
    assert router_loss_terms(cap, 0.0, 0.0)["loss"].item() == 0.0
    with torch.no_grad(), rr.record() as nograd:
        model(_ids())
    with pytest.raises(GrpoError, match="no gradient"):
        router_loss_terms(nograd, 0.01, 0.0)
    rr.remove()


def test_freeze_router_stops_router_gradients_only(mixtral):
    model = copy.deepcopy(mixtral)
    frozen = freeze_router(model)
    assert frozen == ["model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight"]
    model(_ids()).logits.logsumexp(-1).mean().backward()
    for r in moe_routers(model):
        assert r.module.weight.grad is None
    assert model.model.layers[0].mlp.experts.gate_up_proj.grad is not None


def test_router_fp32_in_a_bf16_model(mixtral):
    ref = copy.deepcopy(mixtral)  # float32 reference
    model = copy.deepcopy(mixtral).to(torch.bfloat16)
    summary = apply_router_controls(model, type("Cfg", (), {"router_fp32": True, "freeze_router": False})())
    assert set(summary["router_fp32"].values()) == {"forced float32 (weight kept in float32, input cast)"}
    rr, rr_ref = RoutingReplay(model), RoutingReplay(ref)
    ids = _ids()
    with torch.no_grad(), rr.record() as cap:
        model(ids)
    with torch.no_grad(), rr_ref.record() as cap_ref:
        ref(ids)
    assert all(x.dtype == torch.float32 for x in cap.router_logits())
    assert moe_routers(model)[0].module.weight.dtype == torch.float32
    # logits now carry only the bf16 error of the hidden states, not of the router matmul too
    err = max((a - b).abs().max().item() for a, b in zip(cap.router_logits(), cap_ref.router_logits()))
    assert err < 0.05, err
    ds = load_causal_lm(resolve_model("tiny-deepseek_v3"))
    assert all("already float32" in v for v in force_router_fp32(ds).values())
