"""Errors the reward side raises; every message says what to fix."""

from __future__ import annotations

from grpo.errors import GrpoError  # dependency-free: one base class for every user-fixable error


class RewardError(GrpoError):
    """A reward problem the user has to fix (configuration, data, or a reward function)."""


class RewardFunctionError(RewardError):
    """A reward function misbehaved: it raised, returned the wrong length, or returned NaN/inf."""

    def __init__(self, function: str, message: str) -> None:
        super().__init__(f"reward function {function!r}: {message}")
        self.function = function
