"""Finding the final answer in a completion (and in a gold string), before math-verify compares them.

Markers, highest priority first, the last occurrence of each:
  1. `\\boxed{...}` / `\\fbox{...}` (balanced braces; `\\boxed 5` too)
  2. `#### N` (GSM8K)
  3. "the (final) answer is X", "answer: X" (case-insensitive, up to the end of the sentence or line)
  4. only in mode="last_number": the last number in the text (an explicit fallback, off by default)

The span found is tidied for math-verify: surrounding `$`/`\\(`, markdown bold,
currency signs and trailing unit words ("12 dollars" -> "12") are removed;
everything mathematical (fractions, percentages, LaTeX, thousands separators,
`\\text{cm}` units) is left to math-verify itself. All scans are linear in the
text length; nothing here can hang on hostile input.
"""

from __future__ import annotations

import re

MODES = ("strict", "last_number")

_BOX = re.compile(r"\\(?:boxed|fbox)\s*(\{)?")
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]*)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?\s*%?|[-+]?\.\d+")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\s+(?:because|since|so|which|and\s+that)\s")
_NUMBER_THEN_WORDS = re.compile(
    r"^\s*([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?\s*%?)\s+[A-Za-z][A-Za-z\s.'-]*$")


def _balanced(text: str, start: int) -> str | None:
    """Content of the brace group opening at text[start] == '{', or None if it never closes."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return None


def _last_boxed(text: str) -> str | None:
    found = None
    for m in _BOX.finditer(text):
        if m.group(1):
            inner = _balanced(text, m.end() - 1)
            if inner is not None:
                found = inner
        else:  # "\boxed 5"
            rest = re.match(r"\s*([^\s$]+)", text[m.end():])
            if rest:
                found = rest.group(1)
    return found


def _cut_sentence(span: str) -> str:
    m = _SENTENCE_END.search(span)
    return span[:m.start()] if m else span


def tidy(span: str) -> str:
    """Strip presentation around an answer span; leave the mathematics to math-verify."""
    s = span.strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]"), ("$$", "$$")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left):len(s) - len(right)].strip()
    s = s.replace("**", "").replace("\\$", "").replace("$", "").strip()
    s = s.rstrip(".,;:!").strip()
    if "\\" not in s and "=" not in s:
        m = _NUMBER_THEN_WORDS.match(s)
        if m:  # "12 dollars", "5 apples."
            s = m.group(1)
    return s


def extract_answer(text: str, mode: str = "strict") -> str | None:
    """The tidied final-answer span of `text`, or None when no marker (or number, in last_number mode)."""
    if mode not in MODES:
        raise ValueError(f"math answer mode must be one of {MODES}, got {mode!r}")
    boxed = _last_boxed(text)
    if boxed is not None:
        return tidy(boxed) or None
    for pattern in (_HASHES, _ANSWER_IS):
        last = None
        for last in pattern.finditer(text):
            pass
        if last is not None:
            span = tidy(_cut_sentence(last.group(1)))
            if span:
                return span
    if mode == "last_number":
        last = None
        for last in _NUMBER.finditer(text):
            pass
        if last is not None:
            return tidy(last.group(0))
    return None


def gold_span(gold: object) -> str | None:
    """The gold answer's span: its marked answer when it has one (`#### 72`, `\\boxed{}`), else all of it."""
    if gold is None:
        return None
    text = str(gold)
    return extract_answer(text) or tidy(text) or None
