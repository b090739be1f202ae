"""Held-out evaluation scores exactly as training does (one scoring path: rewards.score_completions).

The data's gold column is `solution` (data.answer_column=solution); the rewards read `answer`
(a user function and the built-in math_accuracy). Training, `evaluate` and `grpo eval` must
give the same scores on the same completions: 1.0 where the completion is right, not 0.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import pytest

from grpo.config_io import load_config
from grpo.data import source_dir
from grpo.evaluate import evaluate
from grpo.run_setup import load_run_data
from recipes.train_grpo import generate_and_score
from rewards import build_scorer
from rollouts.types import Completion, SamplingConfig

SEEN: list[dict] = []  # what reads_answer received, call by call


def reads_answer(prompts: list[str], completions: list[str], answer: list[str], **columns) -> list[float]:
    SEEN.append({"prompts": list(prompts), "completions": list(completions), "answer": list(answer),
                 **{k: list(v) for k, v in columns.items()}})
    return [1.0 if c.endswith(f"answer is {a}") else 0.0 for c, a in zip(completions, answer)]


def always_raises(prompts: list[str], completions: list[str], **columns) -> list[float]:
    raise RuntimeError("this reward always faults")


class AnsweringEngine:
    """A model-free engine: member j of each group answers right when j is even, wrong when odd."""

    def __init__(self, solutions: dict[str, str]) -> None:
        self.solutions = solutions  # question -> gold

    def generate(self, prompts: Sequence, group_size: int, sampling: SamplingConfig,
                 return_routing: bool = False) -> list[Completion]:
        out = []
        for i, p in enumerate(prompts):
            gold = self.solutions[p[-1]["content"]]
            for j in range(group_size):
                text = f"The answer is {gold if j % 2 == 0 else int(gold) + 1}"
                out.append(Completion(i, [1, 2], [3] * (4 + j), [-0.5] * (4 + j), text, "stop"))
        return out

    def update_weights(self, named_tensors) -> None:
        pass

    def shutdown(self) -> None:
        pass


@pytest.fixture(params=["no_answer_column", "decoy_answer_column"])
def setup(tmp_path, request):
    """A data file whose gold is `solution`; with or without an unrelated `answer` column."""
    extra = {"answer": "decoy"} if request.param == "decoy_answer_column" else {}
    rows = [{"question": f"What is {a} + {b}?", "solution": str(a + b), **extra}
            for a in range(5) for b in range(4)]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "data": {"source": str(data), "answer_column": "solution"},
        "rewards": {"on_fault": "count", "functions": [
            {"name": "tests.unit.test_eval_scoring:reads_answer"},
            {"name": "math_accuracy", "weight": 0.5},
            {"name": "tests.unit.test_eval_scoring:always_raises", "weight": 1.0, "fault_score": 0.25}]},
        "rollout": {"group_size": 4},
        "train": {"output_dir": str(tmp_path / "runs")},
    }))
    SEEN.clear()
    engine = AnsweringEngine({r["question"]: r["solution"] for r in rows})
    return config, data, engine


def test_training_and_eval_score_the_same_completions_alike(setup, tmp_path):
    config, _, engine = setup
    cfg = load_config(config)
    task = load_run_data(cfg)
    ids = [0, 3, 5]
    with build_scorer(cfg.rewards, source_dir(cfg.data), cfg.train.output_dir) as scorer:
        _, train_res, _, _ = generate_and_score(cfg, engine, scorer, task.train, ids, step=1)
        ev = evaluate(engine, scorer, task.train.select(ids), answer_column=cfg.data.answer_column, k=4,
                      temperature=1.0)
    right = [1.0, 0.0, 1.0, 0.0] * len(ids)
    assert train_res.per_function["tests.unit.test_eval_scoring:reads_answer"] == right
    assert train_res.per_function["math_accuracy"] == right  # the built-in reads `answer` too
    assert train_res.per_function["tests.unit.test_eval_scoring:always_raises"] == [0.25] * len(right)
    assert train_res.total == [1.0 + 0.5 * r + 0.25 if r else 0.25 for r in right]
    # The reward function saw identical inputs on both paths: the gold under `answer`, not the decoy.
    train_call, eval_call = SEEN
    assert train_call == eval_call
    assert train_call["answer"] == train_call["solution"] and "decoy" not in train_call["answer"]
    # ... so the held-out numbers are the training scores' summaries.
    assert ev.pass_at_1 == pytest.approx(0.5) and ev.pass_at_k == pytest.approx(1.0)
    assert ev.mean_reward == pytest.approx(sum(train_res.total) / len(train_res.total))


def test_grpo_eval_scores_like_training(setup, monkeypatch, capsys):
    import grpo.models.loader
    import rollouts
    from grpo.cli import main

    config, data, engine = setup
    built = []

    def fake_make_engine(kind, model_dir, **kw):
        built.append((kind, model_dir, kw))
        return engine

    monkeypatch.setattr(rollouts, "make_engine", fake_make_engine)
    monkeypatch.setattr(grpo.models.loader, "resolve_model", lambda spec: f"/models/{spec}")
    rc = main(["eval", "--model", "fake", "--task", str(data), "--n", "4", "--config", str(config)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert built and built[0][0] == "vllm"
    # k=1 greedy: each problem's completion is member 0, the right answer -> pass@1 1.0, not 0.000.
    assert "pass@1 1.000" in out, out
    # mean reward 1 + 0.5 (math_accuracy) + 0.25: the recipe's fault_score, as in training (default 0.0).
    mean = float(out.split("mean reward ")[1].split()[0])
    assert math.isclose(mean, 1.75), out
    assert [c["answer"] for c in SEEN] == [c["solution"] for c in SEEN]
