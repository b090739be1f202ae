"""What the trainer hands the scorer (RewardSpec) and what it gets back (RewardResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RewardSpec:
    """One reward function in the combination.

    name: a registered name (`math_accuracy`, ...), `package.module:function`, or `path/to/file.py:function`.
    weight: its weight in `RewardResult.total`.
    kwargs: for a built-in, its options (e.g. {"timeout_s": 5.0}); for your own function, extra keyword
        arguments passed on every call (they must not clash with a dataset column name).
    label: its key in `per_function` and the metrics (default: `name`; a repeated name gets "#2", "#3"...).
    fault_score: the score of a sample whose reward faulted when the scorer runs with on_fault="count",
        or timed out under timeout_s.
    timeout_s: for your own function: run it in worker processes with this hard time limit per call
        (a sample that hangs is reported as "timeout", the others are scored). Built-ins have their own.
    """

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    fault_score: float = 0.0
    timeout_s: float | None = None


@dataclass
class RewardResult:
    """Scores of one batch of N completions.

    total: weighted sum over the functions that apply to each sample (None scores are skipped).
    per_function: label -> N scores, None where the function does not apply.
    metrics: flat health metrics, e.g. "reward/math_accuracy/mean", ".../frac_timeout", "reward/frac_zero_var_groups".
    status: label -> N statuses ("ok", "none", "timeout", "error", or a reward's own tag such as "no_answer").
    """

    total: list[float]
    per_function: dict[str, list[float | None]]
    metrics: dict[str, float]
    status: dict[str, list[str]] = field(default_factory=dict)
