"""Metrics sinks: one flat dict per step to JSONL, TensorBoard and (optionally) wandb.

Only the main process writes (rank 0); other ranks get a sink that drops records.
Each key has one producer: a step's dict is put together with `merge_metrics`, which
refuses a key that two producers report (one would silently overwrite the other).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them visible as strings
    return v


class MetricsSink:
    def __init__(self, run_dir: Path, tensorboard: bool = True, wandb: bool = False,
                 config: dict | None = None, enabled: bool = True, append: bool = False,
                 resume_step: int | None = None):
        """append: keep the records already in metrics.jsonl (a resumed run). resume_step: the
        step the run resumes from; records after it (steps the killed run logged but did not
        checkpoint, so they are redone) and a torn last line are dropped first."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append and resume_step is not None and self.path.exists():
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb:
            import wandb as wb  # optional dependency: fails loudly if asked for and missing

            self._wandb = wb.init(project="grpo-toolkit", name=Path(run_dir).name, config=config or {})

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def merge_metrics(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """The union of several producers' metrics; a key reported by two of them is a bug, not a merge."""
    out: dict[str, Any] = {}
    for part in parts:
        clash = sorted(out.keys() & part.keys())
        if clash:
            raise ValueError(f"metric(s) {clash} reported by two producers: each key needs one producer "
                             "(rename one, e.g. with its own namespace prefix)")
        out.update(part)
    return out


def process_memory() -> dict[str, float]:
    """This process's resident memory now and its high-water mark so far (GiB; Linux /proc)."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    kib = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS:", "VmHWM:"))}
    return {"memory/rss_gib": kib.get("VmRSS", 0) / 2**20, "memory/peak_rss_gib": kib.get("VmHWM", 0) / 2**20}


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (the writer was killed mid-write) is skipped."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1 or line.endswith("\n"):
                raise
    return out
