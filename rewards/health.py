"""Reward health metrics of one batch: is the reward signal usable, and is anything failing quietly?"""

from __future__ import annotations

import math

FIXED_STATUSES = ("none", "timeout", "error")  # always reported, so dashboards have the series from step 1
# frac_none counts None scores whatever the reason; every other status is counted as frac_<status>.


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))  # population std


def frac_zero_variance_groups(values: list[float], group_ids: list[int], tol: float = 1e-9) -> float:
    """Fraction of groups whose completions all scored the same: they give GRPO no learning signal."""
    groups: dict[int, list[float]] = {}
    for v, g in zip(values, group_ids, strict=True):
        groups.setdefault(g, []).append(v)
    if not groups:
        return math.nan
    return sum(max(vs) - min(vs) <= tol for vs in groups.values()) / len(groups)


def health_metrics(per_function: dict[str, list[float | None]], status: dict[str, list[str]], total: list[float],
                   group_ids: list[int] | None, seconds: dict[str, float]) -> dict[str, float]:
    """Flat metrics: reward/<label>/{mean,std,frac_none,frac_timeout,frac_error,frac_<tag>,seconds},
    reward/total/{mean,std}, reward/frac_zero_var_groups."""
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
    out["reward/total/mean"], out["reward/total/std"] = _mean_std(total)
    if group_ids is not None:
        out["reward/frac_zero_var_groups"] = frac_zero_variance_groups(total, group_ids)
    return out
