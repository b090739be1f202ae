"""Trainer (in-memory HF) names -> checkpoint names, and the safetensors writer."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from grpo.errors import EngineError
from rollouts import make_engine
from rollouts.safetensors_io import write_safetensors
from rollouts.weights import CheckpointNamer, clean_name, policy_weights


def checkpoint(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe", "qwen2_moe", "llama"])
def test_fused_experts_convert_back_to_checkpoint_names_and_values(arch, tiny_dirs):
    from grpo.models.loader import load_causal_lm

    folder = tiny_dirs[arch]
    model = load_causal_lm(folder)
    names = dict(model.named_parameters())
    if arch != "llama":  # transformers 5 keeps experts fused in memory
        assert any(n.endswith("experts.gate_up_proj") for n in names)
    out = dict(CheckpointNamer(folder)(model.named_parameters()))
    ref = checkpoint(folder)
    assert set(out) == set(ref)
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_checkpoint_names_pass_through(tiny_dirs):
    folder = tiny_dirs["mixtral"]
    ref = checkpoint(folder)
    out = dict(CheckpointNamer(folder)(ref.items()))
    assert set(out) == set(ref) and all(torch.equal(out[k], ref[k]) for k in ref)


def test_wrapper_prefixes_and_lora_factors():
    assert clean_name("module._orig_mod.model.norm.weight") == "model.norm.weight"
    assert clean_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.layers.0.self_attn.q_proj.weight"
    assert clean_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") is None
    assert clean_name("base_model.model.lm_head.modules_to_save.default.weight") == "lm_head.weight"
    assert clean_name("base_model.model.lm_head.original_module.weight") is None


def test_policy_weights_include_persistent_buffers(tiny_dirs):
    from grpo.models.loader import load_causal_lm

    model = load_causal_lm(tiny_dirs["deepseek_v3"])
    with policy_weights(model) as items:
        names = {n for n, _ in items}
    assert any(n.endswith("e_score_correction_bias") for n in names)  # a buffer, not a parameter
    assert not any("inv_freq" in n for n in names)  # non-persistent buffers are not weights
    out = dict(CheckpointNamer(tiny_dirs["deepseek_v3"])(items))
    assert set(out) == set(checkpoint(tiny_dirs["deepseek_v3"]))


def test_persistent_buffers_reach_the_engine(tiny_dirs):
    """DeepSeek-V3's router bias is a persistent buffer: `named_parameters()` (what the loop used to push)
    misses it, so an engine kept its own bias and routed differently from the policy."""
    from grpo.models.loader import load_causal_lm

    folder = tiny_dirs["deepseek_v3"]
    trainer = load_causal_lm(folder)
    bias = {n: b for n, b in trainer.named_buffers() if n.endswith("e_score_correction_bias")}
    assert bias and not bias.keys() & {n for n, _ in trainer.named_parameters()}
    with torch.no_grad():
        for b in bias.values():
            b.add_(torch.randn(b.shape, generator=torch.Generator().manual_seed(0)))
    engine = make_engine("hf", folder, max_model_len=64)
    assert not any(torch.equal(dict(engine.model.named_buffers())[n], b) for n, b in bias.items())
    with policy_weights(trainer) as weights:
        engine.update_weights(weights)
    synced = dict(engine.model.named_buffers())
    assert all(torch.equal(synced[n], b) for n, b in bias.items())


def test_peft_policy_is_pushed_merged_then_unmerged(tiny_dirs):
    from peft import LoraConfig, get_peft_model

    from grpo.models.loader import load_causal_lm

    folder = tiny_dirs["llama"]
    policy = get_peft_model(load_causal_lm(folder), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    q = policy.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        q.lora_B.default.weight.normal_(generator=torch.Generator().manual_seed(0))
    base = q.base_layer.weight.detach().clone()
    merged = base + 2.0 * q.lora_B.default.weight @ q.lora_A.default.weight  # scaling = alpha / r
    engine = make_engine("hf", folder, max_model_len=64)
    with policy_weights(policy) as weights:
        engine.update_weights(weights)
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(dict(engine.model.named_parameters())[name], merged)
    torch.testing.assert_close(q.base_layer.weight, base)  # unmerged again (to rounding): training goes on


def test_empty_update_is_an_error(tiny_dirs):
    with pytest.raises(EngineError, match="no tensors"):
        CheckpointNamer(tiny_dirs["llama"])([])


def test_streamed_safetensors_roundtrip(tmp_path):
    fused = torch.randn(4, 6, 3)
    tensors = [("a", fused[:, :3][1]), ("b", fused[2]), ("c", torch.randn(5).to(torch.bfloat16)),
               ("d", torch.arange(7)), ("e", torch.tensor(1.5))]
    write_safetensors(tmp_path / "w.safetensors", tensors)
    back = load_file(str(tmp_path / "w.safetensors"))
    assert all(torch.equal(back[n], t) for n, t in tensors)
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert set(f.keys()) == {"a", "b", "c", "d", "e"}
