"""Dense -> MoE sparse upcycling (Komatsuzaki et al., arXiv 2212.05055).

Every expert starts as an exact copy of the dense FFN it replaces; attention,
norms and embeddings are copied unchanged. Two output architectures, both
loadable by transformers and vLLM:

- "mixtral": `MixtralForCausalLM`, E experts, top-k. Mixtral always renormalises
  the top-k gate weights to sum to 1, so with identical experts
  y = sum_k w_k FFN(x) = FFN(x) for *any* router: the dense function is preserved
  exactly (up to float rounding) whatever the router's initialisation.
- "qwen2_moe": `Qwen2MoeForCausalLM` with a shared expert. Routed experts are FFN
  copies with `down_proj` halved and `norm_topk_prob=True` (they sum to FFN/2);
  the shared expert is the FFN and its sigmoid gate is zero-initialised, so it
  contributes sigmoid(0) * FFN = FFN/2. Total: FFN(x) again.

Router initialisation: N(0, initializer_range^2) from a fixed seed, i.e. close to
uniform routing probabilities, so tokens spread across experts from the start.

Why the router receives gradient: at initialisation it receives *none*. With
identical experts the output does not depend on the gate weights (they sum to
1), so dL/d(router) = 0 exactly. The first optimiser step changes each expert
differently (an expert's gradient only comes from the tokens routed to it, scaled
by their gate weight), after which y = sum_k w_k FFN_k(x) depends on w and the
router is trained like any other layer. RL from an upcycled model therefore
starts as dense RL and lets experts specialise through routing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from grpo.errors import ModelLoadError

UpcycleStyle = Literal["mixtral", "qwen2_moe"]
_SHARED_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range",
)


def _moe_config(dense_cfg, style: UpcycleStyle, num_experts: int, top_k: int):
    from transformers import MixtralConfig, Qwen2MoeConfig

    common = {k: getattr(dense_cfg, k) for k in _SHARED_CONFIG_KEYS if hasattr(dense_cfg, k)}
    head_dim = getattr(dense_cfg, "head_dim", None) or dense_cfg.hidden_size // dense_cfg.num_attention_heads
    if head_dim * dense_cfg.num_attention_heads != dense_cfg.hidden_size:
        raise ModelLoadError("upcycling needs head_dim * num_attention_heads == hidden_size.")
    if style == "mixtral":
        return MixtralConfig(
            **common, intermediate_size=dense_cfg.intermediate_size, num_local_experts=num_experts,
            num_experts_per_tok=top_k, router_jitter_noise=0.0, router_aux_loss_coef=0.0,
            output_router_logits=False, sliding_window=None, head_dim=head_dim, dtype="float32",
        )
    if style == "qwen2_moe":
        return Qwen2MoeConfig(
            **common, intermediate_size=dense_cfg.intermediate_size,
            moe_intermediate_size=dense_cfg.intermediate_size,
            shared_expert_intermediate_size=dense_cfg.intermediate_size,
            num_experts=num_experts, num_experts_per_tok=top_k, norm_topk_prob=True,
            decoder_sparse_step=1, mlp_only_layers=[], qkv_bias=True, use_sliding_window=False,
            router_aux_loss_coef=0.0, output_router_logits=False, dtype="float32",
        )
    raise ModelLoadError(f"unknown upcycling style {style!r}: use 'mixtral' or 'qwen2_moe'.")


def _check_dense(cfg) -> None:
    if cfg.model_type not in ("llama", "mistral", "qwen2", "qwen3"):
        raise ModelLoadError(
            f"upcycling supports Llama-family dense models; got model_type={cfg.model_type!r}."
        )
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ModelLoadError("upcycling needs a model without attention/MLP biases (Llama-style).")


def upcycle_state_dict(dense_sd: dict, moe_cfg, style: UpcycleStyle, seed: int = 0) -> dict:
    """Map a dense Llama state dict (transformers names) onto the MoE's parameters."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    E = moe_cfg.num_local_experts if style == "mixtral" else moe_cfg.num_experts
    H = moe_cfg.hidden_size
    head_dim = H // moe_cfg.num_attention_heads
    out: dict = {}
    for name, t in dense_sd.items():
        if ".mlp." not in name:
            out[name] = t.clone()
    for layer in range(moe_cfg.num_hidden_layers):
        p = f"model.layers.{layer}.mlp."
        gate, up, down = (dense_sd[p + f"{n}_proj.weight"] for n in ("gate", "up", "down"))
        gate_up = torch.cat([gate, up], dim=0)  # [2I, H]
        router = torch.randn(E, H, generator=gen) * moe_cfg.initializer_range  # [E, H]
        scale = 1.0 if style == "mixtral" else 0.5
        out[p + "experts.gate_up_proj"] = gate_up.unsqueeze(0).repeat(E, 1, 1).contiguous()  # [E, 2I, H]
        out[p + "experts.down_proj"] = (down * scale).unsqueeze(0).repeat(E, 1, 1).contiguous()  # [E, H, I]
        out[p + "gate.weight"] = router
        if style == "qwen2_moe":
            out[p + "shared_expert.gate_proj.weight"] = gate.clone()
            out[p + "shared_expert.up_proj.weight"] = up.clone()
            out[p + "shared_expert.down_proj.weight"] = down.clone()
            out[p + "shared_expert_gate.weight"] = torch.zeros(1, H)
            for proj, width in (("q", moe_cfg.num_attention_heads), ("k", moe_cfg.num_key_value_heads),
                                ("v", moe_cfg.num_key_value_heads)):
                out[f"model.layers.{layer}.self_attn.{proj}_proj.bias"] = torch.zeros(width * head_dim)
    return out


def upcycle(
    dense_dir: str | Path,
    out_dir: str | Path,
    num_experts: int = 4,
    top_k: int = 2,
    style: UpcycleStyle = "mixtral",
    seed: int = 0,
) -> Path:
    """Write an upcycled MoE copy of the dense HF folder `dense_dir` to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if num_experts < 2 or not 1 <= top_k <= num_experts:
        raise ModelLoadError(f"need experts >= 2 and 1 <= top-k <= experts; got {num_experts}, {top_k}.")
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)
    _check_dense(dense.config)
    moe_cfg = _moe_config(dense.config, style, num_experts, top_k)
    with torch.device("meta"):
        moe = AutoModelForCausalLM.from_config(moe_cfg, dtype=torch.float32)
    sd = upcycle_state_dict(dense.state_dict(), moe_cfg, style, seed)
    missing, unexpected = moe.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and moe_cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelLoadError(f"upcycling produced missing {missing[:5]} / unexpected {unexpected[:5]} weights")
    if moe_cfg.tie_word_embeddings:
        moe.tie_weights()
    moe.generation_config = dense.generation_config
    out = Path(out_dir)
    moe.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(dense_dir).save_pretrained(out)
    return out
