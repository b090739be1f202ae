"""Reward functions that misbehave on the FakeEngine's POISON completions (1 sample in N)."""

from __future__ import annotations

import math
import threading

from tests.reliability.fakes import POISON

RELEASE = threading.Event()  # a hanging reward waits on this (the test sets it on teardown)


def digits(prompts, completions, **columns):
    """A well-behaved toy reward: fraction of digit characters."""
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


def raises_on_poison(prompts, completions, **columns):
    if any(POISON in c for c in completions):
        raise ValueError("cannot score a poisoned sample")
    return digits(prompts, completions)


def nan_on_poison(prompts, completions, **columns):
    return [math.nan if POISON in c else v for c, v in zip(completions, digits(prompts, completions))]


def inf_on_poison(prompts, completions, **columns):
    return [math.inf if POISON in c else v for c, v in zip(completions, digits(prompts, completions))]


def hangs_on_poison(prompts, completions, **columns):
    if any(POISON in c for c in completions):
        RELEASE.wait(120)  # "forever", bounded so a leaked thread ends
    return digits(prompts, completions)
