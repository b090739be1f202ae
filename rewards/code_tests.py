"""`code_tests`: run the completion's code against the sample's unit tests in the sandbox.

The code is the completion's fenced block (```python ... ```; the longest one, or
the longest defining the entry point), or the whole completion when it has no
fence. When the sample has a `prefix_column` (default `prompt_code`, e.g.
HumanEval's prompt with its imports and helpers), the code runs after it.

Test styles, by the columns present (names overridable):
- `test` + `entry_point`: HumanEval, `check(candidate)` is one test;
  `test` without a `check` function: a script calling the code's functions;
- `test_list`: MBPP, one test per assert string (`test_setup_code` runs first);
- `inputs` + `outputs`: stdin/stdout programs, one test per pair.
A sample with none of these gets None (not applicable).

Score: the fraction of tests passed (partial_credit=True) or 1.0 only when all
pass. Statuses: "timeout" (scored timeout_score), "error" (the tests could not
be run: a harness or dataset problem, left to the scorer's fault policy),
"no_code", "load_error" (syntax error / crash at import), "output_limit".
How the sandbox isolates the code and why its verdicts cannot be forged:
rewards/sandbox/__init__.py and SECURITY.md.
"""

from __future__ import annotations

import re
from concurrent.futures import Future
from pathlib import Path

