"""think_format, overlong_penalty (DAPO), length_penalty (Kimi k1.5)."""

from __future__ import annotations

import pytest

from rewards import GroupInfo, RewardError, RewardScorer, RewardSpec
from rewards.shaping import length_penalty, overlong_penalty, think_format


@pytest.mark.parametrize("text,expected", [
    ("<think>2+2 is 4</think><answer>4</answer>", 1.0),
    ("<think>\nreasoning\n</think>\n\n<answer>\n4\n</answer>\n", 1.0),
    ("  <think>a</think> <answer>b</answer>", 1.0),
    ("<think></think><answer>4</answer>", 0.0),  # empty reasoning
    ("<think>a</think><answer> </answer>", 0.0),  # empty answer
    ("<think>a</think>4", 0.0),  # no answer tags
    ("<answer>4</answer><think>a</think>", 0.0),  # wrong order
    ("<think>a</think><answer>4</answer> trailing text", 0.0),
    ("preamble <think>a</think><answer>4</answer>", 0.0),
    ("<think>a<think>b</think><answer>4</answer>", 0.0),  # nested think
    ("<think>a</think><answer>4</answer><answer>5</answer>", 0.0),  # two answers
    ("<think>a</think><think>b</think><answer>4</answer>", 0.0),
    ("", 0.0),
])
def test_think_format(text, expected):
    assert think_format([""], [text]) == [expected]


def test_think_format_variants():
    assert think_format([""], ["<think>a</think> the answer is 4"], answer_tags=False) == [1.0]
    assert think_format([""], ["<think>a</think>   "], answer_tags=False) == [0.0]
    assert think_format([""], ["reasoning</think><answer>4</answer>"], think_in_prompt=True) == [1.0]
    assert think_format([""], ["<think>reasoning</think><answer>4</answer>"], think_in_prompt=True) == [0.0]


def group(lengths, ids=None):
    return GroupInfo(ids or [0] * len(lengths), len(lengths), ["stop"] * len(lengths), lengths)


def test_overlong_penalty_matches_dapo():
    g = group([50, 80, 81, 90, 100, 120])
    out = overlong_penalty([""] * 6, [""] * 6, group=g, max_completion_len=100, soft_cache_len=20)
    assert out == pytest.approx([0.0, 0.0, -0.05, -0.5, -1.0, -1.0])


def test_overlong_penalty_needs_its_settings_and_the_group():
    with pytest.raises(RewardError, match="max_completion_len"):
        overlong_penalty([""], [""], group=group([1]))
    with pytest.raises(RewardError, match="soft_cache_len <= max_completion_len"):
        overlong_penalty([""], [""], group=group([1]), max_completion_len=10, soft_cache_len=20)
    with pytest.raises(RewardError, match="group=GroupInfo"):
        overlong_penalty([""], [""], max_completion_len=10, soft_cache_len=2)


def test_length_penalty_is_group_relative():
    g = group([10, 20, 30, 5, 5], ids=[0, 0, 0, 1, 1])
    assert length_penalty([""] * 5, [""] * 5, group=g) == pytest.approx([0.5, 0.0, -0.5, 0.0, 0.0])
    assert length_penalty([""] * 5, [""] * 5, group=g, penalize_only=True) == pytest.approx([0, 0, -0.5, 0, 0])


def test_shaping_through_the_scorer_gets_token_counts_from_the_group():
    specs = [RewardSpec("overlong_penalty", kwargs={"max_completion_len": 10, "soft_cache_len": 4}),
             RewardSpec("think_format", 0.5)]
    with RewardScorer(specs) as scorer:
        res = scorer(["p"] * 2, ["<think>a</think><answer>1</answer>", "x"], {}, group([4, 8]))
    assert res.per_function["overlong_penalty"] == pytest.approx([0.0, -0.5])
    assert res.total == pytest.approx([0.5, -0.5])
