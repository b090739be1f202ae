"""Trainer (in-memory HF) names -> checkpoint names, and the safetensors writer."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from grpo.errors import EngineError
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
