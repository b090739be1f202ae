"""`math_accuracy`: 1.0 when the completion's final answer equals the gold answer, else 0.0.

Extraction (which part of the text is the answer) is math_extract's; equality
is math-verify's (symbolic and numeric: fractions, decimals, percentages,
LaTeX, thousands separators, `\\text{}` units). math-verify runs in a
TimeoutPool, so every item has a hard time limit; a timed-out item is scored
`timeout_score` (default 0.0) and reported as status "timeout", never dropped.

Per sample: None when the gold answer is missing (not applicable) or not
parseable (status "bad_gold"); 0.0 with status "no_answer" when no final answer
is found, "unparseable" when the found answer is not mathematics.

Identical (answer, gold) pairs are checked once: the G completions of a group
share their gold and often their answer; results are also cached across calls.
"""

from __future__ import annotations

from collections import OrderedDict

from rewards.errors import RewardError
from rewards.math_extract import MODES, extract_answer, gold_span
from rewards.timeout_pool import TimeoutPool
from rewards.types import Scores

_CACHE_SIZE = 100_000


class MathAccuracy:
    """Reward function object; call it like a plain TRL reward function.

    mode: "strict" (boxed / #### / "the answer is") or "last_number" (also fall back to the last number).
    answer_column: the dataset column with the gold answer.
    timeout_s: hard time limit per (answer, gold) check; timeout_score: the score of a timed-out check.
    """

    def __init__(self, mode: str = "strict", answer_column: str = "answer", timeout_s: float = 5.0,
                 timeout_score: float = 0.0, num_workers: int = 2) -> None:
        if mode not in MODES:
            raise RewardError(f"math_accuracy: mode must be one of {MODES}, got {mode!r}")
        self.mode, self.answer_column, self.timeout_score = mode, answer_column, timeout_score
        self.pool = TimeoutPool("rewards.math_verify_worker:check", num_workers=num_workers, timeout_s=timeout_s)
        self._cache: OrderedDict[tuple[str, str], tuple[float | None, str]] = OrderedDict()
        self.__name__ = "math_accuracy"

    @staticmethod
    def needed_columns(options: dict) -> list[list[str]]:
        """The gold answer (the data's `answer_column` arrives as `answer`): rewards.build reads this."""
        return [[options.get("answer_column", "answer")]]

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> Scores:
        if self.answer_column not in columns:
            raise RewardError(f"math_accuracy needs the gold answer in column {self.answer_column!r}; the batch has "
                           f"{sorted(columns)}. Pass answer_column=<name> if it is called something else.")
        golds = columns[self.answer_column]
        values: list[float | None] = []
        status: list[str] = []
        pairs: list[tuple[str, str] | None] = []
        for completion, gold in zip(completions, golds, strict=True):
            g = gold_span(gold)
            a = extract_answer(completion, self.mode) if g is not None else None
            pairs.append((a, g) if a is not None else None)
            values.append(None if g is None else 0.0)
            status.append("ok" if g is None else "no_answer")
        known = {p: self._cache[p] for p in pairs if p is not None and p in self._cache}
        todo = list(dict.fromkeys(p for p in pairs if p is not None and p not in known))
        for pair, (state, result) in zip(todo, self.pool.map(todo)):
            known[pair] = result if state == "ok" else (self.timeout_score, state)
            if state != "error":  # a worker crash may be transient: check again next time
                self._remember(pair, known[pair])
        details = {}
        for i, pair in enumerate(pairs):
            if pair is not None:
                values[i], status[i] = known[pair]
                if status[i] == "error":
                    details[i] = f"math-verify worker failed on answer {pair[0][:80]!r}"
        return Scores(values, status, details)

    def _remember(self, pair: tuple[str, str], outcome: tuple[float | None, str]) -> None:
        self._cache[pair] = outcome
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def close(self) -> None:
        self.pool.close()
