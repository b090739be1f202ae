"""Format and length shaping: `think_format`, `overlong_penalty` (DAPO), `length_penalty` (Kimi k1.5).

Token counts come from the batch's GroupInfo (`completion_lengths`), i.e. the
policy's own tokenizer, so the length rewards need the scorer's `group`.
"""

from __future__ import annotations

import re

from rewards.errors import RewardError
from rewards.types import GroupInfo

_THINK = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_THINK_OPEN = re.compile(r"(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_THINK_ONLY = re.compile(r"\s*<think>(?P<think>.*?)</think>(?P<answer>.*)", re.DOTALL)
_THINK_ONLY_OPEN = re.compile(r"(?P<think>.*?)</think>(?P<answer>.*)", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def think_format(prompts: list[str], completions: list[str], answer_tags: bool = True,
                 think_in_prompt: bool = False, **columns) -> list[float]:
    """1.0 for R1's format: `<think>reasoning</think>` then `<answer>answer</answer>` and nothing else.

    Both parts must be non-empty and no tag may appear twice. answer_tags=False accepts any non-empty
    text after </think> instead of <answer> tags. think_in_prompt=True is for chat templates that open
    `<think>` in the prompt: the completion then starts inside the reasoning.
    """
    pattern = {(True, False): _THINK, (True, True): _THINK_OPEN,
               (False, False): _THINK_ONLY, (False, True): _THINK_ONLY_OPEN}[(answer_tags, think_in_prompt)]
    out = []
    for text in completions:
        m = pattern.fullmatch(text)
        ok = bool(m) and bool(m["think"].strip()) and bool(m["answer"].strip()) and \
            not any(tag in m["think"] or tag in m["answer"] for tag in _TAGS)
        out.append(1.0 if ok else 0.0)
    return out


def _lengths(group: GroupInfo | None, name: str) -> list[int]:
    if group is None:
        raise RewardError(f"{name} needs token counts: call the scorer with group=GroupInfo(...)")
    return group.completion_lengths


def overlong_penalty(prompts: list[str], completions: list[str], group: GroupInfo | None = None,
                     max_completion_len: int | None = None, soft_cache_len: int | None = None,
                     **columns) -> list[float]:
    """DAPO's soft overlong punishment: 0 up to max_completion_len - soft_cache_len tokens, then linearly
    down to -1 at max_completion_len, and -1 beyond (DAPO, Yu et al. 2025, eq. 13)."""
    if max_completion_len is None or soft_cache_len is None:
        raise RewardError("overlong_penalty needs kwargs max_completion_len (the rollout's max tokens) and "
                          "soft_cache_len (the length of the linear zone, e.g. max_completion_len // 4)")
    if not 0 < soft_cache_len <= max_completion_len:
        raise RewardError(f"overlong_penalty: need 0 < soft_cache_len <= max_completion_len, got "
                          f"{soft_cache_len} and {max_completion_len}")
    expected = max_completion_len - soft_cache_len
    out = []
    for n in _lengths(group, "overlong_penalty"):
        if n <= expected:
            out.append(0.0)
        elif n <= max_completion_len:
            out.append((expected - n) / soft_cache_len)
        else:
            out.append(-1.0)
    return out


def length_penalty(prompts: list[str], completions: list[str], group: GroupInfo | None = None,
                   penalize_only: bool = False, **columns) -> list[float]:
    """Kimi k1.5's group-relative length reward: 0.5 - (len - min) / (max - min) within each group,
    from +0.5 (shortest) to -0.5 (longest); 0 when all lengths are equal.

    Kimi gives correct answers this value and wrong ones min(0, value); here the correctness
    gate is left to the combination (weight it against math_accuracy), or penalize_only=True
    applies min(0, value) to every sample.
    """
    lengths = _lengths(group, "length_penalty")
    span: dict[int, tuple[int, int]] = {}
    for g, n in zip(group.group_ids, lengths, strict=True):
        lo, hi = span.get(g, (n, n))
        span[g] = (min(lo, n), max(hi, n))
    out = []
    for g, n in zip(group.group_ids, lengths):
        lo, hi = span[g]
        value = 0.0 if hi == lo else 0.5 - (n - lo) / (hi - lo)
        out.append(min(0.0, value) if penalize_only else value)
    return out
