"""The part of `math_accuracy` that runs in the worker processes: math-verify's parse + verify.

Runs under TimeoutPool, which owns the timeouts; math-verify's own signal-based
timeouts are switched off (they would fight over SIGALRM).
"""

from __future__ import annotations

from functools import lru_cache

import math_verify.grader
import math_verify.parser
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

# We pass timeout=None on purpose (TimeoutPool enforces it); silence the one-time warning about that.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True

_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())


@lru_cache(maxsize=4096)
def _parse(span: str) -> tuple:
    # The span is already the answer (math_extract found it): present it as one inline formula.
    return tuple(parse(f"${span}$", list(_CONFIG), fallback_mode="no_fallback", parsing_timeout=None))


def check(item: tuple[str, str]) -> tuple[float | None, str]:
    """(answer span, gold span) -> (score, status): 1.0/0.0 and ok | unparseable; None and bad_gold."""
    answer, gold = item
    gold_parsed = _parse(gold)
    if not gold_parsed:
        return None, "bad_gold"
    answer_parsed = _parse(answer)
    if not answer_parsed:
        return 0.0, "unparseable"
    same = verify(list(gold_parsed), list(answer_parsed), timeout_seconds=None)
    return (1.0 if same else 0.0), "ok"


def _warm_up() -> None:
    """sympy builds its caches and imports submodules lazily on the first symbolic check: seconds
    on a loaded CPU. Pay that once at worker start (before "ready"), not against an item's timeout."""
    check(("x^2 + 2x + 1", "(x+1)^2"))
    check(("\\frac{1}{2}", "0.5"))
    _parse.cache_clear()


_warm_up()  # this module is imported only by pool workers (TimeoutPool target)
