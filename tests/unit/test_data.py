"""Data loaders: generators give disjoint held-out sets; bad files fail clearly."""

from __future__ import annotations

import json

import pytest

from grpo.config import DataConfig
from grpo.data import load_task
from grpo.errors import DataError

SMALL_ADD = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=["+"])


def test_reasoning_gym_heldout_is_disjoint_and_seeded():
    cfg = DataConfig(source="reasoning_gym:basic_arithmetic", train_size=300, eval_size=100,
                     generator_kwargs=SMALL_ADD)
    a, b = load_task(cfg, ["answer"]), load_task(cfg, ["answer"])
    assert len(a.eval) == 100 and len(a.train) == 300
    assert not set(a.train["question"]) & set(a.eval["question"])
    assert a.train["question"] == b.train["question"]  # seeded
    assert a.train[0]["prompt"][-1] == {"role": "user", "content": a.train[0]["question"]}


def test_system_prompt_is_prepended():
    cfg = DataConfig(source="reasoning_gym:basic_arithmetic", train_size=10, eval_size=5,
                     generator_kwargs=SMALL_ADD, system_prompt="Answer with a number.")
    row = load_task(cfg).train[0]
    assert row["prompt"][0] == {"role": "system", "content": "Answer with a number."}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_file(tmp_path):
    f = _jsonl(tmp_path / "d.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(20)])
    task = load_task(DataConfig(source=str(f), eval_size=5), ["answer"])
    assert len(task.train) + len(task.eval) == 20 and len(task.eval) == 4


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_task(DataConfig(source=str(tmp_path / "nope.jsonl")))


def test_wrong_columns_lists_found_and_needed(tmp_path):
    f = _jsonl(tmp_path / "d.jsonl", [{"problem": "1+1", "solution": "2"}] * 3)
    with pytest.raises(DataError, match=r"missing column\(s\) \['question', 'answer'\]; found columns "
                                        r"\['problem', 'solution'\]"):
        load_task(DataConfig(source=str(f)), ["answer"])


def test_empty_file(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_task(DataConfig(source=str(f)))


def test_non_utf8_file(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"question": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        load_task(DataConfig(source=str(f)))


def test_empty_prompt_text(tmp_path):
    f = _jsonl(tmp_path / "d.jsonl", [{"question": "  ", "answer": "1"}] * 5)
    with pytest.raises(DataError, match="empty or non-text prompt"):
        load_task(DataConfig(source=str(f)), ["answer"])


def test_hub_name_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE"):
        load_task(DataConfig(source="openai/gsm8k"))


def test_humaneval_split_is_honest():
    task = load_task(DataConfig(source="humaneval", eval_size=40), ["test", "entry_point"])
    assert len(task.train) + len(task.eval) == 164
    assert "evaluation set" in task.description
    assert not set(task.train["task_id"]) & set(task.eval["task_id"])
