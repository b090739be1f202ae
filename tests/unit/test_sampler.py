"""PromptSampler (the one curriculum) and DAPO dynamic sampling: what the loop draws, exactly resumable."""

from __future__ import annotations

import json

import torch

from grpo.dynamic_sampling import refill_zero_variance_groups
from grpo.sampler import PromptSampler
from rollouts.types import Completion


def _resumed(s: PromptSampler, make) -> PromptSampler:
    """A fresh sampler loaded with `s`'s state after a JSON round trip (what a checkpoint stores)."""
    other = make()
    other.load_state(json.loads(json.dumps(s.state())))
    return other


def test_pass_rate_is_a_running_average_and_resumes_exactly():
    make = lambda: PromptSampler(5, seed=2, curriculum="pass_rate")  # noqa: E731
    s = make()
    s.record(0, 1.0)
    s.record(0, 0.0)  # EMA with momentum 0.5: 0.5 * 1 + 0.5 * 0
    s.record(3, 0.25)
    assert s.pass_rate == {0: 0.5, 3: 0.25}
    s.next_batch(2)
    b = _resumed(s, make)
    assert b.pass_rate == s.pass_rate  # JSON turned the int keys into strings; load_state turns them back
    assert [b.next_batch(3) for _ in range(5)] == [s.next_batch(3) for _ in range(5)]


def test_difficulty_order_resumes_across_epochs():
    make = lambda: PromptSampler(4, seed=1, curriculum="difficulty", difficulty=[3, 1, 2, 1])  # noqa: E731
    s = make()
    first = s.next_batch(4)
    assert [[3, 1, 2, 1][i] for i in first] == [1, 1, 2, 3]  # easiest first, ties in seeded order
    s.next_batch(3)  # into the second epoch
    b = _resumed(s, make)
    assert [b.next_batch(3) for _ in range(3)] == [s.next_batch(3) for _ in range(3)]


def _group(G: int) -> list[Completion]:
    return [Completion(0, [1], [2], [-0.1], "x", "stop") for _ in range(G)]


def test_dynamic_sampling_drops_groups_whose_scorable_rewards_are_equal():
    """A group [1, NaN] has one scorable reward: its advantages are 0, so it is replaced (it used to be
    kept: NaN != 1 looked like variance)."""
    G, nan = 2, float("nan")
    draws = iter([([7], _group(G), torch.tensor([1.0, 0.0]))])
    out_ids, _, out_s, m = refill_zero_variance_groups([5, 6], _group(G) + _group(G),
                                                       torch.tensor([1.0, nan, 0.0, 1.0]), G, 2, lambda n: next(draws))
    assert out_ids == [6, 7] and out_s.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert m["dynamic_sampling/rounds"] == 1 and m["dynamic_sampling/filler_groups"] == 0
