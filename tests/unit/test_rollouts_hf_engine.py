"""HFEngine on the tiny models: the reference engine's outputs and contracts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grpo.errors import EngineError
from rollouts import NO_ROUTE, SamplingConfig, make_engine
from rollouts.hf_routing import agreement, hf_routing
from rollouts.reference import max_logprob_error

PROMPTS = ["What is 2+3?", [{"role": "user", "content": "Name a colour."}], "abc"]


@pytest.fixture(scope="module")
def llama(tiny_dirs):
    return make_engine("hf", tiny_dirs["llama"], max_model_len=128, max_num_seqs=8, seed=0)


@pytest.fixture(scope="module")
def mixtral(tiny_dirs):
    return make_engine("hf", tiny_dirs["mixtral"], max_model_len=128, max_num_seqs=8, seed=0)


def test_group_records_in_prompt_order(llama):
    s = SamplingConfig(temperature=1.0, max_tokens=12)
    out = llama.generate(PROMPTS, 4, s)
    assert [c.prompt_index for c in out] == [0] * 4 + [1] * 4 + [2] * 4
    from rollouts.prompts import encode_prompts

    enc = encode_prompts(llama.tokenizer, PROMPTS)
    for c in out:
        assert c.prompt_ids == enc[c.prompt_index]
        assert len(c.logprobs) == len(c.completion_ids) >= 1
        assert c.finish_reason in ("stop", "length")
        if c.finish_reason == "length":
            assert len(c.completion_ids) == 12
        else:
            assert c.completion_ids[-1] in llama.eos_ids
        assert c.text == llama.tokenizer.decode(c.completion_ids, skip_special_tokens=True)


@pytest.mark.parametrize("temperature,top_p", [(0.7, 1.0), (0.7, 0.8), (0.0, 1.0)])
def test_logprobs_are_the_tempered_distribution(llama, temperature, top_p):
    out = llama.generate(PROMPTS, 2, SamplingConfig(temperature=temperature, top_p=top_p, max_tokens=10))
    assert max_logprob_error(llama.model, out, temperature) < 1e-4


def test_seed_reproduces_and_differs(llama):
    a = llama.generate(PROMPTS, 3, SamplingConfig(max_tokens=10, seed=7))
    b = llama.generate(PROMPTS, 3, SamplingConfig(max_tokens=10, seed=7))
    c = llama.generate(PROMPTS, 3, SamplingConfig(max_tokens=10, seed=8))
    ids = lambda xs: [x.completion_ids for x in xs]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    llama.generate(PROMPTS, 2, SamplingConfig(max_tokens=4))
    assert torch.equal(torch.rand(1), before), "the caller's RNG stream is left untouched"


def test_stop_string_ends_with_reason_stop(llama):
    out = llama.generate(["abc"], 4, SamplingConfig(temperature=1.0, max_tokens=40, stop=("e",)))
    for c in out:
        if "e" in c.text:
            assert c.finish_reason == "stop" and c.text.endswith("e") and c.text.count("e") == 1


def test_routing_one_row_per_token_and_layer(mixtral):
    out = mixtral.generate(PROMPTS, 2, SamplingConfig(max_tokens=8), return_routing=True)
    for c in out:
        n = len(c.prompt_ids) + len(c.completion_ids)
        assert c.routed_experts.shape == (n, len(mixtral.moe_layer_ids), 2)
        assert c.routed_experts.dtype == np.int16
        assert (c.routed_experts[-1] == NO_ROUTE).all() and (c.routed_experts[:-1] >= 0).all()
        rows = c.routed_experts[:-1]
        assert (rows[..., 0] < rows[..., 1]).all(), "two distinct experts per token, sorted"
    # a single-sequence forward picks the same experts as the batched one
    single = hf_routing(mixtral.model, [out[0].prompt_ids + out[0].completion_ids], batch_size=1)[0]
    same, total = agreement(out[0].routed_experts, single)
    assert same == total > 0
    assert mixtral.generate(PROMPTS, 2, SamplingConfig(max_tokens=4))[0].routed_experts is None


def test_update_weights_changes_the_policy(tiny_dirs):
    from grpo.models.loader import load_causal_lm

    engine = make_engine("hf", tiny_dirs["mixtral"], max_model_len=128, max_num_seqs=8)
    trainer = load_causal_lm(tiny_dirs["mixtral"])
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.update_weights(trainer.named_parameters())
    out = engine.generate(PROMPTS, 2, SamplingConfig(max_tokens=8))
    assert max_logprob_error(trainer, out, 1.0) < 1e-4
    with pytest.raises(EngineError, match="not parameters"):
        engine.update_weights([("model.nope.weight", torch.zeros(1))])


def test_engine_on_the_trainers_model_shares_weights(tiny_dirs):
    from grpo.models.loader import load_causal_lm, load_tokenizer

    trainer, tok = load_causal_lm(tiny_dirs["llama"]), load_tokenizer(tiny_dirs["llama"])
    engine = make_engine("hf", tiny_dirs["llama"], model=trainer, tokenizer=tok)
    engine.update_weights(trainer.named_parameters())  # same tensors: a no-op
    assert engine.model is trainer and engine.tokenizer is tok  # taken from the caller, not reloaded


def test_unknown_kind():
    with pytest.raises(EngineError, match="unknown engine kind"):
        make_engine("sglang", "x")
