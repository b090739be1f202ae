"""The in-process vLLM engine against transformers: logprobs, weight sync, seeds, routing."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from grpo.errors import EngineError
from grpo.models.loader import load_causal_lm
from rollouts import NO_ROUTE, SamplingConfig
from rollouts.hf_routing import agreement, hf_routing
from rollouts.prompts import encode_prompts
from rollouts.reference import max_logprob_error

pytestmark = pytest.mark.integration

PROMPTS = ["What is 12 + 7?", [{"role": "user", "content": "Name a colour."}], "Count to five:"]
G = 4


def perturb(model, scale: float = 0.02, seed: int = 1):
    """What an optimiser step does to the weights, in spirit: every parameter moves."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def routing_agreement(model, completions) -> float:
    refs = hf_routing(model, [c.prompt_ids + c.completion_ids for c in completions])
    pairs = [agreement(c.routed_experts, r) for c, r in zip(completions, refs)]
    return sum(a for a, _ in pairs) / sum(n for _, n in pairs)


def test_group_sampling_returns_b_times_g_records_in_prompt_order(vllm_engine, tiny_dirs):
    engine = vllm_engine(tiny_dirs["llama"])
    out = engine.generate(PROMPTS, G, SamplingConfig(temperature=1.0, max_tokens=16))
    assert [c.prompt_index for c in out] == [i for i in range(len(PROMPTS)) for _ in range(G)]
    encoded = encode_prompts(engine.tokenizer, PROMPTS)
    for c in out:
        assert c.prompt_ids == encoded[c.prompt_index]
        assert len(c.logprobs) == len(c.completion_ids) >= 1 and all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length")
        assert c.truncated == (len(c.completion_ids) == 16 and c.completion_ids[-1] != engine.tokenizer.eos_token_id)
        assert c.text == engine.tokenizer.decode(c.completion_ids, skip_special_tokens=True)
        assert c.routed_experts is None


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_logprobs_match_transformers_after_weight_update(arch, vllm_engine, tiny_dirs, restore_weights):
    engine = vllm_engine(tiny_dirs[arch])
    trainer = load_causal_lm(tiny_dirs[arch])
    s = SamplingConfig(temperature=0.9, max_tokens=24)
    before = engine.generate(PROMPTS, G, s)
    assert max_logprob_error(trainer, before, 0.9) < 1e-3
    perturb(trainer)
    assert max_logprob_error(trainer, before, 0.9) > 1e-2, "the perturbation must be visible"
    if arch == "mixtral":  # fused experts take the direct prepack path (vllm_fast_experts.py)
        from rollouts.weights import clean_tensors

        fused, _ = engine._experts.split(clean_tensors(trainer.named_parameters()))
        assert sorted(fused) == engine.moe_layer_ids
    with restore_weights(engine):
        t0 = time.perf_counter()
        engine.update_weights(trainer.named_parameters())  # in-memory names (fused experts for MoE)
        print(f"\n[{arch}] weight update {time.perf_counter() - t0:.3f} s")
        after = engine.generate(PROMPTS, G, s, return_routing=arch == "mixtral")
        assert max_logprob_error(trainer, after, 0.9) < 1e-3
        if arch == "mixtral":
            assert routing_agreement(trainer, after) >= 0.95
    restored = engine.generate(PROMPTS, G, s)
    assert max_logprob_error(load_causal_lm(tiny_dirs[arch]), restored, 0.9) < 1e-3


def test_logprobs_are_pre_truncation_with_top_k_top_p(vllm_engine, tiny_dirs):
    engine = vllm_engine(tiny_dirs["llama"])
    trainer = load_causal_lm(tiny_dirs["llama"])
    out = engine.generate(PROMPTS, G, SamplingConfig(temperature=0.7, top_p=0.8, top_k=20, max_tokens=16))
    assert max_logprob_error(trainer, out, 0.7) < 1e-3  # log-softmax(logits / T), not the truncated one


def test_seed_makes_sampling_reproducible(vllm_engine, tiny_dirs):
    engine = vllm_engine(tiny_dirs["llama"])
    ids = lambda xs: [x.completion_ids for x in xs]  # noqa: E731
    a = engine.generate(PROMPTS, G, SamplingConfig(max_tokens=16, seed=11))
    b = engine.generate(PROMPTS, G, SamplingConfig(max_tokens=16, seed=11))
    c = engine.generate(PROMPTS, G, SamplingConfig(max_tokens=16, seed=12))
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert len({tuple(x.completion_ids) for x in a}) > 1, "the G samples of a group differ"
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    engine.generate(PROMPTS, G, SamplingConfig(max_tokens=4))
    assert torch.equal(torch.rand(1), expected), "the trainer's RNG stream is untouched"


def test_routed_experts_match_transformers_router(vllm_engine, tiny_dirs):
    engine = vllm_engine(tiny_dirs["mixtral"])
    trainer = load_causal_lm(tiny_dirs["mixtral"])
    s = SamplingConfig(temperature=1.0, max_tokens=20)
    for _ in range(2):  # the second call's prompts were cached by the first: rows must still be complete
        out = engine.generate(PROMPTS, G, s, return_routing=True)
        for c in out:
            n = len(c.prompt_ids) + len(c.completion_ids)
            r = c.routed_experts
            assert r.shape == (n, len(engine.moe_layer_ids), 2) and r.dtype == np.int16
            assert (r[-1] == NO_ROUTE).all(), "the last sampled token is never fed back"
            assert (r[:-1] >= 0).all() and (r[:-1] < 4).all(), "one record per token per MoE layer"
        share = routing_agreement(trainer, out)
        print(f"\n[mixtral] routing agreement with transformers: {share:.4f}")
        assert share >= 0.95


def test_request_errors_say_what_to_do(vllm_engine, tiny_dirs):
    engine = vllm_engine(tiny_dirs["llama"])
    with pytest.raises(EngineError, match="prompt 0 has .* tokens.*raise max_model_len"):
        engine.generate(["x" * 600], G, SamplingConfig(max_tokens=16))
    with pytest.raises(EngineError, match="group_size=1"):
        engine.generate(PROMPTS, 1, SamplingConfig(temperature=1.0))
