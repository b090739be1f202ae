"""RewardScorer / registry: the signature, combination, fault policy, and health metrics."""

from __future__ import annotations

import math
import textwrap
import time

import numpy as np
import pytest

from rewards import GroupInfo, RewardError, RewardFunctionError, RewardScorer, RewardSpec, Scores, register, resolve
from rewards.health import frac_zero_variance_groups


def ones(prompts, completions, **columns):
    return [1.0] * len(completions)


def first(prompts, completions, **columns):
    return [1.0, None, 0.5]


def second(prompts, completions, **columns):
    return [None, 3.0, 1.0]


def nothing(prompts, completions, **columns):
    return [None] * len(completions)


def raises(prompts, completions, **columns):
    raise ValueError("bad input")


def boom_on_marked(prompts, completions, **columns):
    if any("boom" in c for c in completions):
        raise ValueError("boom")
    return [float(len(c)) for c in completions]


def too_short(prompts, completions, **columns):
    return [1.0] * (len(completions) - 1)


def gives_nan(prompts, completions, **columns):
    return [1.0, math.nan, 0.0][: len(completions)]


def gives_text(prompts, completions, **columns):
    return ["1.0"] * len(completions)


def gives_numpy(prompts, completions, **columns):
    return np.arange(len(completions), dtype=np.float32)


def only_answer(prompts, completions, answer):  # no **kwargs: gets only the columns it names
    return [float(c == a) for c, a in zip(completions, answer)]


def with_bonus(prompts, completions, bonus=0.0, **columns):
    return [bonus] * len(completions)


def rank_in_group(prompts, completions, group: GroupInfo, **columns):
    """Pairwise judging as one function: 1.0 for the longest completion of each group."""
    out = [0.0] * len(completions)
    for g in set(group.group_ids):
        members = group.members(g)
        out[max(members, key=lambda i: len(completions[i]))] = 1.0
    return out


def group_via_flag(prompts, completions, **kwargs):
    return [float(kwargs["group"].group_size)] * len(completions)


group_via_flag.wants_group = True


def group_raises(prompts, completions, group, **columns):
    raise RuntimeError("judge unavailable")


def reports_error(prompts, completions, **columns):
    return Scores([1.0, 0.0, 1.0], ["ok", "error", "ok"], {1: "backend refused sample 1"})


class Closable:
    closed = False

    def __init__(self, num_workers: int = 1, scale: float = 1.0) -> None:
        self.scale, self.num_workers = scale, num_workers

    def __call__(self, prompts, completions, **columns):
        return [self.scale] * len(completions)

    def close(self):
        Closable.closed = True


HERE = "tests.unit.test_rewards_scorer"


def spec(fn: str, weight: float = 1.0, **kw) -> RewardSpec:
    return RewardSpec(f"{HERE}:{fn}", weight, **kw)


