"""code_tests in the real sandbox: the three test styles, partial credit, statuses, fault policy."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from rewards import RewardFunctionError, RewardScorer, RewardSpec
from rewards.code_tests import CodeTests
from rewards.sandbox import JudgeSpec, Sandbox, SandboxLimits

pytestmark = pytest.mark.integration

ADD_BUGGY = "def add(a, b):\n    return a + b if a < 10 else 0\n"
ASSERTS = ["assert add(1, 2) == 3", "assert add(5, 5) == 10", "assert add(10, 1) == 11", "assert add(20, 2) == 22"]
SUM_IO = "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n"


@pytest.fixture(scope="module")
def partial():
    ct = CodeTests(partial_credit=True, timeout_s=5.0, num_workers=2)
    yield ct
    ct.close()


@pytest.fixture(scope="module")
def strict():
    ct = CodeTests(partial_credit=False, timeout_s=1.5, timeout_score=-0.5, num_workers=2)
    yield ct
    ct.close()


def test_assert_list_partial_credit_and_all_or_nothing(partial, strict):
    assert list(partial([""], [ADD_BUGGY], test_list=[ASSERTS])) == [0.5]
    assert list(strict([""], [ADD_BUGGY], test_list=[ASSERTS])) == [0.0]
    fixed = "```python\ndef add(a, b):\n    return a + b\n```"
    assert list(strict([""], [fixed], test_list=[ASSERTS])) == [1.0]


def test_stdin_stdout_partial_credit(partial, strict):
    inputs = [["1 2", "3 4\n5", "10"]]
    outputs = [["3", "12\n", "11"]]  # the last one is wrong on purpose: 2 of 3 can pass
    assert list(partial([""], [SUM_IO], inputs=inputs, outputs=outputs)) == pytest.approx([2 / 3])
    assert list(strict([""], [SUM_IO], inputs=inputs, outputs=outputs)) == [0.0]
    crash = "import sys\nprint(sum(map(int, sys.stdin.read().split())))\nraise SystemExit(1)\n"
    assert list(partial([""], [crash], inputs=inputs, outputs=outputs)) == [0.0]  # a failing exit code fails


def test_humaneval_style_with_setup_and_script_style(partial):
    check = "def check(candidate):\n    assert candidate(2) == double(2) * 2\n    assert candidate(0) == 0\n"
    setup = "def double(x):\n    return 2 * x\n"
    res = partial([""], ["def quad(x):\n    return double(double(x))\n"], test=[check], entry_point=["quad"],
                  prompt_code=[setup])
    assert list(res) == [1.0]
    script = "assert quad(3) == 12\nassert quad(1) == 4\n"
    assert list(partial([""], ["def quad(x):\n    return 4 * x\n"], test=[script])) == [1.0]


def test_mbpp_setup_code_runs_in_the_judge(partial):
    res = partial([""], ["def area(r):\n    return 3 * r * r\n"], test_list=[["assert area(2) == SCALE * 4"]],
                  test_setup_code=["SCALE = 3"])
    assert list(res) == [1.0]


def test_exceptions_the_tests_expect_are_honoured(partial):
    tests = ["try:\n    div(1, 0)\n    raise AssertionError('no error')\nexcept ZeroDivisionError:\n    pass",
             "assert div(6, 3) == 2"]
    assert list(partial([""], ["def div(a, b):\n    return a // b\n"], test_list=[tests])) == [1.0]


def test_values_keep_their_types(partial):
    tests = ["assert pair() == (1, 2)", "assert pair() != [1, 2]", "assert list(gen()) == [0, 1, 2]",
             "assert isinstance(gen(), type(iter([])))", "assert blob() == b'\\x00\\xff'"]
    code = ("def pair():\n    return (1, 2)\ndef gen():\n    return (i for i in range(3))\n"
            "def blob():\n    return bytes([0, 255])\n")
    assert list(partial([""], [code], test_list=[tests])) == [1.0]


def test_the_trainers_packages_are_importable_inside(partial):
    code = "import numpy as np\ndef norm(v):\n    return float(np.linalg.norm(np.array(v)))\n"
    assert list(partial([""], [code], test_list=[["assert norm([3, 4]) == 5.0"]])) == [1.0]


def test_statuses(strict):
    res = strict([""] * 5,
                 ["def f(:\n", "no code here, just words", "```python\n```", "def f():\n    while True: pass\n",
                  "def f():\n    return 1\n"],
                 test_list=[["assert f() == 1"]] * 4 + [None], answer=[None] * 5)
    assert list(res) == [0.0, 0.0, 0.0, -0.5, None]  # the timeout scores timeout_score
    assert res.status[:4] == ["load_error", "load_error", "no_code", "timeout"]
    assert "SyntaxError" in res.details[0]


def test_many_samples_run_in_parallel_and_keep_their_order(partial):
    n = 12
    codes = [f"def f():\n    return {i}\n" for i in range(n)]
    tests = [[f"assert f() == {i if i % 3 else -1}"] for i in range(n)]
    assert list(partial([""] * n, codes, test_list=tests)) == [0.0 if i % 3 == 0 else 1.0 for i in range(n)]


def test_harness_limits_follow_the_fault_policy():
    """A test that passes a callable can't be forwarded: an error, not a silent 0 for the candidate."""
    code = "def apply(f, x):\n    return f(x)\n"
    tests = [["assert apply(lambda v: v + 1, 1) == 2"]]
    with RewardScorer([RewardSpec("code_tests", kwargs={"timeout_s": 5.0})], num_workers=1) as scorer:
        with pytest.raises(RewardFunctionError, match="cannot forward"):
            scorer([""], [code], {"test_list": tests})
    with RewardScorer([RewardSpec("code_tests", kwargs={"timeout_s": 5.0}, fault_score=0.0)], num_workers=1,
                      on_fault="count") as scorer:
        res = scorer([""], [code], {"test_list": tests})
    assert res.metrics["reward/code_tests/frac_error"] == 1.0


