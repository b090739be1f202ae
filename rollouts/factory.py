"""make_engine: one call for every generation backend."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from grpo.errors import EngineError
from rollouts.types import Engine

EngineKind = Literal["vllm", "vllm_server", "hf"]
KINDS: tuple[str, ...] = ("vllm", "vllm_server", "hf")


def make_engine(
    kind: EngineKind,
    model_dir: str | Path,
    *,
    max_model_len: int = 1024,
    max_num_seqs: int = 32,
    seed: int = 0,
    kv_cache_gb: float | None = None,
    server_url: str | None = None,
    chat: bool | None = None,
    **kwargs,
) -> Engine:
    """Build a generation engine.

    kind: "vllm" (in-process vLLM, colocated with the trainer), "vllm_server"
    (a vLLM server process: started here on 127.0.0.1, or the one at
    `server_url`), "hf" (transformers `generate`, no vLLM needed).
    max_model_len: prompt + completion tokens; max_num_seqs: sequences decoded
    at once (and, with max_model_len, the KV-cache size unless kv_cache_gb).
    seed: engine seed; a run replays exactly from it (see each engine's notes).
    chat: text prompts wrapped as a user turn of the chat template (None: if the
    tokenizer has one). Other keyword arguments go to the engine class, e.g.
    `tokenizer=` (the caller's, else the folder's) and, for "hf", `model=` (the
    trainer's own policy, else the folder's): engines take what they need from
    the caller and import nothing of the trainer.
    """
    common = dict(max_model_len=max_model_len, max_num_seqs=max_num_seqs, seed=seed, chat=chat)
    if kind == "vllm":
        from rollouts.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, kv_cache_gb=kv_cache_gb, **common, **kwargs)
    if kind == "vllm_server":
        from rollouts.server_engine import VLLMServerEngine

        return VLLMServerEngine(model_dir, kv_cache_gb=kv_cache_gb, server_url=server_url, **common, **kwargs)
    if kind == "hf":
        from rollouts.hf_engine import HFEngine

        return HFEngine(model_dir, **common, **kwargs)
    raise EngineError(f"unknown engine kind {kind!r}; choose one of {', '.join(KINDS)}.")
