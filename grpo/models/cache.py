"""Where converted and generated models live: `$GRPO_CACHE` or ~/.cache/grpo-toolkit."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cache_dir() -> Path:
    root = Path(os.environ.get("GRPO_CACHE", Path.home() / ".cache" / "grpo-toolkit"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch folder next to `final`; rename it into place only on success.

    A crash mid-write leaves a stray `.tmp-*` folder, never a half-written `final`.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # another process won the race: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
