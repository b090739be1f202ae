"""Every recipe config runs 2 steps on a tiny model; bad input fails before heavy work;
a user's reward function in their own file is used in a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo.config_io import load_config
from grpo.errors import DataError, GrpoError
from grpo.metrics import read_jsonl

pytestmark = pytest.mark.integration
CONFIGS = Path(__file__).parents[2] / "recipes" / "configs"
GRPO_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("train_reward_model"))
TINY = ["rollout.engine=hf", "rollout.group_size=2", "rollout.max_tokens=12", "train.steps=2",
        "train.prompts_per_step=2", "data.train_size=20", "data.eval_size=4", "train.plots=false",
        "train.tensorboard=false", "moe.kl_diag_every=1"]


def _run(cfg_path, tmp_path, overrides):
    from recipes.train_grpo import main

    cfg = load_config(cfg_path, [*TINY, f"train.output_dir={tmp_path}", *overrides])
    summary = main(cfg)
    return summary, [r for r in read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl") if "reward/mean" in r]


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory, tiny_dirs):
    """A randomly initialised sequence-classification model (stands in for a trained RM)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("rm")
    cfg = AutoConfig.from_pretrained(tiny_dirs["llama"], num_labels=1)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_dirs["llama"]).save_pretrained(out)
    return out


@pytest.mark.parametrize("path", GRPO_CONFIGS, ids=lambda p: p.stem)
def test_recipe_runs_two_steps_on_a_tiny_model(path, tmp_path, tiny_dirs, tiny_reward_model):
    extra = [f"model.name={tiny_dirs['mixtral']}"]
    if path.stem == "rm_grpo":
        extra.append(f"rewards.functions=[{{name: reward_model, kwargs: {{model: '{tiny_reward_model}'}}}}]")
    if path.stem == "code_grpo":
        # char-level tiny tokenizer: long HumanEval prompts are dropped (and counted)
        extra += ["rollout.max_model_len=1024", "data.drop_long_prompts=true"]
    summary, steps = _run(path, tmp_path, extra)
    assert [r["step"] for r in steps] == [1, 2]
    assert Path(summary["checkpoint"], "config.json").is_file()
    assert "eval/pass@1" in summary["before"] and "eval/pass@1" in summary["after"]
    if path.stem == "rm_grpo":  # a learned RM gives distinct scores: real advantages, a real update
        assert steps[0]["reward/std"] > 0


USER_REWARD = '''
CALLS = []

def ends_with_period(prompts, completions, answer, **columns):
    CALLS.append(len(completions))
    return [1.0 if c.strip().endswith(".") else 0.0 for c in completions]
'''


def test_user_reward_from_own_file(tmp_path, tiny_dirs):
    reward_file = tmp_path / "my_rewards.py"
    reward_file.write_text(USER_REWARD)
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"""
model: {{name: '{tiny_dirs["llama"]}'}}
data: {{source: 'reasoning_gym:basic_arithmetic'}}
rewards:
  functions:
    - {{name: '{reward_file}:ends_with_period', weight: 2.0}}
""")
    _, steps = _run(cfg_file, tmp_path, [])
    key = f"reward/{reward_file}:ends_with_period/mean"
    assert key in steps[0], sorted(steps[0])
    assert steps[0]["reward/mean"] == pytest.approx(2.0 * steps[0][key], abs=1e-6)


def _data_file(tmp_path, rows, name):
    f = tmp_path / f"{name}.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("columns", r"missing column\(s\) \['question', 'answer'\]; found columns \['problem'\]"),
    ("empty", "is empty"),
    ("context", r"does not fit rollout\.max_model_len"),
])
def test_bad_input_fails_before_heavy_work(case, message, tmp_path, tiny_dirs, monkeypatch):
    import rollouts

    def no_engine(*a, **k):
        raise AssertionError("the engine must not start on bad input")

    monkeypatch.setattr(rollouts, "make_engine", no_engine)
    rows = {"columns": [{"problem": "1+1"}] * 5, "empty": [], "context": [{"question": "x" * 400, "answer": "1"}] * 5}
    source = str(tmp_path / "nope.jsonl") if case == "missing" else str(_data_file(tmp_path, rows[case], case))
    with pytest.raises(DataError, match=message):
        _run(None, tmp_path, [f"model.name={tiny_dirs['llama']}", f"data.source={source}",
                              "rollout.max_model_len=128"])


def test_dense_model_with_replay_is_a_clear_error(tmp_path, tiny_dirs):
    with pytest.raises(GrpoError, match="needs an MoE policy"):
        _run(None, tmp_path, [f"model.name={tiny_dirs['llama']}", "moe.routing_replay=r3"])
