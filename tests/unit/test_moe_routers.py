"""Router discovery, layer mapping, unsupported architectures, route validation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from grpo.errors import ConfigError
from grpo.models.loader import load_causal_lm, resolve_model
from grpo.moe import NO_ROUTE, RoutingReplay, moe_layer_indices, moe_layers

_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _tiny_from_config(model_type: str, **kw):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, **{**_SMALL, **kw})
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_dense_layers_are_skipped_in_layer_order():
    ds = load_causal_lm(resolve_model("tiny-deepseek_v3"))  # first_k_dense_replace=1
    assert moe_layer_indices(ds) == [1, 2]
    assert [type(m).__name__ for m in moe_layers(ds)] == ["DeepseekV3TopkRouter"] * 2
    qwen = _tiny_from_config("qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                             num_hidden_layers=4, mlp_only_layers=[1], decoder_sparse_step=1)
    assert moe_layer_indices(qwen) == [0, 2, 3]
    sparse_step = _tiny_from_config("qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                    shared_expert_intermediate_size=16, num_hidden_layers=4,
                                    decoder_sparse_step=2, mlp_only_layers=[])
    assert moe_layer_indices(sparse_step) == [1, 3]


def test_unsupported_moe_architecture_names_class_and_supported_list():
    model = _tiny_from_config("phimoe", num_local_experts=4, num_experts_per_tok=2)
    with pytest.raises(ConfigError) as err:
        RoutingReplay(model)
    msg = str(err.value)
    assert "PhimoeForCausalLM" in msg and "PhimoeTopKRouter" in msg
    assert "MixtralTopKRouter" in msg and "DeepseekV3TopkRouter" in msg and "routing_replay=none" in msg


def test_dense_model_is_refused_with_advice():
    with pytest.raises(ConfigError, match="no MoE layers.*routing_replay=none"):
        RoutingReplay(load_causal_lm(resolve_model("tiny-llama")))


@pytest.mark.parametrize("model_type,kw", [
    ("olmoe", dict(num_experts=4, num_experts_per_tok=2, norm_topk_prob=False)),
    ("gpt_oss", dict(num_local_experts=4, num_experts_per_tok=2, head_dim=8)),
])
def test_other_supported_routers_replay_exactly(model_type, kw):
    """OLMoE (softmax, no renorm) and GPT-OSS (softmax over the k logits): replaying
    the model's own routes reproduces its forward; foreign routes are the ones used."""
    model = _tiny_from_config(model_type, **kw)
    ids = torch.randint(3, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    rr = RoutingReplay(model)
    with torch.no_grad(), rr.record() as cap:
        ref = model(ids).logits
    with torch.no_grad(), rr.replay(cap.routes()):
        again = model(ids).logits
    shifted = (cap.routes() + 1) % rr.num_experts  # a valid, different routing
    with torch.no_grad(), rr.replay(shifted) as used:
        other = model(ids).logits
    rr.remove()
    torch.testing.assert_close(again, ref, atol=1e-6, rtol=0)
    assert torch.equal(used.routes(), shifted)
    assert (other - ref).abs().max() > 1e-4


@pytest.fixture(scope="module")
def mixtral():
    model = load_causal_lm(resolve_model("tiny-mixtral"))
    rr = RoutingReplay(model)
    yield model, rr
    rr.remove()


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(8, 3, 2, dtype=torch.long), r"expected \[S, 2, 2\]"),
    (torch.zeros(8, 2, 2), "integer tensor"),
    (torch.full((8, 2, 2), 4), r"valid: 0\.\.3"),
    (torch.zeros(8, 2, 2, dtype=torch.long), "repeat an expert"),
])
def test_invalid_routes_are_refused(mixtral, bad, match):
    _, rr = mixtral
    with pytest.raises(ConfigError, match=match):
        with rr.replay(bad):
            pass


def test_route_count_must_match_the_forward(mixtral):
    model, rr = mixtral
    with pytest.raises(ConfigError, match="cover 5 tokens but the forward has 12"):
        with torch.no_grad(), rr.replay(torch.full((5, 2, 2), NO_ROUTE)):
            model(torch.randint(3, 50, (2, 6)))
