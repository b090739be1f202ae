"""R3 end to end: the routes recorded by the engine that sampled are replayed in the
trainer's packed training forward, and the experts that run there are exactly those."""

from __future__ import annotations

import pytest
import torch

from grpo.batch import RolloutBatch
from grpo.logprobs import packed_logprobs
from grpo.models.loader import load_causal_lm
from grpo.moe import NO_ROUTE, RoutingReplay
from grpo.moe.step import kl_diagnostics
from grpo.packing import layout_token_features, pack_micro_batches
from rollouts import SamplingConfig, make_engine

pytestmark = pytest.mark.integration

PROMPTS = ["What is 12 + 7?", "Name a colour.", "Count to five:"]
G = 2


@pytest.fixture(scope="module", params=["hf", "vllm"])
def sampled(request, tiny_dirs):
    """(model dir, completions with routing) from one engine kind."""
    if request.param == "vllm":
        request.getfixturevalue("vllm_required")  # fails without vLLM: this tier tests the real engine
    folder = tiny_dirs["mixtral"]
    engine = make_engine(request.param, folder, max_model_len=256, max_num_seqs=8, seed=0)
    try:
        comps = engine.generate(PROMPTS, G, SamplingConfig(temperature=1.0, max_tokens=16), return_routing=True)
    finally:
        engine.shutdown()
    return request.param, folder, comps


def test_engine_routes_are_the_experts_of_the_training_forward(sampled):
    kind, folder, comps = sampled
    trainer = load_causal_lm(folder)
    rr = RoutingReplay(trainer)
    for c in comps:
        n = len(c.prompt_ids) + len(c.completion_ids)
        assert c.routed_experts is not None and c.routed_experts.shape == (n, rr.n_layers, rr.top_k)
        assert (c.routed_experts[:-1] != NO_ROUTE).all(), "every forwarded token has a record"
    batch = RolloutBatch.from_completions(comps, advantages=torch.ones(len(comps)))
    seen: list[torch.Tensor] = []
    experts = [m for name, m in trainer.named_modules() if name.endswith("mlp.experts")]
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[1].detach().clone())) for m in experts]
    checked = 0
    try:
        for mb in pack_micro_batches(batch.prompt_ids, batch.completion_ids, batch.group_ids, shared_prompt=True):
            routes = layout_token_features(batch.routed_experts, mb, fill=NO_ROUTE).long()  # [R*S, L, k]
            seen.clear()
            with rr.replay(routes):
                logp, _ = packed_logprobs(trainer, mb)
                (-logp.sum()).backward()  # the training forward + backward
            used = torch.stack(seen[: rr.n_layers], dim=1)  # [R*S, L, k] as the experts received them
            recorded = (routes != NO_ROUTE).all(-1)
            assert recorded.any()
            assert torch.equal(used[recorded], routes[recorded])
            checked += int(recorded.sum())
    finally:
        for h in hooks:
            h.remove()
    assert all(r.module.weight.grad is not None for r in rr.routers)
    diag = kl_diagnostics(trainer, rr, batch)
    rr.remove()
    print(f"\n[{kind}] {checked} (token, layer) routes replayed exactly; "
          + ", ".join(f"{k}={v:.3g}" for k, v in sorted(diag.items())))
    assert diag["moe/kl_rollout_replay"] < 1e-3  # same weights, fp32: engine and trainer agree
