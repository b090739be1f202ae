"""Engine route formats -> replay: vLLM's [N-1, all decoder layers, k] array."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grpo.errors import EngineError
from grpo.models.loader import load_causal_lm, resolve_model
from grpo.moe import NO_ROUTE, RoutingReplay, moe_layer_indices, moe_routers, pad_routes
from rollouts.vllm_routing import from_vllm_routed_experts, routes_of_output


def _vllm_style(routes: torch.Tensor, moe_ids: list[int], n_layers: int) -> np.ndarray:
    """What vLLM returns for these routes: N-1 rows, decoder-layer axis, dense layers unwritten (0), uint8."""
    n, _, k = routes.shape
    arr = np.zeros((n - 1, n_layers, k), dtype=np.uint8)
    arr[:, moe_ids] = routes[:-1].numpy()
    return arr


def test_vllm_array_is_converted_and_replayed_exactly():
    """DeepSeek-V3 tiny (dense layer 0, MoE layers 1-2): the sampler's balancing bias is
    perturbed, so its routing differs; replaying its vLLM-format record reproduces its logprobs."""
    trainer = load_causal_lm(resolve_model("tiny-deepseek_v3")).eval()
    sampler = copy.deepcopy(trainer)
    with torch.no_grad():
        for r in moe_routers(sampler):
            r.module.e_score_correction_bias.add_(torch.randn(r.num_experts) * 0.1)
    ids = torch.randint(5, 100, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), RoutingReplay(sampler).record() as cap:
        lp_sampler = sampler(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])
    moe_ids = moe_layer_indices(trainer)
    recorded = _vllm_style(cap.routes(), moe_ids, trainer.config.num_hidden_layers)  # [39, 3, 2]
    assert recorded.shape == (39, 3, 2)

    routes = from_vllm_routed_experts(recorded, moe_ids, num_tokens=40)  # [40, 2, 2] int16
    assert routes.shape == (40, 2, 2) and routes.dtype == np.int16
    assert (routes[-1] == NO_ROUTE).all()

    rr = RoutingReplay(trainer)
    with torch.no_grad(), rr.replay(torch.from_numpy(routes).long()) as used:
        lp_trainer = trainer(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])
    rr.remove()
    assert torch.equal(used.routes()[:-1], cap.routes()[:-1].sort(-1).values)  # same experts, ids sorted
    torch.testing.assert_close(lp_trainer, lp_sampler, atol=1e-5, rtol=0)


def test_vllm_array_shape_errors():
    arr = np.zeros((9, 3, 2), dtype=np.int32)
    with pytest.raises(EngineError, match="prompt\\+completion-1 = 11"):
        from_vllm_routed_experts(arr, [1, 2], num_tokens=12)
    with pytest.raises(EngineError, match="has 2 MoE layers at decoder indices \\[4, 5\\]"):
        from_vllm_routed_experts(arr, [4, 5])
    moe_only = from_vllm_routed_experts(np.ones((9, 2, 2), dtype=np.int32), [1, 2])  # MoE-only layer axis
    assert moe_only.shape == (10, 2, 2) and (moe_only[:-1] == 1).all()


def test_vllm_output_routes_are_sorted_and_a_missing_record_is_an_error():
    """The GPU engine path: vLLM's CompletionOutput.routed_experts (k ids in router order) -> our
    layout, ids sorted like every engine's; no record (flag off) is an error, not live routing."""
    raw = np.array([[[0, 0], [3, 1], [2, 0]], [[0, 0], [1, 2], [0, 3]]], dtype=np.uint8)  # [2, 3 layers, 2]
    routes = routes_of_output(SimpleNamespace(routed_experts=raw), [1, 2], num_tokens=3)
    assert routes.tolist() == [[[1, 3], [0, 2]], [[1, 2], [0, 3]], [[NO_ROUTE] * 2] * 2]
    with pytest.raises(EngineError, match="enable_return_routed_experts"):
        routes_of_output(SimpleNamespace(routed_experts=None), [1, 2], num_tokens=3)


def test_pad_routes_lays_out_a_right_padded_batch():
    a = np.arange(3 * 2 * 2, dtype=np.int16).reshape(3, 2, 2)
    out = pad_routes([a, None], seq_len=4, n_layers=2, top_k=2)  # [2 * 4, 2, 2]
    assert out.shape == (8, 2, 2) and out.dtype == torch.long
    assert torch.equal(out[:3], torch.from_numpy(a).long())
    assert (out[3:] == NO_ROUTE).all()
