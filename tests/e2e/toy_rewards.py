"""Rewards a tiny random model can learn in a few dozen steps (used by the e2e tests)."""

from __future__ import annotations


def digit_fraction(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """Fraction of the completion's characters that are digits (0 for an empty completion).

    A random char-level model starts near 10/100 = 0.1; emitting only digits gives 1.0.
    """
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]
