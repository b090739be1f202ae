"""Resolve a model spec to a local Hugging Face folder, and load it.

A spec is one of:
- `smollm2-135m` / `smollm2-135m-moe`: the embedded default (dense / upcycled MoE)
- `tiny-<arch>` (tiny-llama, tiny-mixtral, tiny-qwen3_moe, tiny-qwen2_moe, tiny-deepseek_v3): test models
- a local HF folder (config.json + safetensors + tokenizer)
- a `.gguf` file (converted once to fp32 and cached)
- a hub id `org/name` (needs a network; offline gives a clear error)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from grpo.errors import ModelLoadError
from grpo.models.cache import atomic_dir, cache_dir
from grpo.models.embedded import EMBEDDED_DENSE, EMBEDDED_MOE, ensure_embedded_dense, ensure_embedded_moe

EMBEDDED_NAMES = (EMBEDDED_DENSE, EMBEDDED_MOE)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def check_hf_folder(path: Path) -> Path:
    """Fail early, in one line, on folders transformers would choke on deep inside."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder.")
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not list(path.glob("*.bin")):
        raise ModelLoadError(f"{path} has no *.safetensors weights.")
    from safetensors import safe_open

    for w in weights:
        try:
            with safe_open(str(w), framework="np") as f:
                keys = list(f.keys())
            expected_end = _safetensors_data_end(w)
        except Exception as e:
            raise ModelLoadError(
                f"{w} is corrupt or truncated ({type(e).__name__}: {e}). Re-create or re-download it."
            ) from e
        if w.stat().st_size < expected_end or not keys:
            raise ModelLoadError(f"{w} is truncated ({w.stat().st_size} < {expected_end} bytes). Re-create it.")
    return path


def _safetensors_data_end(path: Path) -> int:
    """Byte length a safetensors file must have according to its own header."""
    import json
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def _gguf_folder(gguf: Path) -> Path:
    from grpo.models.gguf import convert_gguf

    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    final = cache_dir() / "models" / f"gguf-{gguf.stem}-{key}"
    if not (final / "config.json").is_file():
        with atomic_dir(final) as tmp:
            convert_gguf(gguf, tmp)
    return final


def resolve_model(spec: str) -> Path:
    """Return a local HF folder for `spec`, building/converting/downloading it if needed."""
    spec = str(spec)
    if spec == EMBEDDED_DENSE:
        return ensure_embedded_dense()
    if spec == EMBEDDED_MOE:
        return ensure_embedded_moe()
    if spec.startswith("tiny-"):
        from grpo.models.tiny import TINY_ARCHS, tiny_model_dir

        arch = spec[len("tiny-"):]
        if arch not in TINY_ARCHS:
            raise ModelLoadError(f"unknown tiny model {spec!r}; choose from tiny-{', tiny-'.join(TINY_ARCHS)}.")
        return tiny_model_dir(arch)  # type: ignore[arg-type]
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist.")
        return _gguf_folder(path)
    if path.is_dir():
        return check_hf_folder(path)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") != 1 or path.exists()
    if looks_like_path:
        raise ModelLoadError(
            f"model {spec!r}: no such folder. Give a Hugging Face folder, a .gguf file, a hub id "
            f"(org/name), or one of: {', '.join(EMBEDDED_NAMES)}."
        )
    return _from_hub(spec)


def _from_hub(repo_id: str) -> Path:
    if _offline():
        raise ModelLoadError(
            f"model {repo_id!r} is not a local folder and HF_HUB_OFFLINE is set: download it on a "
            f"machine with a network (`huggingface-cli download {repo_id} --local-dir DIR`) and pass DIR."
        )
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:
        raise ModelLoadError(
            f"could not fetch model {repo_id!r} from the hub ({type(e).__name__}). If this machine is offline, "
            f"download it elsewhere and pass the folder."
        ) from e
    return check_hf_folder(Path(local))


def load_tokenizer(folder: Path):
    from rollouts.prompts import load_tokenizer as engines_loader  # one copy: engines encode alike

    return engines_loader(folder)


def load_causal_lm(folder: Path, dtype: str = "float32", device: str = "cpu"):
    """Load a causal LM for training (eval mode off, no cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"transformers could not load {folder}: {e}") from e
    model.config.use_cache = False
    return model.to(device)
