"""A user's reward function under a hard time limit: `RewardSpec(timeout_s=...)`.

The function runs in a TimeoutPool worker process (it is imported there by its
name, so it must be a `package.module:function` or `path/file.py:function`, or a
built-in function). A batch that overruns is retried sample by sample, so only
the samples that hang come back as status "timeout" (scored with the spec's
fault_score); a group-aware function's batch cannot be split and times out whole.
"""

from __future__ import annotations

import json
from functools import lru_cache

from rewards.errors import RewardError
from rewards.registry import BoundReward, bind
from rewards.timeout_pool import TimeoutPool
from rewards.types import Scores


@lru_cache(maxsize=64)
def _bound(name: str, fixed_json: str) -> BoundReward:
    return bind(name, json.loads(fixed_json), name, num_workers=1)


def init_worker(init: list) -> None:
    """Import the function (and its module) before the first timed call."""
    _bound(*init)


def call_in_worker(item: tuple) -> list:
    """TimeoutPool target (runs in the worker): (name, fixed kwargs, prompts, completions, columns, group)."""
    name, fixed, prompts, completions, columns, group = item
    raw = _bound(name, fixed)(prompts, completions, columns, group)
    return list(raw.tolist() if hasattr(raw, "tolist") else raw)


class TimedReward:
    """Calls `bound`'s function in worker processes with a per-call time limit of `timeout_s`."""

    def __init__(self, bound: BoundReward, name: str, timeout_s: float, num_workers: int, fault_score: float) -> None:
        self.bound, self.name, self.fault_score = bound, name, fault_score
        self.label, self.wants_group = bound.label, bound.wants_group
        try:
            self.fixed = json.dumps(bound.fixed, sort_keys=True)  # kwargs travel to the workers as JSON
        except TypeError as e:
            raise RewardError(f"reward {bound.label!r}: with timeout_s, kwargs must be JSON values ({e})") from None
        self.pool = TimeoutPool("rewards.isolation:call_in_worker", num_workers=num_workers, timeout_s=timeout_s,
                                init=[name, self.fixed])

    def __call__(self, prompts: list[str], completions: list[str], columns: dict, group) -> list | Scores:
        g = group if self.bound.wants_group else None
        (state, result), = self.pool.map([(self.name, self.fixed, prompts, completions, columns, g)])
        if state == "ok":
            return result
        if state == "error":
            raise RuntimeError(result)  # the function raised in the worker: the scorer's fault policy applies
        n = len(completions)
        if self.bound.wants_group:
            return Scores([self.fault_score] * n, ["timeout"] * n)
        items = [(self.name, self.fixed, prompts[i:i + 1], completions[i:i + 1],
                  {k: v[i:i + 1] for k, v in columns.items()}, None) for i in range(n)]
        values, status, details = [], [], {}
        for i, (state, result) in enumerate(self.pool.map(items)):
            if state == "ok" and isinstance(result, list) and len(result) == 1:
                values.append(result[0])
                status.append("ok")
            elif state == "timeout":
                values.append(self.fault_score)
                status.append("timeout")
            else:
                values.append(self.fault_score)
                status.append("error")
                details[i] = str(result)
        return Scores(values, status, details)

    def close(self) -> None:
        self.pool.close()
