"""math_accuracy: answer extraction + math-verify equivalence, timeouts, statuses."""

from __future__ import annotations

import time

import pytest

from rewards import RewardError, RewardScorer, RewardSpec
from rewards.math_accuracy import MathAccuracy
from rewards.math_extract import extract_answer, gold_span
from rewards.timeout_pool import TimeoutPool

BIG = "9" * 1000

# (completion, gold, expected score); mode "strict" unless the id says otherwise.
EQUIVALENT = [
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "3/4", 1.0),
    ("The answer is 3/4.", "0.75", 1.0),
    ("\\boxed{\\frac12}", "0.5", 1.0),
    ("\\boxed{\\frac{6}{8}}", "\\frac{3}{4}", 1.0),
    ("\\boxed{\\frac{10}{4}}", "2.5", 1.0),
    ("\\boxed{2\\frac{1}{2}}", "2.5", 1.0),  # mixed number
    ("The answer is -0.25.", "-1/4", 1.0),
    ("#### 1,000", "1000", 1.0),
    ("The answer is 1,234,567", "1234567", 1.0),
    ("\\boxed{50\\%}", "50", 1.0),
    ("The answer is 50%.", "0.5", 1.0),
    ("\\boxed{10\\%}", "0.1", 1.0),
    ("\\boxed{12\\text{ cm}}", "12", 1.0),
    ("The answer is 12 dollars.", "12", 1.0),
    ("The answer is $12.", "12", 1.0),
    ("\\boxed{\\$12}", "12", 1.0),
    ("\\boxed{12.0}", "12", 1.0),
    ("\\boxed{3}", "3.0", 1.0),
    ("\\boxed{x = 5}", "5", 1.0),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", 1.0),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", 1.0),
    ("\\boxed{2\\pi}", "2\\pi", 1.0),
    ("\\boxed{\\pi \\cdot 2}", "2\\pi", 1.0),
    ("\\boxed{(1, 2)}", "(1,2)", 1.0),
    ("\\boxed{\\left(2, 3\\right)}", "(2,3)", 1.0),
    ("\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}", 1.0),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2", 1.0),
    ("\\boxed{x \\in [1, 2]}", "[1,2]", 1.0),
    ("\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", 1.0),
    ("\\boxed{\\infty}", "\\infty", 1.0),
    ("\\boxed{10^{100}}", "10^{100}", 1.0),
    ("\\boxed{-3}", "-3", 1.0),
    ("\\boxed{ 7 }", "7", 1.0),
    ("**The answer is 42**", "42", 1.0),
    ("Final answer: 8", "8", 1.0),
    ("so the final answer is \\boxed{8}. I hope that helps", "8", 1.0),
    ("#### 72", "#### 72", 1.0),  # GSM8K-style gold
    ("The answer is \\(\\frac{1}{3}\\)", "1/3", 1.0),
    ("\\boxed{5}", 5, 1.0),  # non-string gold
    ("\\boxed{5}", "\\boxed{5}", 1.0),
    ("\\boxed{0.333333333}", "1/3", 1.0),  # equal at math-verify's 6-digit float rounding
    ("The answer is 4, because 2 + 2 = 4.", "4", 1.0),
    ("first \\boxed{3}, then corrected: \\boxed{4}", "4", 1.0),  # the last box counts
]
WRONG_BUT_CLOSE = [
    ("\\boxed{0.3333}", "1/3", 0.0),
    ("\\boxed{13}", "12", 0.0),
    ("#### 1001", "1000", 0.0),
    ("\\boxed{12.01}", "12", 0.0),
    ("\\boxed{-5}", "5", 0.0),
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{4}", 0.0),
    ("\\boxed{x^2 + 2x}", "(x+1)^2", 0.0),
    ("\\boxed{(1,3)}", "(1,2)", 0.0),
    ("\\boxed{51\\%}", "0.5", 0.0),
    ("The answer is 1,001", "1000", 0.0),
    ("\\boxed{1000001}", "1000000", 0.0),
    ("\\boxed{2\\pi + 0.001}", "2\\pi", 0.0),
    ("\\boxed{\\sqrt{3}}", "1.732", 0.0),
    ("\\boxed{10^{100}+1}", "10^{100}", 0.0),
    ("first \\boxed{4}, then corrected: \\boxed{3}", "4", 0.0),
]
NO_ANSWER = [  # strict mode: no marker means no answer, score 0 with status no_answer
    ("I don't know.", "5", 0.0),
    ("", "5", 0.0),
    ("The result is 5", "5", 0.0),
    ("Let me think... 3 + 4 = 7", "7", 0.0),
    ("\\boxed{}", "0", 0.0),
    ("\\boxed{\\frac{1}{2}", "0.5", 0.0),  # never closed: not an answer
]
MALFORMED = [
    ("\\boxed{\\frac{1}{}}", "0.5", 0.0),
    ("\\boxed{\\sqrt{}}", "2", 0.0),
    ("\\boxed{1/0}", "1", 0.0),
    ("\\boxed{\\frac{1}{2}}}}}", "0.5", 1.0),  # stray closing braces after a complete box
    ("\\boxed{{{2}}}", "2", 1.0),
    ("The answer is yes", "1", 0.0),
]
HUGE = [
    ("\\boxed{" + "1+" * 200 + "1}", "201", 1.0),
    ("\\boxed{" + BIG + "}", BIG, 1.0),
    ("\\boxed{" + BIG[:-1] + "8}", BIG, 0.0),
    ("blah " * 200_000 + "\\boxed{7}", "7", 1.0),  # a 1 MB completion
    ("\\boxed{(10^{10})!}", "1", 0.0),
]
TABLE = EQUIVALENT + WRONG_BUT_CLOSE + NO_ANSWER + MALFORMED + HUGE
LAST_NUMBER = [
    ("3 + 4 = 7", "7", 1.0),
    ("It costs $1,250 in total", "1250", 1.0),
    ("the values are 3 and 4.5", "4.5", 1.0),
    ("so it is 7 apples", "7", 1.0),
    ("7, or maybe 8", "7", 0.0),
    ("\\boxed{6} and later 7", "6", 1.0),  # a marker still wins over the fallback
    ("nothing numeric here", "4", 0.0),
]


