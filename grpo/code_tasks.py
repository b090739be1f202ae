"""Procedural code-writing problems with hidden unit tests (`data.source: code_synth`).

A problem is a one-sentence spec of a small Python function, e.g.

    Write a Python function `shift_up(n)` that returns n plus 7.
    For example, `shift_up(3)` returns `10`.

with its `entry_point`, hidden MBPP-style asserts in `test_list` (inputs other
than the example's; `code_tests` scores the fraction passed) and the reference
`solution` that produced the expected values. Templates cover integer
arithmetic, comparisons, strings, lists and branches, with random function and
argument names and constants. A problem's identity is its template plus its
constants (names and inputs aside): held-out and training problems differ as
functions, not only as texts. Templates are shared by both splits (the
held-out set is in-distribution: new constants, new hidden inputs).

Generator kwargs (`data.generator_kwargs`):
  levels     difficulty levels drawn from, default [1, 2]: 1 one operation,
             2 two operations / a comprehension, 3 branches
  n_tests    hidden asserts per problem (default 5)
  example    show one input/output pair in the prompt (default true; never a hidden test)
  templates  only these template names (default: every template of `levels`)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from grpo.errors import DataError

WORDS = ("cat", "sun", "red", "box", "tree", "moon", "fish", "blue", "star", "rock", "leaf", "bird", "cup",
         "map", "king", "rain", "snow", "gold", "wolf", "lamp", "ship", "bell", "frog", "milk", "door")
LETTERS = "abcdeilmnorst"
ARG_NAMES = {"int": ("x", "n", "num", "value", "k"), "str": ("s", "text", "word", "name"),
             "list": ("nums", "numbers", "values", "items", "lst", "xs")}
PAIR_NAMES = (("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"), ("first", "second"))


@dataclass(frozen=True)
class Template:
    """One family of problems. `spec`/`body` are format strings over the parameter names p0, p1 and
    the constants; `consts(rng)` draws the constants (the problem's identity); `inputs(rng, consts)`
    draws one hidden-test input tuple."""

    name: str
    level: int
    kinds: tuple[str, ...]  # argument kinds: int | str | list
    consts: Callable[[random.Random], dict]
    spec: str
    body: str
    names: tuple[str, ...]
    inputs: Callable[[random.Random, dict], tuple]


def _int(r: random.Random, lo: int = -20, hi: int = 60) -> int:
    return r.randint(lo, hi)


def _near(r: random.Random, c: int, spread: int = 6) -> int:
    return c + r.randint(-spread, spread)


def _word(r: random.Random, letters: str = LETTERS) -> str:
    return "".join(r.choice(letters) for _ in range(r.randint(1, 7)))


def _word_with(r: random.Random, ch: str) -> str:
    """A random word that contains `ch` half of the time (so the tests are not all trivial)."""
    w = _word(r)
    if r.random() < 0.5:
        i = r.randint(0, len(w))
        w = w[:i] + ch * r.randint(1, 2) + w[i:]
    return w


def _ints(r: random.Random, lo: int = 0, hi: int = 9, min_len: int = 0) -> list[int]:
    return [r.randint(lo, hi) for _ in range(r.randint(min_len, 6))]


def _two_words(r: random.Random) -> dict:
    w1, w2 = r.sample(WORDS, 2)
    return {"w1": w1, "w2": w2}


def _one_int(f: Callable[[random.Random, dict], int]) -> Callable[[random.Random, dict], tuple]:
    return lambda r, c: (f(r, c),)


def _either(r: random.Random, a: Callable[[], Any], b: Callable[[], Any]) -> Any:
    return a() if r.random() < 0.5 else b()


T = Template
TEMPLATES: tuple[Template, ...] = (
    # level 1: one operation
    T("add_const", 1, ("int",), lambda r: {"c": r.randint(1, 99)}, "returns {p0} plus {c}",
      "return {p0} + {c}", ("add_offset", "shift_up", "increase", "plus_const", "raise_value"),
      _one_int(lambda r, c: _int(r))),
    T("sub_const", 1, ("int",), lambda r: {"c": r.randint(1, 99)}, "returns {p0} minus {c}",
      "return {p0} - {c}", ("subtract_offset", "shift_down", "decrease", "minus_const", "lower_value"),
      _one_int(lambda r, c: _int(r))),
    T("mul_const", 1, ("int",), lambda r: {"c": r.randint(2, 50)}, "returns {p0} multiplied by {c}",
      "return {p0} * {c}", ("scale", "multiply", "times_const", "scale_up", "grow"),
      _one_int(lambda r, c: _int(r))),
    T("mod_const", 1, ("int",), lambda r: {"c": r.randint(2, 50)},
      "returns the remainder of {p0} divided by {c}", "return {p0} % {c}",
      ("remainder", "mod_value", "leftover", "wrap_value"), _one_int(lambda r, c: _int(r, 0, 200))),
    T("floordiv_const", 1, ("int",), lambda r: {"c": r.randint(2, 50)},
      "returns {p0} divided by {c}, rounded down to a whole number", "return {p0} // {c}",
      ("divide", "split_count", "groups_of", "int_divide"), _one_int(lambda r, c: _int(r, 0, 200))),
    T("is_multiple", 1, ("int",), lambda r: {"c": r.randint(2, 50)},
      "returns True if {p0} is divisible by {c}, otherwise False", "return {p0} % {c} == 0",
      ("is_multiple", "divisible", "check_divisible", "fits_evenly"),
      _one_int(lambda r, c: _either(r, lambda: c["c"] * r.randint(0, 9), lambda: _int(r, 0, 200)))),
    T("greater_than", 1, ("int",), lambda r: {"c": r.randint(-30, 99)},
      "returns True if {p0} is greater than {c}, otherwise False", "return {p0} > {c}",
      ("is_big", "above_limit", "exceeds", "is_over"), _one_int(lambda r, c: _near(r, c["c"]))),
    T("min_const", 1, ("int",), lambda r: {"c": r.randint(-30, 99)},
      "returns the smaller of {p0} and {c}", "return min({p0}, {c})",
      ("cap", "at_most", "limit_high", "smaller"), _one_int(lambda r, c: _near(r, c["c"], 10))),
    T("max_const", 1, ("int",), lambda r: {"c": r.randint(-30, 99)},
      "returns the larger of {p0} and {c}", "return max({p0}, {c})",
      ("floor_at", "at_least", "limit_low", "larger"), _one_int(lambda r, c: _near(r, c["c"], 10))),
    T("str_repeat", 1, ("str",), lambda r: {"c": r.randint(2, 9)},
      "returns the string {p0} repeated {c} times", "return {p0} * {c}",
      ("repeat", "echo", "copies", "repeat_text"), lambda r, c: (_word(r),)),
    T("str_prefix", 1, ("str",), lambda r: {"w": r.choice(WORDS) + r.choice("_-: ")},
      "returns the string {p0} with {w!r} added at the front", "return {w!r} + {p0}",
      ("add_prefix", "prepend", "label", "tag_front"), lambda r, c: (_word(r),)),
    T("str_suffix", 1, ("str",), lambda r: {"w": r.choice("_-! ") + r.choice(WORDS)},
      "returns the string {p0} with {w!r} added at the end", "return {p0} + {w!r}",
      ("add_suffix", "append_text", "tag_end", "extend"), lambda r, c: (_word(r),)),
    T("str_first", 1, ("str",), lambda r: {"c": r.randint(1, 6)},
      "returns the first {c} characters of the string {p0} (all of it if it is shorter)", "return {p0}[:{c}]",
      ("head", "first_chars", "start_of", "take_front"), lambda r, c: (_word(r),)),
    T("str_last", 1, ("str",), lambda r: {"c": r.randint(1, 6)},
      "returns the last {c} characters of the string {p0} (all of it if it is shorter)", "return {p0}[-{c}:]",
      ("tail", "last_chars", "end_of", "take_back"), lambda r, c: (_word(r),)),
    T("str_count", 1, ("str",), lambda r: {"ch": r.choice(LETTERS)},
      "returns how many times the character {ch!r} appears in the string {p0}", "return {p0}.count({ch!r})",
      ("count_char", "occurrences", "how_many", "tally"), lambda r, c: (_word_with(r, c["ch"]),)),
    T("list_sum_const", 1, ("list",), lambda r: {"c": r.randint(1, 99)},
      "returns the sum of the numbers in the list {p0} plus {c}", "return sum({p0}) + {c}",
      ("total_plus", "sum_offset", "add_all", "summed"), lambda r, c: (_ints(r),)),
    T("list_count", 1, ("list",), lambda r: {"c": r.randint(0, 20)},
      "returns how many times {c} appears in the list {p0}", "return {p0}.count({c})",
      ("count_value", "occurrences", "how_many", "frequency"),
      lambda r, c: (_ints(r, 0, 20) + [c["c"]] * r.randint(0, 2),)),
    T("list_contains", 1, ("list",), lambda r: {"c": r.randint(0, 20)},
      "returns True if {c} is in the list {p0}, otherwise False", "return {c} in {p0}",
      ("contains", "has_value", "includes", "is_present"),
      lambda r, c: (_ints(r, 0, 20) + ([c["c"]] if r.random() < 0.5 else []),)),
    # level 2: two operations, a comprehension
    T("linear", 2, ("int",), lambda r: {"c": r.randint(2, 12), "d": r.randint(1, 50)},
      "returns {p0} times {c} plus {d}", "return {p0} * {c} + {d}",
      ("linear", "transform", "affine", "compute"), _one_int(lambda r, c: _int(r))),
    T("square_const", 2, ("int",), lambda r: {"c": r.randint(1, 99)},
      "returns the square of {p0} plus {c}", "return {p0} * {p0} + {c}",
      ("square_plus", "squared_offset", "power_up", "sq_shift"), _one_int(lambda r, c: _int(r, -15, 15))),
    T("sum_two_const", 2, ("int", "int"), lambda r: {"c": r.randint(1, 99)},
      "returns the sum of {p0} and {p1}, plus {c}", "return {p0} + {p1} + {c}",
      ("combine", "sum_plus", "add_pair", "total"), lambda r, c: (_int(r), _int(r))),
    T("diff_times", 2, ("int", "int"), lambda r: {"c": r.randint(2, 30)},
      "returns {p0} minus {p1}, multiplied by {c}", "return ({p0} - {p1}) * {c}",
      ("scaled_gap", "diff_scale", "gap_times", "spread"), lambda r, c: (_int(r), _int(r))),
    T("abs_diff", 2, ("int",), lambda r: {"c": r.randint(-30, 99)},
      "returns the distance between {p0} and {c}, that is the absolute value of their difference",
      "return abs({p0} - {c})", ("distance", "gap", "how_far", "abs_gap"),
      _one_int(lambda r, c: _near(r, c["c"], 20))),
    T("list_add_each", 2, ("list",), lambda r: {"c": r.randint(1, 50)},
      "returns a new list with {c} added to every element of the list {p0}", "return [v + {c} for v in {p0}]",
      ("shift_all", "add_each", "bump_all", "offset_list"), lambda r, c: (_ints(r),)),
    T("list_mul_each", 2, ("list",), lambda r: {"c": r.randint(2, 30)},
      "returns a new list with every element of the list {p0} multiplied by {c}",
      "return [v * {c} for v in {p0}]", ("scale_all", "multiply_each", "grow_all", "scaled_list"),
      lambda r, c: (_ints(r),)),
    T("list_filter_gt", 2, ("list",), lambda r: {"c": r.randint(0, 25)},
      "returns a list of the elements of the list {p0} that are greater than {c}, in their original order",
      "return [v for v in {p0} if v > {c}]", ("keep_big", "filter_above", "select_large", "above"),
      lambda r, c: (_ints(r, 0, 30),)),
    T("list_count_gt", 2, ("list",), lambda r: {"c": r.randint(0, 25)},
      "returns how many elements of the list {p0} are greater than {c}",
      "return len([v for v in {p0} if v > {c}])", ("count_big", "count_above", "num_large", "how_many_over"),
      lambda r, c: (_ints(r, 0, 30),)),
    T("list_max_const", 2, ("list",), lambda r: {"c": r.randint(1, 99)},
      "returns the largest number in the non-empty list {p0} plus {c}", "return max({p0}) + {c}",
      ("max_plus", "peak_offset", "top_shift", "highest_plus"), lambda r, c: (_ints(r, -9, 30, 1),)),
    T("str_replace", 2, ("str",), lambda r: dict(zip(("a", "b"), r.sample(LETTERS, 2))),
      "returns the string {p0} with every {a!r} replaced by {b!r}", "return {p0}.replace({a!r}, {b!r})",
      ("swap_char", "replace_char", "substitute", "fix_text"), lambda r, c: (_word_with(r, c["a"]),)),
    T("str_upper_suffix", 2, ("str",), lambda r: {"w": r.choice("_-! ") + r.choice(WORDS)},
      "returns the string {p0} in upper case followed by {w!r}", "return {p0}.upper() + {w!r}",
      ("shout", "loud_tag", "upper_label", "emphasize"), lambda r, c: (_word(r),)),
    # level 3: branches
    T("piecewise", 3, ("int",), lambda r: {"c": r.randint(-10, 50), "a": r.randint(2, 9), "b": r.randint(1, 50)},
      "returns {p0} times {a} if {p0} is less than {c}, otherwise {p0} plus {b}",
      "return {p0} * {a} if {p0} < {c} else {p0} + {b}", ("piecewise", "branch", "adjust", "rule"),
      _one_int(lambda r, c: _near(r, c["c"], 15))),
    T("word_if_multiple", 3, ("int",), lambda r: {"c": r.randint(2, 15), **_two_words(r)},
      "returns {w1!r} if {p0} is divisible by {c}, otherwise {w2!r}",
      "return {w1!r} if {p0} % {c} == 0 else {w2!r}", ("label_number", "classify", "name_it", "tag_number"),
      _one_int(lambda r, c: _either(r, lambda: c["c"] * r.randint(0, 9), lambda: _int(r, 0, 150)))),
    T("clamp", 3, ("int",), lambda r: (lambda lo: {"lo": lo, "hi": lo + r.randint(3, 40)})(r.randint(-20, 50)),
      "returns {p0} limited to the range {lo} to {hi}: {lo} if {p0} is below {lo}, {hi} if it is above {hi}, "
      "otherwise {p0}", "return min(max({p0}, {lo}), {hi})", ("clamp", "bound", "restrict", "keep_in_range"),
      _one_int(lambda r, c: r.randint(c["lo"] - 10, c["hi"] + 10))),
    T("sign_word", 3, ("int",), lambda r: dict(zip(("w1", "w2", "w3"), r.sample(WORDS, 3))),
      "returns {w1!r} if {p0} is negative, {w2!r} if it is zero, and {w3!r} if it is positive",
      "return {w1!r} if {p0} < 0 else ({w2!r} if {p0} == 0 else {w3!r})", ("sign_name", "describe", "kind_of"),
      _one_int(lambda r, c: _either(r, lambda: 0, lambda: _int(r, -30, 30)))),
    T("list_sum_multiples", 3, ("list",), lambda r: {"c": r.randint(2, 9)},
      "returns the sum of the elements of the list {p0} that are divisible by {c}",
      "return sum(v for v in {p0} if v % {c} == 0)", ("sum_multiples", "add_divisible", "total_of_multiples"),
      lambda r, c: (_ints(r, 0, 40),)),
)
BY_NAME = {t.name: t for t in TEMPLATES}


@dataclass
class Problem:
    template: str
    level: int
    key: str  # template + constants: the problem's identity across splits
    entry_point: str
    question: str
    solution: str
    tests: list[str]
    consts: dict
    params: list[str]

    def row(self) -> dict:
        return {"question": self.question, "entry_point": self.entry_point, "test_list": self.tests,
                "solution": self.solution, "task": self.template, "difficulty": float(self.level)}


def _call(name: str, args: tuple) -> str:
    return f"{name}({', '.join(map(repr, args))})"


def _cases(t: Template, consts: dict, fn: Callable, rng: random.Random, n_tests: int,
           example: bool) -> tuple[tuple | None, list[tuple]]:
    """Distinct inputs: the example's, then the hidden tests', whose expected outputs are not all
    equal when the template allows it (a constant `return` must not pass)."""
    shown = t.inputs(rng, consts) if example else None
    hidden: list[tuple] = []
    tries = 50 * (n_tests + 1)  # small input spaces give fewer tests
    for i in range(tries):
        args = t.inputs(rng, consts)
        if args == shown or args in hidden:
            continue
        if len(hidden) == n_tests - 1 and n_tests > 1 and i < tries // 2 and \
                len({repr(fn(*a)) for a in hidden + [args]}) == 1:
            continue  # the last slot breaks a tie of outputs (while it can)
        hidden.append(args)
        if len(hidden) == n_tests:
            break
    return shown, hidden


def make_problem(t: Template, rng: random.Random, n_tests: int = 5, example: bool = True) -> Problem:
    consts = t.consts(rng)
    name = rng.choice(t.names)
    params = list(rng.choice(PAIR_NAMES)) if len(t.kinds) == 2 else [rng.choice(ARG_NAMES[t.kinds[0]])]
    fields = {**consts, **{f"p{i}": p for i, p in enumerate(params)}}
    solution = f"def {name}({', '.join(params)}):\n    {t.body.format(**fields)}\n"
    ns: dict = {}
    exec(compile(solution, f"<{t.name}>", "exec"), ns)  # noqa: S102  (our own reference code)
    fn = ns[name]
    shown, hidden = _cases(t, consts, fn, rng, n_tests, example)
    spec = t.spec.format(**fields)
    question = f"Write a Python function `{name}({', '.join(params)})` that {spec}."
    if shown is not None:
        question += f" For example, `{_call(name, shown)}` returns `{fn(*shown)!r}`."
    tests = [f"assert {_call(name, a)} == {fn(*a)!r}" for a in hidden]
    key = t.name + ":" + ",".join(f"{k}={consts[k]!r}" for k in sorted(consts))
    return Problem(t.name, t.level, key, name, question, solution, tests, consts, params)


def _templates(levels: list[int], names: list[str] | None) -> list[Template]:
    if names:
        unknown = sorted(set(names) - set(BY_NAME))
        if unknown:
            raise DataError(f"code_synth: unknown template(s) {unknown}; known: {sorted(BY_NAME)}")
        chosen = [BY_NAME[n] for n in names]
    else:
        chosen = [t for t in TEMPLATES if t.level in levels]
    if not chosen:
        raise DataError(f"code_synth: no template has a level in {levels} (levels are 1, 2, 3).")
    return chosen


def generate(n: int, seed: int, levels: list[int] | tuple[int, ...] = (1, 2), n_tests: int = 5,
             example: bool = True, templates: list[str] | None = None,
             exclude: set[str] | frozenset[str] = frozenset()) -> list[Problem]:
    """n distinct problems (by key), none whose key is in `exclude`; the same for the same arguments."""
    if n_tests < 1:
        raise DataError(f"code_synth: n_tests must be >= 1, got {n_tests}")
    pool = _templates(list(levels), templates)
    rng = random.Random(seed)
    seen, out = set(exclude), []
    for _ in range(50 * n + 100):
        if len(out) == n:
            return out
        p = make_problem(rng.choice(pool), rng, n_tests, example)
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    if len(out) < n:
        raise DataError(f"code_synth: only {len(out)} distinct problems found of the {n} asked (levels {list(levels)}"
                        f"{', templates ' + str(templates) if templates else ''}); lower data.train_size / "
                        "data.eval_size or allow more levels / templates.")
    return out


def train_and_heldout(train_size: int, eval_size: int, seed: int, heldout_seed: int,
                      **kwargs) -> tuple[list[dict], list[dict]]:
    """Held-out problems first, then training problems whose keys avoid them: disjoint as functions."""
    held = generate(eval_size, heldout_seed, **kwargs)
    train = generate(train_size, seed, exclude={p.key for p in held}, **kwargs)
    return [p.row() for p in train], [p.row() for p in held]
