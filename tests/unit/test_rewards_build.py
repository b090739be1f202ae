"""rewards.build: a run's scorer and the data columns its rewards declare (no reward names special-cased in grpo/)."""

from __future__ import annotations

import json

import pytest

from grpo.config_io import load_config
from grpo.data import source_dir
from grpo.errors import DataError
from grpo.run_setup import load_run_data
from rewards import RewardError, build_scorer, check_columns, required_columns


def _cfg(tmp_path, rows: list[dict], functions: str, *extra: str):
    data = tmp_path / "data" / "rows.jsonl"
    data.parent.mkdir(exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_config(None, [f"data.source={data}", f"rewards.functions={functions}",
                              f"train.output_dir={tmp_path / 'out'}", *extra])


def test_math_accuracy_needs_the_gold_in_every_row(tmp_path):
    cfg = _cfg(tmp_path, [{"question": "1+1?", "solution": "2"}] * 4 + [{"question": "2+2?"}],
               "[{name: math_accuracy}]", "data.answer_column=solution")
    assert required_columns(cfg.rewards, "solution") == ["solution"]  # its `answer` is the data's answer_column
    with pytest.raises(DataError, match=r"missing column\(s\) \['solution'\] in row 4"):
        load_run_data(cfg)


def test_a_reward_whose_columns_are_missing_is_named_with_what_to_fix(tmp_path):
    cfg = _cfg(tmp_path, [{"question": "write f", "tests": "assert f() == 1"}] * 5, "[{name: code_tests}]")
    assert required_columns(cfg.rewards, "answer") == []  # several test styles: none is required per row
    with pytest.raises(DataError, match=r"reward code_tests needs columns \['test', 'entry_point'\] or "
                                        r"\['test_list'\] or \['inputs', 'outputs'\]; the data has "
                                        r"\['prompt', 'question', 'tests'\]\. Rename"):
        load_run_data(cfg)
    # the reward's own column options count: test_column=tests makes the same data fine
    renamed = _cfg(tmp_path, [{"question": "write f", "tests": "assert f() == 1", "entry_point": "f"}] * 5,
                   "[{name: code_tests, kwargs: {test_column: tests}}]")
    check_columns(renamed.rewards, ["question", "tests", "entry_point"], "answer")
    assert len(load_run_data(renamed).train) == 4


def test_user_functions_declare_nothing_and_pass(tmp_path):
    cfg = _cfg(tmp_path, [{"question": "q"}] * 5, "[{name: 'rewards.shaping:think_format'}]")
    assert required_columns(cfg.rewards, "answer") == []
    check_columns(cfg.rewards, ["question"], "answer")


def test_build_scorer_hides_the_data_and_output_folders_from_code(tmp_path):
    cfg = _cfg(tmp_path, [{"question": "q", "test_list": ["assert True"]}] * 5,
               "[{name: code_tests, weight: 2.0, kwargs: {num_workers: 1}}, {name: think_format, weight: 0.5}]")
    with build_scorer(cfg.rewards, source_dir(cfg.data), cfg.train.output_dir) as scorer:
        assert [(s.name, s.weight) for s in scorer.specs] == [("code_tests", 2.0), ("think_format", 0.5)]
        hide = scorer.specs[0].kwargs["hide_paths"]
        assert hide == [str(tmp_path / "out"), str((tmp_path / "data").resolve())]
        assert "hide_paths" not in scorer.specs[1].kwargs


@pytest.mark.parametrize("functions,match", [
    ("[{name: math_accuracy, kwargs: {mode: first_number}}]", "math_accuracy: mode must be one of"),
    ("[{name: code_tests, kwargs: {io_compare: fuzzy}}]", "code_tests: io_compare must be one of"),
    ("[{name: math_accuracy, kwargs: {nonsense: 1}}]", r"has no option\(s\) \['nonsense'\]"),
])
def test_bad_reward_options_are_reward_errors(tmp_path, functions, match):
    cfg = _cfg(tmp_path, [{"question": "q", "answer": "1"}] * 5, functions)
    with pytest.raises(RewardError, match=match):
        build_scorer(cfg.rewards, None, cfg.train.output_dir)


def test_bad_on_fault_is_a_reward_error(tmp_path):
    cfg = _cfg(tmp_path, [{"question": "q", "answer": "1"}] * 5, "[{name: think_format}]")
    cfg.rewards.on_fault = "ignore"  # the YAML loader already refuses it; the scorer checks by itself too
    with pytest.raises(RewardError, match="rewards.on_fault must be one of"):
        build_scorer(cfg.rewards, None, cfg.train.output_dir)


def test_a_missing_gold_column_stops_the_run_even_when_faults_are_counted():
    """It used to be a KeyError, which on_fault=count scored as per-sample faults (fault_score, quietly)."""
    from rewards import RewardScorer, RewardSpec

    spec = RewardSpec("math_accuracy", kwargs={"answer_column": "gold", "num_workers": 1})
    with RewardScorer([spec], on_fault="count") as scorer, \
            pytest.raises(RewardError, match="needs the gold answer in column 'gold'; the batch has \\['answer'\\]"):
        scorer(["q"], ["\\boxed{1}"], columns={"answer": ["1"]})
