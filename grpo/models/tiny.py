"""Tiny random models for tests: built offline in a second, a few M parameters.

A character-level tokenizer (printable ASCII + chat specials) with a ChatML
template keeps the vocabulary (and so the embedding) small, and makes every
string round-trip exactly, which tests rely on. vLLM loads these folders too.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Literal

from grpo.errors import ModelLoadError
from grpo.models.cache import atomic_dir, cache_dir

TinyArch = Literal["llama", "mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3"]
TINY_ARCHS: tuple[str, ...] = ("llama", "mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3")

SPECIAL_TOKENS = ["<pad>", "<s>", "<|im_end|>", "<unk>", "<|im_start|>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Shared sizes. head_dim 32: vLLM's CPU attention kernels support it; 16 is not.
_DIMS = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=32, max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False,
             pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, initializer_range=0.05)


def tiny_tokenizer():
    """Character-level fast tokenizer with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(arch: TinyArch, vocab_size: int):
    from transformers import AutoConfig

    d = dict(_DIMS, vocab_size=vocab_size)
    if arch == "llama":
        return AutoConfig.for_model("llama", intermediate_size=256, **d)
    if arch == "mixtral":
        return AutoConfig.for_model("mixtral", intermediate_size=128, num_local_experts=4,
                                    num_experts_per_tok=2, router_jitter_noise=0.0,
                                    router_aux_loss_coef=0.0, sliding_window=None, **d)
    if arch == "qwen3_moe":
        return AutoConfig.for_model("qwen3_moe", intermediate_size=256, moe_intermediate_size=128,
                                    num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                                    decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=0.0,
                                    **d)
    if arch == "qwen2_moe":
        return AutoConfig.for_model("qwen2_moe", intermediate_size=256, moe_intermediate_size=128,
                                    shared_expert_intermediate_size=128, num_experts=4,
                                    num_experts_per_tok=2, norm_topk_prob=True, qkv_bias=True,
                                    decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=0.0,
                                    **{k: v for k, v in d.items() if k != "head_dim"})
    if arch == "deepseek_v3":
        # MLA attention, sigmoid router with bias, group-limited top-k, a shared
        # expert; first layer dense like the real model's `first_k_dense_replace`.
        # num_key_value_heads = num_attention_heads: MLA has no GQA, and a smaller
        # value breaks transformers' 4D-mask path (packing) for this architecture.
        dims = {k: v for k, v in d.items() if k not in ("head_dim", "num_hidden_layers", "num_key_value_heads")}
        return AutoConfig.for_model(
            "deepseek_v3", intermediate_size=256, moe_intermediate_size=64, n_routed_experts=8,
            n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
            num_hidden_layers=3, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=16, qk_nope_head_dim=16,
            v_head_dim=32, routed_scaling_factor=1.0, norm_topk_prob=True,
            num_key_value_heads=d["num_attention_heads"], **dims,
        )
    raise ModelLoadError(f"unknown tiny architecture {arch!r}; choose from {TINY_ARCHS}")


def build_tiny_model(arch: TinyArch, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised tiny `arch` model + tokenizer to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = tiny_tokenizer()
    cfg = tiny_config(arch, vocab_size=len(tok))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    if arch == "deepseek_v3":  # the balancing bias is a zero buffer: make it matter in tests
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.01)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def tiny_model_dir(arch: TinyArch, seed: int = 0) -> Path:
    """Cached tiny model folder (built once per arch/seed/definition)."""
    key = hashlib.sha1(json.dumps([arch, seed, _DIMS, CHAT_TEMPLATE, 3], sort_keys=True).encode()).hexdigest()[:8]
    final = cache_dir() / "tiny" / f"{arch}-s{seed}-{key}"
    if (final / "config.json").is_file():
        return final
    with atomic_dir(final) as tmp:
        build_tiny_model(arch, tmp, seed)
    return final
