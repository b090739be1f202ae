"""code_synth through the real sandbox: two problems per template, as a chat model would answer them.
Each reference solution scores 1.0 with `code_tests`; a wrong copy (every output changed) scores 0, and
so does a completion that does not define the entry point."""

from __future__ import annotations

import pytest

from grpo.code_tasks import BY_NAME, generate
from rewards import RewardScorer, RewardSpec

pytestmark = pytest.mark.integration

# Appended to a solution: the entry point now returns a different value of the same kind for every input.
CORRUPT = '''
_original = {ep}


def {ep}(*args):
    r = _original(*args)
    if isinstance(r, bool):
        return not r
    if isinstance(r, int):
        return r + 1
    if isinstance(r, str):
        return r + "?"
    return list(r) + [None]
'''


def _fenced(code: str) -> str:
    return f"Here is the function:\n```python\n{code}```\nIt returns the value asked for."


def test_reference_solutions_pass_and_wrong_ones_fail():
    problems = [p for t in sorted(BY_NAME) for p in generate(2, 7, templates=[t])]
    n = len(problems)
    completions = [_fenced(p.solution) for p in problems]
    completions += [_fenced(p.solution + CORRUPT.format(ep=p.entry_point)) for p in problems]
    completions += [_fenced(p.solution.replace(f"def {p.entry_point}(", "def helper(")) for p in problems]
    columns = {"test_list": [p.tests for p in problems] * 3, "entry_point": [p.entry_point for p in problems] * 3}
    spec = RewardSpec("code_tests", kwargs={"partial_credit": True})
    with RewardScorer([spec], num_workers=2, on_fault="error") as scorer:
        res = scorer([p.question for p in problems] * 3, completions, columns)
    scores = res.per_function["code_tests"]
    assert [p.question for i, p in enumerate(problems) if scores[i] != 1.0] == []
    assert [p.question for i, p in enumerate(problems) if scores[n + i] != 0.0] == []
    assert [p.question for i, p in enumerate(problems) if scores[2 * n + i] != 0.0] == []
    assert res.metrics["reward/code_tests/frac_timeout"] == 0.0
    assert res.metrics["reward/code_tests/frac_error"] == 0.0
