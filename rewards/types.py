"""Types shared between the reward side and the trainer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupInfo:
    """The group structure of a scored batch, for rewards that judge within groups.

    A reward function receives it as the `group` keyword argument when its
    signature declares that parameter (or **kwargs with `wants_group = True`).
    """

    group_ids: list[int]  # per completion: index of the prompt it answers
    group_size: int  # G
    finish_reasons: list[str]  # per completion: "stop" | "length"
    completion_lengths: list[int]  # per completion: number of tokens

    def members(self, group_id: int) -> list[int]:
        return [i for i, g in enumerate(self.group_ids) if g == group_id]
