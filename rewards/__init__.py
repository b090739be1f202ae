"""Rewards: one signature, a registry, weighted combination, health metrics, and the built-ins.

The signature (TRL's)::

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]

`columns` are the dataset's other fields, one entry per completion. `None`
means "not applicable to this sample". A function that declares a `group`
parameter also receives the batch's `GroupInfo` (which completions share a
prompt, G, finish reasons, token counts), so group-relative or pairwise judging
is one function.

The API the trainer calls::

    from rewards import RewardSpec, RewardScorer, RewardResult, GroupInfo

    specs = [RewardSpec(name="math_accuracy", weight=1.0, kwargs={"timeout_s": 5.0}),
             RewardSpec(name="mypkg.mod:fn", weight=0.5)]          # or "path/to/file.py:fn"
    with RewardScorer(specs, num_workers=2, on_fault="error") as scorer:   # or on_fault="count"
        res: RewardResult = scorer(prompts, completions, columns={"answer": [...]}, group=group)
    res.total          # list[float], weighted sum over the functions that returned a number
    res.per_function   # {label: list[float | None]}
    res.metrics        # {"reward/math_accuracy/mean": ..., ".../std", ".../frac_none", ".../frac_timeout",
                       #  ".../frac_error", ".../frac_<tag>", ".../seconds",
                       #  "reward/frac_zero_var_groups"}  (the total's mean: reward/mean, from the loop)
    res.status         # {label: per-sample "ok" | "none" | "timeout" | "error" | tag}

A run builds its scorer from the `rewards:` config section with `build_scorer(cfg.rewards, data_dir,
output_dir)` (training, held-out eval and `grpo eval` alike); `required_columns` / `check_columns`
check the data against the columns the rewards declare (rewards.build).

Training and evaluation score generated completions through one function, so both
see the same columns (the gold `answer_column` also as `answer`) and GroupInfo::

    from rewards import score_completions
    res = score_completions(scorer, rows, completions, group_size=G, answer_column="solution")

Rules the scorer enforces:
- a sample for which every function returns None is an error (RewardError);
- a function that returns the wrong number of scores or a non-number is an
  error naming it (RewardFunctionError), whatever on_fault says;
- a function that raises or returns NaN/inf, or a built-in that reports a
  sample as "error": on_fault="error" raises RewardFunctionError naming it;
  on_fault="count" logs it, scores the sample with the spec's fault_score and
  counts it in reward/<label>/frac_error;
- a timeout (math-verify or the code sandbox) is never silent: it is scored
  with the reward's `timeout_score` (default 0.0) and counted in frac_timeout;
- your own function runs in the trainer's process unless its spec sets
  `timeout_s`: then it runs in worker processes under that hard time limit, and a
  sample that hangs is scored fault_score with status "timeout".

Built-ins (registry names; options are the RewardSpec kwargs):
- `math_accuracy` (rewards.math_accuracy): final answer vs gold via math-verify, hard per-item timeouts;
- `code_tests` (rewards.code_tests): unit tests in the sandbox (rewards.sandbox, SECURITY.md);
- `reward_model` (rewards.reward_model): an AutoModelForSequenceClassification checkpoint;
- `think_format`, `overlong_penalty`, `length_penalty` (rewards.shaping).
Register your own name with `@rewards.register("name")`.
"""

from rewards.batch import score_completions
from rewards.build import build_scorer, check_columns, required_columns
from rewards.errors import RewardError, RewardFunctionError
from rewards.registry import register, resolve
from rewards.scorer import RewardScorer
from rewards.spec import RewardResult, RewardSpec
from rewards.types import GroupInfo, Scores

__all__ = [
    "GroupInfo", "RewardError", "RewardFunctionError", "RewardResult", "RewardScorer", "RewardSpec", "Scores",
    "build_scorer", "check_columns", "register", "required_columns", "resolve", "score_completions",
]