@pytest.fixture(scope="module")
def strict():
    m = MathAccuracy(num_workers=2, timeout_s=3.0)
    yield m
    m.close()


@pytest.fixture(scope="module")
def last_number():
    m = MathAccuracy(mode="last_number", num_workers=1, timeout_s=3.0)
    yield m
    m.close()


def test_table_is_big_enough():
    assert len(TABLE) >= 60


@pytest.mark.parametrize("completion,gold,expected", TABLE, ids=[f"t{i}" for i in range(len(TABLE))])
def test_math_table(strict, completion, gold, expected):
    res = strict([""], [completion], answer=[gold])
    assert list(res) == [expected], (completion[:80], gold, res.status, res.details)
    assert res.status[0] != "timeout"


def test_whole_table_in_one_batch_matches_single_calls(strict):
    res = strict([""] * len(TABLE), [c for c, _, _ in TABLE], answer=[g for _, g, _ in TABLE])
    assert list(res) == [e for _, _, e in TABLE]


@pytest.mark.parametrize("completion,gold,expected", LAST_NUMBER)
def test_last_number_fallback(last_number, completion, gold, expected):
    assert list(last_number([""], [completion], answer=[gold])) == [expected]


def test_statuses(strict):
    res = strict([""] * 5, ["I give up", "\\boxed{\\frac{1}{}}", "\\boxed{2}", "\\boxed{2}", "\\boxed{2}"],
                 answer=["2", "2", "2", None, "\\frac{"])
    assert list(res) == [0.0, 0.0, 1.0, None, None]
    assert res.status == ["no_answer", "unparseable", "ok", "ok", "bad_gold"]


