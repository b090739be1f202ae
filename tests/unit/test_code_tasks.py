"""code_synth: seeded, disjoint splits, reference solutions pass their hidden tests, wrong ones fail.
(The same through the real sandbox: tests/integration/test_code_synth_sandbox.py.)"""

from __future__ import annotations

import pytest

from grpo.code_tasks import BY_NAME, TEMPLATES, generate
from grpo.config import DataConfig
from grpo.data import load_task
from grpo.errors import DataError
from rewards.code_tests import extract_code


def _passes(code: str, tests: list[str]) -> list[bool]:
    ns: dict = {}
    exec(code, ns)  # noqa: S102  (our own reference code)
    out = []
    for t in tests:
        try:
            exec(t, ns)  # noqa: S102
            out.append(True)
        except AssertionError:
            out.append(False)
    return out


def _task(**kw):
    cfg = dict(source="code_synth", train_size=400, eval_size=300, seed=0, generator_kwargs={"levels": [1, 2]})
    return load_task(DataConfig(**{**cfg, **kw}), ["test_list", "entry_point"])


def test_seeded_and_different_per_seed():
    a, b = generate(50, 3, levels=[1, 2, 3]), generate(50, 3, levels=[1, 2, 3])
    assert [p.row() for p in a] == [p.row() for p in b]
    c = generate(50, 4, levels=[1, 2, 3])
    assert [p.question for p in a] != [p.question for p in c]


def test_load_task_splits_are_disjoint_as_functions():
    task = _task()
    train, held = task.train.to_list(), task.eval.to_list()
    assert len(train) == 400 and len(held) == 300

    def key(r):  # the function itself: template + the hidden tests' expected behaviour via its solution body
        return r["task"], r["solution"].split("\n", 1)[1]

    assert not {r["question"] for r in train} & {r["question"] for r in held}
    # Names aside, no held-out function is a training function (same template, same constants).
    assert not {key(r) for r in train} & {key(r) for r in held}
    assert len({key(r) for r in train}) == len(train)  # no repeats inside a split either
    assert {r["task"] for r in held} <= {t.name for t in TEMPLATES if t.level in (1, 2)}
    assert train[0]["prompt"][-1] == {"role": "user", "content": train[0]["question"]}
    assert task.train.to_list() == _task().train.to_list()  # seeded end to end


def test_every_reference_solution_passes_and_a_wrong_one_fails():
    problems = generate(1500, 11, levels=[1, 2, 3])
    assert {p.template for p in problems} == set(BY_NAME)  # every template is exercised
    for p in problems:
        assert len(p.tests) == 5, p.question
        assert all(_passes(p.solution, p.tests)), (p.question, p.solution, p.tests)
        # A function that returns one of the expected values for every input fails some test.
        const = p.tests[0].split(" == ", 1)[1]
        assert not all(_passes(f"def {p.entry_point}(*args):\n    return {const}\n", p.tests)), p.question


def test_neighbouring_constant_is_caught():
    """The hidden tests pin the constants: the same template with other constants fails (nearly always)."""
    problems = generate(600, 2, levels=[1, 2, 3])
    caught = 0
    for p in problems:
        t = BY_NAME[p.template]
        other = next(q for q in generate(2, 99, templates=[p.template], exclude={p.key}))
        fields = {**other.consts, **{f"p{i}": name for i, name in enumerate(p.params)}}
        wrong = f"def {p.entry_point}({', '.join(p.params)}):\n    {t.body.format(**fields)}\n"
        caught += not all(_passes(wrong, p.tests))
    assert caught / len(problems) > 0.95, caught


def test_example_is_never_a_hidden_test_and_code_is_extractable():
    for p in generate(300, 1, levels=[1, 2, 3]):
        shown = p.question.split("For example, `", 1)[1].split("`", 1)[0]
        assert all(not t.startswith(f"assert {shown} ==") for t in p.tests)
        assert extract_code(f"Sure:\n```python\n{p.solution}```\nDone.", p.entry_point) == p.solution
    assert "For example" not in generate(1, 1, example=False)[0].question


def test_levels_and_templates_select():
    assert {p.level for p in generate(100, 0, levels=[3])} == {3}
    assert {p.template for p in generate(20, 0, templates=["add_const", "clamp"])} == {"add_const", "clamp"}


@pytest.mark.parametrize("kwargs,match", [
    ({"levels": [7]}, "no template has a level"),
    ({"templates": ["nope"]}, r"unknown template\(s\) \['nope'\]"),
    ({"colour": "red"}, "bad data.generator_kwargs"),
    ({"n_tests": 0}, "n_tests must be >= 1"),
])
def test_bad_generator_kwargs(kwargs, match):
    with pytest.raises(DataError, match=match):
        _task(generator_kwargs=kwargs, train_size=5, eval_size=5)


def test_exhausted_problem_space_says_what_to_do():
    # str_first has only 6 distinct problems (the first 1..6 characters).
    with pytest.raises(DataError, match="only 6 distinct problems"):
        generate(10, 0, templates=["str_first"])
