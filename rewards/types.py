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


class Scores(list):
    """What a built-in reward returns: TRL's list[float | None], plus one status per sample.

    Status "ok" is normal; "timeout" and "error" feed the health metrics
    `frac_timeout` / `frac_error` (an "error" sample's value is a placeholder the
    scorer replaces, or raises on, per its fault policy); any other tag (e.g.
    "no_answer", "load_error") is counted as `frac_<tag>`. `details` maps a sample
    index to a message saying what happened (shown in errors and logs).
    """

    def __init__(self, values, status: list[str] | None = None, details: dict[int, str] | None = None) -> None:
        super().__init__(values)
        self.status = list(status) if status is not None else ["ok"] * len(self)
        self.details = dict(details or {})
        if len(self.status) != len(self):
            raise ValueError(f"Scores: {len(self)} values but {len(self.status)} statuses")