def test_missing_answer_column_names_it(strict):
    with pytest.raises(RewardError, match="answer_column"):
        strict([""], ["\\boxed{1}"], gold=["1"])


@pytest.fixture(scope="module")
def quick_timeout():
    m = MathAccuracy(answer_column="solution", num_workers=1, timeout_s=1.0, timeout_score=-1.0)
    yield m
    m.close()


def test_answer_column_is_configurable(quick_timeout):
    assert list(quick_timeout([""], ["#### 3"], solution=["3"])) == [1.0]


def test_pathological_expression_times_out_and_is_counted(quick_timeout):
    t0 = time.monotonic()
    res = quick_timeout([""] * 3, ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{2}", "\\boxed{9^{9^{9^{9}}}}"],
                        solution=["1", "2", "1"])
    assert time.monotonic() - t0 < 30  # bounded (1 s each, plus a worker restart on a loaded machine)
    assert list(res) == [-1.0, 1.0, -1.0]  # scored as configured, not dropped
    assert res.status == ["timeout", "ok", "timeout"]


def test_timeouts_reach_the_scorer_metrics():
    spec = RewardSpec("math_accuracy", kwargs={"timeout_s": 1.0, "num_workers": 1})
    with RewardScorer([spec], on_fault="error") as scorer:
        res = scorer(["", ""], ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{2}"], {"answer": ["1", "2"]})
    assert res.total == [0.0, 1.0]
    assert res.metrics["reward/math_accuracy/frac_timeout"] == 0.5
    assert res.metrics["reward/math_accuracy/frac_error"] == 0.0


def test_timeout_pool_hard_kills_code_stuck_in_c():
    # pbkdf2 runs in C without checking for signals: only the parent's SIGKILL stops it.
    stuck = "__import__('hashlib').pbkdf2_hmac('sha256', b'x', b'y', 10**9)"
    with TimeoutPool("builtins:eval", num_workers=1, timeout_s=0.3, grace_s=0.3) as pool:
        t0 = time.monotonic()
        out = pool.map([stuck, "1 + 1", "[x for x in iter(int, 1)]", "2 * 3"])
        assert time.monotonic() - t0 < 8
        assert out == [("timeout", None), ("ok", 2), ("timeout", None), ("ok", 6)]
        assert pool.killed == 1  # the pbkdf2 item needed the hard kill; the Python loop stopped softly


def test_timeout_pool_reports_worker_errors():
    with TimeoutPool("builtins:eval", num_workers=1, timeout_s=2.0) as pool:
        out = pool.map(["1/0", "__import__('os')._exit(3)", "5"])
    assert out[0] == ("error", "ZeroDivisionError: division by zero")
    assert out[1][0] == "error" and "died" in out[1][1]
    assert out[2] == ("ok", 5)


@pytest.mark.parametrize("text,mode,span", [
    ("so \\boxed{\\frac{1}{2}}.", "strict", "\\frac{1}{2}"),
    ("\\boxed 5", "strict", "5"),
    ("\\fbox{3}", "strict", "3"),
    ("work\n#### 1,234\n", "strict", "1,234"),
    ("The answer is: $\\frac{1}{2}$.", "strict", "\\frac{1}{2}"),
    ("The final answer is 12 apples. Next", "strict", "12"),
    ("the answer is 3.5.", "strict", "3.5"),
    ("no marker 5", "strict", None),
    ("no marker 5 or -2.5", "last_number", "-2.5"),
    ("total 1,000,000 units", "last_number", "1,000,000"),
])
def test_extract_answer(text, mode, span):
    assert extract_answer(text, mode) == span


def test_gold_span_and_bad_mode():
    assert gold_span("Natalia sold... #### 72") == "72"
    assert gold_span(None) is None
    assert gold_span(3.5) == "3.5"
    with pytest.raises(ValueError, match="mode"):
        extract_answer("x", "first_number")
    with pytest.raises(RewardError, match="mode must be one of"):  # the option, checked before any pool starts
        MathAccuracy(mode="first_number")