from rewards.errors import RewardError
from rewards.sandbox import JudgeSpec, Sandbox, SandboxLimits
from rewards.sandbox.pool import default_hide
from rewards.types import Scores

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_TAGS = {"python", "py", "python3", "py3", ""}
IO_COMPARE = ("lines", "tokens", "exact")


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The code in a completion: a fenced Python block if there is one, else the whole text."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(completion)]
    py = [code for tag, code in blocks if tag in _PY_TAGS]
    if not py:
        return completion if not blocks else ""
    if entry_point:
        defining = [c for c in py if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", c, re.M)]
        py = defining or py
    return max(py, key=len)


def outputs_match(actual: str, expected: str, mode: str = "lines") -> bool:
    if mode == "exact":
        return actual == expected
    if mode == "tokens":
        return actual.split() == expected.split()
    strip = lambda s: [line.rstrip() for line in s.rstrip().splitlines()]  # noqa: E731
    return strip(actual) == strip(expected)


class CodeTests:
    """Reward function object for unit-tested code; call it like a plain TRL reward function.

    partial_credit: score = fraction of tests passed, instead of all-or-nothing.
    timeout_s / memory_mb / max_processes: per-sample sandbox limits (SandboxLimits has the rest: `limits`).
    io_compare: stdin/stdout comparison: lines (trailing spaces/newlines ignored), tokens, exact.
    backend: sandbox backend, "auto" | "unshare" | "bwrap".
    hide_paths: more directories to cover inside the sandbox, besides /root, /home and the current
        directory: e.g. your dataset's folder, so a completion cannot read its own expected answers.
    """

    def __init__(self, partial_credit: bool = False, timeout_s: float = 10.0, memory_mb: int = 1024,
                 max_processes: int = 32, num_workers: int = 2, timeout_score: float = 0.0,
                 io_compare: str = "lines", backend: str = "auto", limits: dict | None = None,
                 hide_paths: list[str] | None = None,
                 test_column: str = "test", entry_point_column: str = "entry_point",
                 test_list_column: str = "test_list", setup_column: str = "test_setup_code",
                 inputs_column: str = "inputs", outputs_column: str = "outputs",
                 prefix_column: str | None = "prompt_code") -> None:
        if io_compare not in IO_COMPARE:
            raise RewardError(f"code_tests: io_compare must be one of {IO_COMPARE}, got {io_compare!r}")
        self.partial_credit, self.timeout_score, self.io_compare = partial_credit, timeout_score, io_compare
        self.cols = dict(test=test_column, entry_point=entry_point_column, test_list=test_list_column,
                         setup=setup_column, inputs=inputs_column, outputs=outputs_column, prefix=prefix_column)
        lim = SandboxLimits(**{"timeout_s": timeout_s, "memory_mb": memory_mb, "max_processes": max_processes,
                               **(limits or {})})
        self.sandbox = Sandbox(lim, num_workers=num_workers, backend=backend,
                               hide=default_hide() + [str(p) for p in hide_paths or []])
        self.__name__ = "code_tests"

    @staticmethod
    def needed_columns(options: dict) -> list[list[str]]:
        """One of the test styles' column sets (rewards.build checks the data against them)."""
        col = lambda key, default: options.get(f"{key}_column", default)  # noqa: E731
        return [[col("test", "test"), col("entry_point", "entry_point")], [col("test_list", "test_list")],
                [col("inputs", "inputs"), col("outputs", "outputs")]]

    @staticmethod
    def run_options(options: dict, data_dir: Path | None, output_dir: Path | str) -> dict:
        """Also cover the dataset's folder and the run's output folder inside the sandbox: a completion
        must not read its own expected answer (the data file) or the trainer's checkpoints."""
        hide = [str(output_dir)] + ([str(data_dir)] if data_dir is not None else [])
        return {**options, "hide_paths": [*options.get("hide_paths", []), *hide]}

    def _col(self, columns: dict, key: str, i: int):
        name = self.cols[key]
        if name is None or name not in columns:
            return None
        return columns[name][i]

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> Scores:
        n = len(completions)
        values: list[float | None] = [None] * n
        status = ["ok"] * n
        details: dict[int, str] = {}
        jobs: list[tuple[int, str, list[Future]]] = []
        for i, completion in enumerate(completions):
            entry = self._col(columns, "entry_point", i)
            test, test_list = self._col(columns, "test", i), self._col(columns, "test_list", i)
            inputs, outputs = self._col(columns, "inputs", i), self._col(columns, "outputs", i)
            if test is None and test_list is None and inputs is None:
                continue  # not a code sample: None
            code = extract_code(completion, entry)
            if not code.strip():
                values[i], status[i] = 0.0, "no_code"
                continue
            prefix = self._col(columns, "prefix", i)
            if prefix:
                code = prefix.rstrip("\n") + "\n" + code
            setup = "\n".join(x for x in (prefix, self._col(columns, "setup", i)) if x)
            if test_list is not None:
                spec = JudgeSpec("asserts", list(test_list), setup=setup, entry_point=entry)
                jobs.append((i, "tests", [self.sandbox.submit_tests(code, spec)]))
            elif test is not None:
                style = "check" if entry and re.search(r"^def\s+check\s*\(", test, re.M) else "script"
                spec = JudgeSpec(style, [test], setup=setup, entry_point=entry)
                jobs.append((i, "tests", [self.sandbox.submit_tests(code, spec)]))
            else:
                if outputs is None or len(outputs) != len(inputs):
                    values[i], status[i] = 0.0, "error"
                    details[i] = f"sample has {len(inputs)} inputs but {0 if outputs is None else len(outputs)} outputs"
                    continue
                jobs.append((i, "io", [self.sandbox.submit_program(code, str(x)) for x in inputs]))
        for i, kind, futures in jobs:
            if kind == "tests":
                out = futures[0].result()
                passed, total, st, detail = out.passed, out.total, out.status, out.detail
            else:
                outs = [f.result() for f in futures]
                expected = self._col(columns, "outputs", i)
                passed = sum(o.status == "ok" and outputs_match(o.stdout, str(e), self.io_compare)
                             for o, e in zip(outs, expected))
                total = len(outs)
                bad = [o for o in outs if o.status != "ok"]
                st = "timeout" if any(o.status == "timeout" for o in outs) else \
                    "output_limit" if any(o.status == "output_limit" for o in outs) else "ok"
                detail = bad[0].detail if bad else ""
            status[i] = st
            if detail:
                details[i] = detail
            if st == "timeout":
                values[i] = self.timeout_score
            elif total == 0:
                values[i], status[i], details[i] = 0.0, "error", "the sample has no tests"
            else:
                values[i] = passed / total if self.partial_credit else float(passed == total)
        return Scores(values, status, details)

    def close(self) -> None:
        self.sandbox.close()
