"""Foundation: loader errors, upcycling preserves the dense function, tiny models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo.errors import ModelLoadError
from grpo.models.loader import resolve_model
from grpo.models.upcycle import upcycle


def _logits(folder, ids):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("style", ["mixtral", "qwen2_moe"])
def test_upcycled_moe_computes_the_dense_function(tiny_dirs, tmp_path, style):
    dense = tiny_dirs["llama"]
    out = upcycle(dense, tmp_path / style, num_experts=4, top_k=2, style=style)
    ids = torch.randint(5, 100, (2, 24))
    diff = (_logits(out, ids) - _logits(dense, ids)).abs().max().item()
    assert diff < 1e-5, f"{style} upcycle changed logits by {diff}"
    cfg = AutoModelForCausalLM.from_pretrained(out).config
    assert cfg.model_type == style


def test_router_gets_gradient_only_once_experts_differ(tiny_dirs, tmp_path):
    out = upcycle(tiny_dirs["llama"], tmp_path / "moe", num_experts=4, top_k=2)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(5, 100, (2, 16))

    def router_grad_norm() -> float:
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return sum(m.gate.weight.grad.norm().item() for m in _moe_blocks(model))

    assert router_grad_norm() < 1e-6  # identical experts: output independent of gate weights
    with torch.no_grad():  # what one optimiser step does: experts drift apart
        for m in _moe_blocks(model):
            m.experts.down_proj.add_(torch.randn_like(m.experts.down_proj) * 0.01)
    assert router_grad_norm() > 1e-4


def _moe_blocks(model):
    return [layer.mlp for layer in model.model.layers]


def test_upcycle_rejects_bad_arguments(tiny_dirs, tmp_path):
    with pytest.raises(ModelLoadError, match="experts >= 2"):
        upcycle(tiny_dirs["llama"], tmp_path / "x", num_experts=1, top_k=1)
    with pytest.raises(ModelLoadError, match="Llama-family"):
        upcycle(tiny_dirs["mixtral"], tmp_path / "y", num_experts=4, top_k=2)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        resolve_model(str(tmp_path / "nope"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_truncated_safetensors_is_detected(tiny_dirs, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs["llama"], broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        resolve_model(str(broken))
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        resolve_model(str(broken))


def test_gguf_of_unsupported_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_tensor("dummy", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="architecture 'bert'.*not supported"):
        resolve_model(str(path))


def test_gguf_that_is_not_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        resolve_model(str(path))


def test_hub_id_offline_names_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="'Qwen/Qwen3-0.6B'.*HF_HUB_OFFLINE"):
        resolve_model("Qwen/Qwen3-0.6B")


def test_unknown_tiny_arch():
    with pytest.raises(ModelLoadError, match="unknown tiny model"):
        resolve_model("tiny-gpt9")


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe", "deepseek_v3"])
def test_tiny_moe_models_are_small_and_route(tiny_dirs, arch):
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch])
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 5_000_000
    out = model(torch.randint(5, 100, (1, 8)), output_router_logits=True)
    assert out.router_logits is not None and len(out.router_logits) >= 1


def test_cli_help_does_not_import_torch_or_vllm():
    # What keeps `grpo --help` instant (no timing assertion: machines are noisy).
    code = (
        "import sys; from grpo.cli import main\n"
        "try: main(['train', '--help'])\nexcept SystemExit: pass\n"
        "assert 'torch' not in sys.modules and 'vllm' not in sys.modules, 'heavy import in CLI'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "algo.beta" in out.stdout and "KL coefficient" in out.stdout
