"""Generated completions -> reward scores: the one path training and evaluation share.

The trainer's rollouts, the held-out evaluation and `grpo eval` all call
`score_completions`, so a reward function sees the same prompt texts, the same
dataset columns (the gold answer also under `answer`) and the same group
structure in all three: a held-out score means what the training reward means.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from rewards.scorer import RewardScorer
from rewards.spec import RewardResult
from rewards.types import GroupInfo

Row = Mapping[str, Any]  # one dataset row: "prompt" (text or chat messages) + the other columns


class GeneratedCompletion(Protocol):
    """What scoring reads from a completion (rollouts.types.Completion has all of it)."""

    @property
    def prompt_index(self) -> int: ...  # position of the completion's prompt in `rows`

    @property
    def text(self) -> str: ...

    @property
    def finish_reason(self) -> str: ...  # "stop" | "length"

    @property
    def completion_ids(self) -> Sequence[int]: ...


def score_completions(scorer: RewardScorer, rows: Sequence[Row], completions: Sequence[GeneratedCompletion],
                      group_size: int, answer_column: str) -> RewardResult:
    """Score N completions of len(rows) prompts (completion i answers rows[completions[i].prompt_index]).

    Reward functions receive the user-visible prompt text, the completion text, every
    dataset column but "prompt" (one entry per completion; the `answer_column` values
    also as `answer`, which the built-in math reward and most user rewards read) and,
    if they ask for it, the GroupInfo.
    """
    group = GroupInfo(group_ids=[c.prompt_index for c in completions], group_size=group_size,
                      finish_reasons=[c.finish_reason for c in completions],
                      completion_lengths=[len(c.completion_ids) for c in completions])
    prompts = [_prompt_text(rows[c.prompt_index]["prompt"]) for c in completions]
    return scorer(prompts, [c.text for c in completions], columns=_columns(rows, completions, answer_column),
                  group=group)


def _prompt_text(prompt: str | Sequence[Mapping[str, str]]) -> str:
    """Raw text as is; a chat conversation -> its user turns."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt if m["role"] == "user")


def _columns(rows: Sequence[Row], completions: Sequence[GeneratedCompletion], answer_column: str) -> dict[str, list]:
    names = [n for n in rows[0] if n != "prompt"] if rows else []
    cols = {n: [rows[c.prompt_index][n] for c in completions] for n in names}
    if answer_column in cols:
        cols["answer"] = cols[answer_column]
    return cols
