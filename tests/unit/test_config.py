"""Config loading: strict keys and types, overrides, every shipped recipe YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpo.config import RunConfig
from grpo.config_io import describe_fields, load_config, parse_overrides
from grpo.errors import ConfigError

# GRPO run configs; train_reward_model*.yaml have their own schema (tested with that recipe).
RECIPE_CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "recipes" / "configs").glob("*.yaml")
                        if not p.name.startswith("train_reward_model"))


def test_defaults_are_valid():
    cfg = load_config(None, [])
    assert isinstance(cfg, RunConfig) and cfg.rollout.group_size >= 2


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["algo.beta=0.04", "model.lora.enabled=true", "rollout.stop=[\"\\n\\n\"]",
                             "rewards.functions=[{name: think_format, weight: 0.5}]", "optim.lr=3e-6"])
    assert cfg.algo.beta == 0.04 and cfg.model.lora.enabled is True
    assert cfg.rollout.stop == ["\n\n"] and cfg.optim.lr == 3e-6
    assert cfg.rewards.functions[0].name == "think_format" and cfg.rewards.functions[0].weight == 0.5


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["algo.beta=1"]).algo.beta == 1.0
    with pytest.raises(ConfigError, match=r"rollout\.group_size: expected an integer"):
        load_config(None, ["rollout.group_size=2.5"])


@pytest.mark.parametrize("override,message", [
    ("algo.bta=1", r"unknown key algo\.bta \(algo accepts: .*beta"),
    ("nosuch.key=1", r"unknown key nosuch"),
    ("algo.loss=ppo", r"algo\.loss: expected one of 'grpo' \| 'dapo'"),
    ("model.lora.enabled=maybe", r"model\.lora\.enabled: expected true/false"),
    ("rollout.group_size=1", r"at least 2 completions"),
    ("rollout.max_model_len=10", r"max_model_len must exceed"),
    ("algo.dual_clip=0.5", r"dual_clip must be > 1"),
    ("rewards.functions=[]", r"at least one reward"),
    ("model=3", r"model: expected a mapping"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["algo.beta"])


def test_bad_yaml_files(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(missing)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("algo: {beta: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "bytes.yaml").write_bytes(b"algo:\n  loss: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bytes.yaml")


def test_every_field_is_documented():
    rows = describe_fields()
    assert len(rows) > 60
    undocumented = [key for key, _, _, doc in rows if not doc]
    assert not undocumented


def test_recipe_configs_exist():
    assert len(RECIPE_CONFIGS) >= 5, RECIPE_CONFIGS


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: p.name)
def test_every_recipe_yaml_loads(path):
    cfg = load_config(path)
    assert cfg.rewards.functions


def test_reward_timeout_and_fault_score_reach_the_scorer_spec(tmp_path):
    from grpo.data import source_dir
    from rewards.build import reward_options

    data = tmp_path / "data" / "mbpp.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    cfg = load_config(None, [f"data.source={data}", f"train.output_dir={tmp_path / 'out'}",
                             "rewards.functions=[{name: 'rewards.shaping:think_format', timeout_s: 2.5, "
                             "fault_score: -1}, {name: code_tests, kwargs: {hide_paths: [/srv/x]}}]"])
    user, code = cfg.rewards.functions
    assert (user.timeout_s, user.fault_score) == (2.5, -1.0)
    where = (source_dir(cfg.data), cfg.train.output_dir)
    assert reward_options(user.name, user.kwargs, *where) == {}
    # code_tests covers the data's folder and the run's outputs in its sandbox (rewards.code_tests.run_options)
    assert reward_options(code.name, code.kwargs, *where)["hide_paths"] == [
        "/srv/x", str(tmp_path / "out"), str(data.parent)]
    with pytest.raises(ConfigError, match="timeout_s"):
        load_config(None, ["rewards.functions=[{name: 'my.mod:fn', timeout_s: soon}]"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    from grpo.config_io import save_config

    cfg = load_config(RECIPE_CONFIGS[0], ["algo.kl_ratio=true", 'rollout.stop=["\\n\\n"]', "optim.lr=3e-6",
                                          "rewards.functions=[{name: math_accuracy, kwargs: {mode: last_number}}]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert path == tmp_path / "run" / "config.yaml" and not list(path.parent.glob("*.tmp"))
    again = load_config(path)
    assert again == cfg and again.algo.kl_ratio is True and again.rollout.stop == ["\n\n"]
