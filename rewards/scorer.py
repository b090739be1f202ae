"""RewardScorer: run every reward function on a batch, check what they return, combine by weight."""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import time
from typing import Any

from rewards.errors import RewardError, RewardFunctionError
from rewards.health import health_metrics
from rewards.isolation import TimedReward
from rewards.registry import BoundReward, bind, is_registered, resolve
from rewards.spec import RewardResult, RewardSpec
from rewards.types import GroupInfo, Scores

log = logging.getLogger("rewards")
ON_FAULT = ("error", "count")


def _labels(specs: list[RewardSpec]) -> list[str]:
    out, seen = [], {}
    for s in specs:
        base = s.label or s.name
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    if len(set(out)) != len(out):
        raise RewardError(f"reward labels {out} are not unique; give the specs distinct `label`s")
    return out


class RewardScorer:
    """Scores batches with several reward functions; see the package docstring for the contract.

    on_fault: what happens when a function raises, returns NaN/inf, or reports a sample as "error":
        "error" stops with a RewardFunctionError naming the function; "count" logs it, scores the
        affected samples with the spec's fault_score, and counts them in reward/<label>/frac_error.
        (A function that raises on the whole batch is retried sample by sample, so only the samples
        that really fail get fault_score.) A wrong-length or wrongly typed return is always an error.
    """

    def __init__(self, specs: list[RewardSpec], num_workers: int = 2, on_fault: str = "error") -> None:
        if on_fault not in ON_FAULT:
            raise RewardError(f"rewards.on_fault must be one of {ON_FAULT}, got {on_fault!r}")
        if not specs:
            raise RewardError("RewardScorer needs at least one RewardSpec")
        self.specs, self.on_fault = list(specs), on_fault
        self.labels = _labels(self.specs)
        self._bound: list[BoundReward | TimedReward] = []
        try:
            for spec, label in zip(self.specs, self.labels):
                if not math.isfinite(spec.weight):
                    raise RewardError(f"reward {label!r}: weight must be a finite number, got {spec.weight!r}")
                self._bound.append(self._bind(spec, label, num_workers))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _bind(spec: RewardSpec, label: str, num_workers: int) -> BoundReward | TimedReward:
        if spec.timeout_s is None:
            return bind(spec.name, spec.kwargs, label, num_workers)
        if spec.timeout_s <= 0:
            raise RewardError(f"reward {label!r}: timeout_s must be > 0, got {spec.timeout_s}")
        if inspect.isclass(resolve(spec.name)) or is_registered(spec.name):
            raise RewardError(f"reward {label!r}: timeout_s runs a function in worker processes, which import it by "
                              "name: use 'package.module:function' or 'path/file.py:function' (built-in classes "
                              "have their own time limits: pass timeout_s in kwargs)")
        bound = bind(spec.name, spec.kwargs, label, num_workers)
        return TimedReward(bound, spec.name, spec.timeout_s, num_workers, spec.fault_score)

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list] | None = None,
                 group: GroupInfo | None = None) -> RewardResult:
        n = len(completions)
        columns = dict(columns or {})
        self._check_batch(prompts, n, columns, group)
        per_function: dict[str, list[float | None]] = {}
        status: dict[str, list[str]] = {}
        seconds: dict[str, float] = {}
        for spec, bound in zip(self.specs, self._bound):
            t0 = time.perf_counter()
            per_function[bound.label], status[bound.label] = self._run(spec, bound, prompts, completions, columns,
                                                                      group)
            seconds[bound.label] = time.perf_counter() - t0
        total: list[float] = []
        unscored: list[int] = []
        for i in range(n):
            parts = [s.weight * v[i] for s, v in zip(self.specs, per_function.values()) if v[i] is not None]
            if not parts:
                unscored.append(i)
            total.append(sum(parts))
        if unscored:
            raise RewardError(
                f"{len(unscored)} of {n} samples (e.g. index {unscored[:5]}) got None from every reward function "
                f"({', '.join(self.labels)}): nothing applies to them. Check that the dataset has the columns "
                "these rewards read, or add a reward for these samples.")
        metrics = health_metrics(per_function, status, total, group.group_ids if group else None, seconds)
        return RewardResult(total, per_function, metrics, status)

    @staticmethod
    def _check_batch(prompts: list[str], n: int, columns: dict[str, list], group: GroupInfo | None) -> None:
        if len(prompts) != n:
            raise RewardError(f"got {len(prompts)} prompts for {n} completions; pass one prompt per completion")
        for name, col in columns.items():
            if len(col) != n:
                raise RewardError(f"column {name!r} has {len(col)} entries for {n} completions; "
                                  "pass one entry per completion")
        if group is not None:
            for field in ("group_ids", "finish_reasons", "completion_lengths"):
                if len(getattr(group, field)) != n:
                    raise RewardError(f"GroupInfo.{field} has {len(getattr(group, field))} entries for {n} "
                                      "completions")

    def _run(self, spec: RewardSpec, bound: BoundReward | TimedReward, prompts, completions, columns, group):
        n = len(completions)
        try:
            raw = bound(prompts, completions, columns, group)
        except RewardError:
            raise  # misconfiguration: never a per-sample fault
        except Exception as e:
            if self.on_fault == "error":
                raise RewardFunctionError(
                    bound.label, f"raised {type(e).__name__}: {e} (on a batch of {n} completions). Fix the "
                    "function, or run with on_fault='count' to count such faults and score the samples "
                    f"{spec.fault_score}.") from e
            log.warning("reward %r raised %s: %s; retrying sample by sample (on_fault=count)",
                        bound.label, type(e).__name__, e)
            return self._per_sample(spec, bound, prompts, completions, columns)
        values, status = self._validate(bound.label, raw, n)
        details = raw.details if isinstance(raw, Scores) else {}
        faults = {}
        for i, v in enumerate(values):
            if v is not None and not math.isfinite(v):
                faults[i] = f"returned {v}"
            elif status[i] == "error":
                faults[i] = details.get(i, "reported an error")
        if faults:
            where = "; ".join(f"sample {i}: {why}" for i, why in list(faults.items())[:5])
            if self.on_fault == "error":
                raise RewardFunctionError(bound.label, f"{len(faults)} of {n} samples faulted ({where}). Fix the "
                                          "function, or run with on_fault='count' to count such faults and score "
                                          f"the samples {spec.fault_score}.")
            log.warning("reward %r: %d of %d samples faulted, scored %s (on_fault=count): %s",
                        bound.label, len(faults), n, spec.fault_score, where)
            for i in faults:
                values[i], status[i] = spec.fault_score, "error"
        return values, status

    def _per_sample(self, spec: RewardSpec, bound: BoundReward | TimedReward, prompts, completions, columns):
        n = len(completions)
        if bound.wants_group:  # a group-level judgement cannot be split: the whole batch faulted
            return [spec.fault_score] * n, ["error"] * n
        values: list[float | None] = []
        status: list[str] = []
        for i in range(n):
            one = {k: v[i:i + 1] for k, v in columns.items()}
            try:
                (v,), (st,) = self._validate(bound.label, bound(prompts[i:i + 1], completions[i:i + 1], one, None), 1)
            except RewardError:
                raise
            except Exception:
                v, st = spec.fault_score, "error"
            if st in ("error", "timeout") or (v is not None and not math.isfinite(v)):
                v, st = spec.fault_score, st if st == "timeout" else "error"
            values.append(v)
            status.append(st)
        log.warning("reward %r: %d of %d samples faulted, scored %s", bound.label, status.count("error"), n,
                    spec.fault_score)
        return values, status

    @staticmethod
    def _validate(label: str, raw: Any, n: int) -> tuple[list[float | None], list[str]]:
        """Shape and type checks: a function that fails these has a bug, whatever on_fault says."""
        if hasattr(raw, "tolist") and not isinstance(raw, list):  # numpy arrays, torch tensors
            raw = raw.tolist()
        if not isinstance(raw, (list, tuple)):
            raise RewardFunctionError(label, f"returned a {type(raw).__name__}; a reward returns a list of "
                                      "float | None, one per completion")
        if len(raw) != n:
            raise RewardFunctionError(label, f"returned {len(raw)} scores for {n} completions; return exactly one "
                                      "score (or None) per completion")
        values: list[float | None] = []
        for i, v in enumerate(raw):
            if v is None:
                values.append(None)
            elif isinstance(v, numbers.Real):
                values.append(float(v))
            else:
                raise RewardFunctionError(label, f"returned a {type(v).__name__} at index {i}; each score must be "
                                          "a float or None")
        status = list(raw.status) if isinstance(raw, Scores) else ["ok"] * n
        status = ["none" if v is None and st == "ok" else st for v, st in zip(values, status)]
        return values, status

    def close(self) -> None:
        """Shut the reward functions' worker pools (and models) down."""
        while self._bound:
            self._bound.pop().close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
