"""The reward-model recipe's pure parts: its config and the preference pairs it builds."""

from __future__ import annotations

import re

import pytest

from grpo.errors import ConfigError
from recipes.train_reward_model import DEFAULT_CONFIG, RMConfig, arithmetic_pairs, load_config, load_pairs


def test_default_config_loads_and_overrides_are_typed():
    cfg = load_config([])
    assert isinstance(cfg, RMConfig) and cfg.negatives == "far" and cfg.n_train_pairs == 2000
    cfg = load_config([str(DEFAULT_CONFIG), "epochs=1", "lr=5e-5"])
    assert (cfg.epochs, cfg.lr) == (1.0, 5e-5)
    with pytest.raises(ConfigError, match="unknown key n_pairs"):
        load_config(["n_pairs=3"])
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(["batch_size=[1]"])


def _numbers(pair: dict) -> tuple[int, int, int, int]:
    a, b = map(int, re.findall(r"\d+", pair["prompt"]))
    return a, b, int(re.search(r"\d+", pair["chosen"]).group()), int(re.search(r"\d+", pair["rejected"]).group())


@pytest.mark.parametrize("negatives", ["far", "near", "mixed"])
def test_pairs_are_right_vs_wrong_in_the_same_wording(negatives):
    pairs = arithmetic_pairs(100, seed=0, cfg=RMConfig(negatives=negatives))
    assert len(pairs) == 100 and len({p["prompt"] for p in pairs}) == 100  # each problem once
    for p in pairs:
        a, b, right, wrong = _numbers(p)
        assert p["prompt"].endswith("\n") and right == a + b and wrong != right and wrong >= 0
        assert re.sub(r"\d+", "N", p["chosen"]) == re.sub(r"\d+", "N", p["rejected"])
        if negatives == "far":
            assert abs(wrong - right) >= max(5, right // 2)
        if negatives == "near":
            assert abs(wrong - right) <= 2


def test_heldout_problems_are_disjoint_from_training():
    train, held = load_pairs(RMConfig(n_train_pairs=100, n_eval_pairs=50))
    assert len(held) == 50
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held}
