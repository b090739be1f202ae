"""Reward health metrics of one batch: is the reward signal usable, and is anything failing quietly?"""

from __future__ import annotations

import math
from typing import Hashable, Sequence

FIXED_STATUSES = ("none", "timeout", "error")  # always reported, so dashboards have the series from step 1
# frac_none counts None scores whatever the reason; every other status is counted as frac_<status>.


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))  # population std


# Absolute, in reward units: far below any reward difference worth learning from, above the float32
# rounding (the loop's score dtype) of rewards up to ~10 in size.
ZERO_VARIANCE_TOL = 1e-6


def zero_variance_by_group(values: Sequence[float | None], group_ids: Sequence[Hashable]) -> dict[Hashable, bool]:
    """Group id -> True when the group gives GRPO no learning signal: its scorable rewards (None and NaN
    left out, as the advantages leave them out) span at most ZERO_VARIANCE_TOL, or fewer than two are
    scorable. Groups in order of first appearance.

    The one definition of a zero-variance group: the health metric, the advantages' mask and DAPO's
    dynamic sampling all read it (rewards/ owns it because grpo/ imports rewards/, never the reverse).
    """
    spans: dict[Hashable, list[float]] = {}
    for v, g in zip(values, group_ids, strict=True):
        span = spans.setdefault(g, [])
        if v is not None and not math.isnan(v):
            span.append(float(v))
    return {g: len(vs) < 2 or max(vs) - min(vs) <= ZERO_VARIANCE_TOL for g, vs in spans.items()}


def frac_zero_variance_groups(values: Sequence[float | None], group_ids: Sequence[Hashable]) -> float:
    """Fraction of groups whose completions all scored the same (see zero_variance_by_group)."""
    flat = zero_variance_by_group(values, group_ids)
    return sum(flat.values()) / len(flat) if flat else math.nan


def health_metrics(per_function: dict[str, list[float | None]], status: dict[str, list[str]], total: list[float],
                   group_ids: list[int] | None, seconds: dict[str, float]) -> dict[str, float]:
    """Flat metrics: reward/<label>/{mean,std,frac_none,frac_timeout,frac_error,frac_<tag>,seconds},
    reward/frac_zero_var_groups. The total's mean/std are not here: the loop logs them once, over the
    global batch, as reward/mean and reward/std (one producer per key)."""
    out: dict[str, float] = {}
    n = len(total)
    for label, values in per_function.items():
        present = [float(v) for v in values if v is not None]
        out[f"reward/{label}/mean"], out[f"reward/{label}/std"] = _mean_std(present)
        out[f"reward/{label}/frac_none"] = (n - len(present)) / n if n else math.nan
        tags = list(FIXED_STATUSES[1:]) + sorted(set(status[label]) - {"ok", *FIXED_STATUSES})
        for tag in tags:
            out[f"reward/{label}/frac_{tag}"] = status[label].count(tag) / n if n else math.nan
        out[f"reward/{label}/seconds"] = seconds.get(label, math.nan)
    if group_ids is not None:
        out["reward/frac_zero_var_groups"] = frac_zero_variance_groups(total, group_ids)
    return out