def test_column_names_are_configurable():
    ct = CodeTests(test_list_column="tests", num_workers=1, timeout_s=5.0)
    try:
        assert list(ct([""], ["def f():\n    return 2\n"], tests=[["assert f() == 2"]])) == [1.0]
    finally:
        ct.close()


def test_sandbox_api_directly():
    with Sandbox(SandboxLimits(timeout_s=5.0), num_workers=1) as sb:
        out = sb.run_tests("def f(x):\n    return x * 2\n",
                           JudgeSpec("asserts", ["assert f(2) == 4", "assert f(1) == 3"]))
        assert (out.passed, out.total, out.status) == (1, 2, "ok")
        prog = sb.run_program("print(input()[::-1])", "abc\n")
        assert (prog.stdout, prog.status, prog.returncode) == ("cba\n", "ok", 0)


def test_hide_paths_cover_a_dataset_folder():
    data = Path(tempfile.mkdtemp(prefix="grpo-dataset-", dir="/var/lib"))  # outside the default-hidden dirs
    try:
        os.chmod(data, 0o755)
        (data / "answers.txt").write_text("42")
        os.chmod(data / "answers.txt", 0o644)
        code = f"def f():\n    return int(open({str(data / 'answers.txt')!r}).read())\n"
        open_ct = CodeTests(num_workers=1, timeout_s=5.0)
        hidden_ct = CodeTests(num_workers=1, timeout_s=5.0, hide_paths=[str(data)])
        try:
            assert list(open_ct([""], [code], test_list=[["assert f() == 42"]])) == [1.0]  # readable by default
            assert list(hidden_ct([""], [code], test_list=[["assert f() == 42"]])) == [0.0]
        finally:
            open_ct.close()
            hidden_ct.close()
    finally:
        shutil.rmtree(data)