def group_of(n: int, g: int = 1) -> GroupInfo:
    return GroupInfo([i // g for i in range(n)], g, ["stop"] * n, [10] * n)


@pytest.fixture(autouse=True)
def importable(monkeypatch, request):
    monkeypatch.syspath_prepend(str(request.config.rootpath))


def test_weighted_sum_skips_none():
    with RewardScorer([spec("first", 2.0), spec("second", 0.5)]) as s:
        res = s(["p"] * 3, ["a", "b", "c"])
    assert res.total == [2.0, 1.5, 1.5]
    assert res.per_function == {f"{HERE}:first": [1.0, None, 0.5], f"{HERE}:second": [None, 3.0, 1.0]}


def test_sample_with_only_none_is_an_error():
    with RewardScorer([spec("nothing"), spec("first")]) as s, pytest.raises(RewardError, match=r"index \[1\]"):
        s(["p"] * 3, ["a", "b", "c"])


def test_raise_names_the_function_and_keeps_the_cause():
    with RewardScorer([spec("raises")]) as s, pytest.raises(RewardFunctionError, match="raises.*ValueError: bad") as e:
        s(["p"], ["a"])
    assert isinstance(e.value.__cause__, ValueError)
    assert e.value.function == f"{HERE}:raises"


@pytest.mark.parametrize("on_fault", ["error", "count"])
def test_wrong_length_is_always_an_error(on_fault):
    with RewardScorer([spec("too_short")], on_fault=on_fault) as s:
        with pytest.raises(RewardFunctionError, match="too_short.*returned 2 scores for 3 completions"):
            s(["p"] * 3, ["a", "b", "c"])


@pytest.mark.parametrize("fn,match", [("gives_text", "returned a str at index 0"),
                                      ("ones", None)])
def test_non_numbers_are_an_error(fn, match):
    with RewardScorer([spec(fn)], on_fault="count") as s:
        if match:
            with pytest.raises(RewardFunctionError, match=match):
                s(["p"], ["a"])
        else:
            assert s(["p"], ["a"]).total == [1.0]


def test_numpy_arrays_are_accepted():
    with RewardScorer([spec("gives_numpy")]) as s:
        assert s(["p"] * 3, ["a", "b", "c"]).total == [0.0, 1.0, 2.0]


def test_nan_is_an_error_naming_the_function():
    with RewardScorer([spec("gives_nan")]) as s, pytest.raises(RewardFunctionError, match="gives_nan.*sample 1"):
        s(["p"] * 3, ["a", "b", "c"])


def test_count_mode_scores_faults_with_the_default_and_counts_them():
    with RewardScorer([spec("gives_nan", fault_score=-1.0)], on_fault="count") as s:
        res = s(["p"] * 3, ["a", "b", "c"], group=group_of(3))
    assert res.total == [1.0, -1.0, 0.0]
    assert res.status[f"{HERE}:gives_nan"] == ["ok", "error", "ok"]
    assert res.metrics[f"reward/{HERE}:gives_nan/frac_error"] == pytest.approx(1 / 3)


def test_count_mode_isolates_the_faulty_samples():
    with RewardScorer([spec("boom_on_marked", fault_score=-5.0)], on_fault="count") as s:
        res = s(["p"] * 3, ["ab", "boom", "abc"])
    assert res.total == [2.0, -5.0, 3.0]  # retried one by one: only the raising sample gets the default
    assert res.metrics[f"reward/{HERE}:boom_on_marked/frac_error"] == pytest.approx(1 / 3)


def test_count_mode_group_function_faults_the_whole_batch():
    with RewardScorer([spec("group_raises", fault_score=0.25)], on_fault="count") as s:
        res = s(["p"] * 2, ["a", "b"], group=group_of(2, 2))
    assert res.total == [0.25, 0.25]
    assert res.metrics[f"reward/{HERE}:group_raises/frac_error"] == 1.0


def test_builtin_error_status_follows_the_fault_policy():
    with RewardScorer([spec("reports_error")]) as s, pytest.raises(RewardFunctionError, match="backend refused"):
        s(["p"] * 3, ["a", "b", "c"])
    with RewardScorer([spec("reports_error", fault_score=0.5)], on_fault="count") as s:
        assert s(["p"] * 3, ["a", "b", "c"]).total == [1.0, 0.5, 1.0]


def test_group_structure_reaches_group_aware_functions():
    with RewardScorer([spec("rank_in_group"), spec("group_via_flag", 0.0)]) as s:
        res = s(["p"] * 4, ["a", "bbb", "cc", "c"], group=group_of(4, 2))
    assert res.per_function[f"{HERE}:rank_in_group"] == [0.0, 1.0, 1.0, 0.0]
    assert res.per_function[f"{HERE}:group_via_flag"] == [2.0] * 4


def test_columns_go_to_named_parameters_and_kwargs():
    with RewardScorer([spec("only_answer"), spec("with_bonus", kwargs={"bonus": 0.25})]) as s:
        res = s(["p"] * 2, ["4", "5"], {"answer": ["4", "4"], "other": [1, 2]})
    assert res.total == [1.25, 0.25]


def test_option_clashing_with_a_column_is_an_error():
    with RewardScorer([spec("with_bonus", kwargs={"bonus": 1.0})]) as s, pytest.raises(RewardError, match="bonus"):
        s(["p"], ["a"], {"bonus": [0.0]})


def test_column_length_mismatch_is_an_error():
    with RewardScorer([spec("ones")]) as s, pytest.raises(RewardError, match="column 'answer' has 1 entries"):
        s(["p"] * 2, ["a", "b"], {"answer": ["x"]})


def test_reward_from_a_file_path(tmp_path):
    f = tmp_path / "my_rewards.py"
    f.write_text(textwrap.dedent("""
        def brevity(prompts, completions, answer, **columns):
            return [(1.0 if len(c.split()) <= 5 else 0.5) if a in c else 0.0 for c, a in zip(completions, answer)]
    """))
    with RewardScorer([RewardSpec(f"{f}:brevity")]) as s:
        res = s(["p"] * 3, ["it is 4", "well, after a long think, it is 4", "5"], {"answer": ["4", "4", "4"]})
    assert res.total == [1.0, 0.5, 0.0]


def test_reward_from_a_package_module(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "mod.py").write_text("def fn(prompts, completions, **kw):\n"
                                               "    return [2.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with RewardScorer([RewardSpec("mypkg.mod:fn", 0.5)]) as s:
        assert s(["p"], ["a"]).total == [1.0]


@pytest.mark.parametrize("name,match", [
    ("math_acuracy", "Did you mean 'math_accuracy'"),
    ("nopkg_xyz.mod:fn", "cannot import module 'nopkg_xyz.mod'"),
    ("/nonexistent/r.py:fn", "does not exist"),
    (f"{HERE}:missing", "has no attribute 'missing'"),
])
def test_bad_names_say_what_to_do(name, match):
    with pytest.raises(RewardError, match=match):
        RewardScorer([RewardSpec(name)])


def test_builtin_options_are_checked():
    with pytest.raises(RewardError, match="no option.*timeout"):
        RewardScorer([RewardSpec(f"{HERE}:Closable", kwargs={"timeout": 1})])


def test_classes_get_kwargs_and_num_workers_and_are_closed():
    cls = resolve(f"{HERE}:Closable")  # the class as the scorer imports it (pytest may load this file twice)
    cls.closed = False
    with RewardScorer([RewardSpec(f"{HERE}:Closable", kwargs={"scale": 3.0})], num_workers=7) as s:
        assert s(["p"], ["a"]).total == [3.0]
        assert s._bound[0].fn.num_workers == 7
        assert not cls.closed
    assert cls.closed


def test_register_and_duplicate_labels():
    register("test_rewards_constant")(ones)
    assert resolve("test_rewards_constant") is ones
    with RewardScorer([RewardSpec("test_rewards_constant"), RewardSpec("test_rewards_constant", 2.0)]) as s:
        res = s(["p"], ["a"])
    assert list(res.per_function) == ["test_rewards_constant", "test_rewards_constant#2"]
    assert res.total == [3.0]
    with pytest.raises(RewardError, match="already taken"):
        register("math_accuracy")(ones)


def test_health_metrics_values():
    with RewardScorer([spec("first"), spec("second")]) as s:
        res = s(["p"] * 3, ["a", "b", "c"], group=GroupInfo([0, 0, 1], 2, ["stop"] * 3, [1, 2, 3]))
    m = res.metrics
    assert m[f"reward/{HERE}:first/mean"] == pytest.approx(0.75)
    assert m[f"reward/{HERE}:first/std"] == pytest.approx(0.25)
    assert m[f"reward/{HERE}:first/frac_none"] == pytest.approx(1 / 3)
    assert m[f"reward/{HERE}:second/frac_timeout"] == 0.0
    assert res.total == pytest.approx([1.0, 3.0, 1.5])
    assert "reward/total/mean" not in m  # the loop's reward/mean (global batch) is the one producer
    # totals [1.0, 3.0 | 1.5]: group 0 varies, group 1 (one member) cannot
    assert m["reward/frac_zero_var_groups"] == 0.5


def test_frac_zero_variance_groups():
    assert frac_zero_variance_groups([1, 1, 0, 1, 2, 2], [0, 0, 1, 1, 2, 2]) == pytest.approx(2 / 3)


def test_bad_on_fault_value():
    with pytest.raises(RewardError, match="on_fault"):
        RewardScorer([spec("ones")], on_fault="ignore")


def hangs_on_marked(prompts, completions, **columns):
    import time

    if any("hang" in c for c in completions):
        time.sleep(60)
    return [float(len(c)) for c in completions]


@pytest.mark.parametrize("on_fault", ["error", "count"])
def test_timeout_s_bounds_a_hanging_user_function(on_fault):
    spec = RewardSpec(f"{HERE}:hangs_on_marked", timeout_s=1.0, fault_score=-1.0)
    with RewardScorer([spec], num_workers=1, on_fault=on_fault) as s:
        t0 = time.monotonic()
        res = s(["p"] * 3, ["ab", "hang", "abc"])
        assert time.monotonic() - t0 < 20
    assert res.total == [2.0, -1.0, 3.0]  # only the hanging sample is lost; a timeout is not a fault
    assert res.status[f"{HERE}:hangs_on_marked"] == ["ok", "timeout", "ok"]
    assert res.metrics[f"reward/{HERE}:hangs_on_marked/frac_timeout"] == pytest.approx(1 / 3)


def test_timeout_s_keeps_the_fault_policy_for_raises():
    with RewardScorer([spec("raises", timeout_s=5.0)], num_workers=1) as s:
        with pytest.raises(RewardFunctionError, match="bad input"):
            s(["p"], ["a"])


def test_timeout_s_needs_an_importable_function():
    register("test_rewards_local_only")(ones)
    with pytest.raises(RewardError, match="import it by name"):
        RewardScorer([RewardSpec("test_rewards_local_only", timeout_s=1.0)])
