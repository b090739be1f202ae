"""A run's scorer and the dataset columns its rewards need, from the `rewards:` config section.

Training, the held-out evaluation and `grpo eval` all build their scorer here, so a
reward is configured the same way in all three. What a built-in needs from the run is
declared by the built-in itself (no reward names are special-cased outside rewards/):

    needed_columns(options) -> list[list[str]]   alternatives: one of these column sets must exist
    run_options(options, data_dir, output_dir) -> dict   its options for this run (e.g. code_tests
        also hides the dataset's folder and the run's outputs inside its sandbox)

The config is read by shape (RewardsSettings), so this package does not import grpo's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

from grpo.errors import DataError
from rewards.registry import resolve
from rewards.scorer import RewardScorer
from rewards.spec import RewardSpec

ANSWER = "answer"  # score_completions passes the data's answer column under this name too


class RewardFunctionSettings(Protocol):
    name: str
    weight: float
    kwargs: dict[str, Any]
    timeout_s: float | None
    fault_score: float


class RewardsSettings(Protocol):  # grpo.config.RewardsConfig
    functions: Sequence[RewardFunctionSettings]
    num_workers: int
    on_fault: str


def build_scorer(rewards_cfg: RewardsSettings, data_dir: Path | None, output_dir: Path | str) -> RewardScorer:
    """The scorer of a run. data_dir: the folder of the dataset file (None for generated or hub data);
    output_dir: where the run writes. Rewards that run untrusted code hide both from it."""
    specs = [RewardSpec(name=f.name, weight=f.weight, kwargs=reward_options(f.name, f.kwargs, data_dir, output_dir),
                        timeout_s=f.timeout_s, fault_score=f.fault_score) for f in rewards_cfg.functions]
    return RewardScorer(specs, num_workers=rewards_cfg.num_workers, on_fault=rewards_cfg.on_fault)


def reward_options(name: str, options: dict[str, Any], data_dir: Path | None, output_dir: Path | str) -> dict:
    """The options a reward runs with in this run: its configured ones, completed by the reward itself."""
    hook = getattr(resolve(name), "run_options", None)
    return hook(dict(options), data_dir, output_dir) if hook is not None else dict(options)


def _needed(fn: RewardFunctionSettings) -> list[list[str]]:
    hook = getattr(resolve(fn.name), "needed_columns", None)
    return hook(fn.kwargs) if hook is not None else []


def required_columns(rewards_cfg: RewardsSettings, answer_column: str) -> list[str]:
    """Columns every row must have: those of rewards that read their data one way only (e.g.
    math_accuracy's gold answer, the data's `answer_column` reaching it as `answer`)."""
    out: list[str] = []
    for fn in rewards_cfg.functions:
        options = _needed(fn)
        if len(options) == 1:
            out += [answer_column if c == ANSWER else c for c in options[0] if c not in out]
    return out


def check_columns(rewards_cfg: RewardsSettings, columns: Iterable[str], answer_column: str) -> None:
    """DataError naming the reward when the data has none of the column sets it can read."""
    have = set(columns)
    if answer_column in have:
        have.add(ANSWER)
    for fn in rewards_cfg.functions:
        options = _needed(fn)
        if options and not any(all(c in have for c in opt) for opt in options):
            raise DataError(f"reward {fn.name} needs columns {' or '.join(map(str, options))}; the data has "
                            f"{sorted(set(columns))}. Rename the columns, set data.answer_column, or set the "
                            "reward's column options (rewards.functions[].kwargs).")
