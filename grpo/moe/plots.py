"""Expert load over training: one heatmap per MoE layer (x = step, y = expert, colour = load share)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Union

_LOAD_KEY = re.compile(r"^moe/load/layer(\d+)/expert(\d+)$")


def _read(records: Union[str, Path, Iterable[dict]]) -> list[dict]:
    if isinstance(records, (str, Path)):
        with open(records) as f:
            return [json.loads(line) for line in f if line.strip()]
    return list(records)


def load_matrix(records: Union[str, Path, Iterable[dict]]):
    """(steps [T], {layer: array [E, T]}) from metric records holding `moe/load/...` keys."""
    import numpy as np

    rows = [r for r in _read(records) if any(_LOAD_KEY.match(k) for k in r)]
    steps = np.array([r.get("step", i) for i, r in enumerate(rows)])
    shape: dict[int, int] = {}
    for r in rows:
        for k in r:
            m = _LOAD_KEY.match(k)
            if m:
                layer, e = int(m.group(1)), int(m.group(2))
                shape[layer] = max(shape.get(layer, 0), e + 1)
    mats = {layer: np.full((n, len(rows)), np.nan) for layer, n in shape.items()}
    for t, r in enumerate(rows):
        for k, v in r.items():
            m = _LOAD_KEY.match(k)
            if m:
                mats[int(m.group(1))][int(m.group(2)), t] = v
    return steps, dict(sorted(mats.items()))


def plot_expert_load(jsonl_records: Union[str, Path, Iterable[dict]], out_png: Union[str, Path]) -> Path:
    """Write a grid of per-layer expert-load heatmaps; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, mats = load_matrix(jsonl_records)
    if not mats:
        raise ValueError("no moe/load/layer*/expert* keys in the records: nothing to plot.")
    n = len(mats)
    cols = min(4, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols + 1.0, 2.4 * nrows + 0.6),
                             squeeze=False, layout="constrained")
    vmax = max(float(m[~(m != m)].max()) for m in mats.values())  # ignore NaN
    for i, (ax, (layer, mat)) in enumerate(zip(axes.flat, mats.items())):
        im = ax.imshow(mat, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=vmax,
                       extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, mat.shape[0] - 0.5))
        ax.set_title(f"MoE layer {layer}", fontsize=9)
        if i >= n - cols:  # bottom row of the filled grid
            ax.set_xlabel("step", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("expert", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="share of routed tokens")
    fig.suptitle(f"Expert load over training (uniform = {1.0 / mats[next(iter(mats))].shape[0]:.3f})")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
