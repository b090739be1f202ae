"""The learned reward model: train one with the recipe (offline), then score with `reward_model`.

The session trains one small RM with recipes/configs/train_reward_model_test.yaml (the
default recipe, cut down to fit the test budget) and every test here reuses it.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest

from rewards import GroupInfo, RewardScorer, RewardSpec
from rewards.reward_model import RewardModel

pytestmark = pytest.mark.integration

TEST_CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "train_reward_model_test.yaml"


@pytest.fixture(scope="session")
def trained_rm(tmp_path_factory):
    from recipes.train_reward_model import load_config, main

    out = tmp_path_factory.mktemp("reward_model")
    cfg = load_config([str(TEST_CONFIG), f"output_dir={out}"])
    metrics = main(cfg)
    return out / "final", metrics


def arithmetic(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Prompts as the GRPO trainer passes them (no trailing newline), right and clearly wrong answers
    (off by half or more: what the recipe's default `negatives: far` teaches)."""
    rng = random.Random(seed)
    prompts, right, wrong = [], [], []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        gap = rng.randint((a + b) // 2, a + b)
        prompts.append(f"Calculate {a} + {b}.")
        right.append(str(a + b))
        wrong.append(str(a + b + gap if rng.random() < 0.5 else a + b - gap))
    return prompts, right, wrong


def test_trained_rm_ranks_correct_above_wrong(trained_rm):
    folder, metrics = trained_rm
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert metrics["n_heldout"] >= 200
    assert metrics["heldout_pairwise_accuracy"] >= 0.90, metrics


def test_scores_256_completions_batched(trained_rm):
    folder, _ = trained_rm
    prompts, right, wrong = arithmetic(128, seed=7)
    rm = RewardModel(str(folder), batch_size=64, max_length=32)
    t0 = time.perf_counter()
    scores = rm(prompts * 2, right + wrong)
    took = time.perf_counter() - t0
    assert len(scores) == 256 and all(math.isfinite(s) for s in scores)
    wins = sum(r > w for r, w in zip(scores[:128], scores[128:]))
    assert wins >= 0.8 * 128, f"right answers beat wrong ones in only {wins}/128 prompts"
    one_by_one = RewardModel(str(folder), batch_size=1, max_length=32)(prompts[:8], right[:8])
    assert one_by_one == pytest.approx(scores[:8], abs=1e-4)  # batching/padding does not change scores
    print(f"\nscored 256 completions in {took:.2f} s")


def test_reward_model_in_the_scorer_with_normalisation(trained_rm):
    folder, _ = trained_rm
    prompts, right, wrong = arithmetic(8, seed=3)
    completions = [c for pair in zip(right, wrong) for c in pair]  # groups of 2: right, wrong
    group = GroupInfo([i // 2 for i in range(16)], 2, ["stop"] * 16, [2] * 16)
    spec = RewardSpec("reward_model", kwargs={"model": str(folder), "normalize": True, "max_length": 32})
    with RewardScorer([spec]) as scorer:
        res = scorer([p for p in prompts for _ in range(2)], completions, {}, group)
    s = res.per_function["reward_model"]
    assert sum(s) / 16 == pytest.approx(0.0, abs=1e-6)  # batch z-score
    assert math.sqrt(sum(x * x for x in s) / 16) == pytest.approx(1.0, abs=1e-4)
    assert sum(s[2 * i] > s[2 * i + 1] for i in range(8)) >= 6
    assert res.metrics["reward/reward_model/frac_none"] == 0.0


def test_normalisation_modes(trained_rm):
    folder, _ = trained_rm
    prompts, right, _ = arithmetic(6, seed=1)
    raw = RewardModel(str(folder), max_length=32)(prompts, right)
    sig = RewardModel(str(folder), max_length=32, normalize="sigmoid")(prompts, right)
    assert sig == pytest.approx([1 / (1 + math.exp(-x)) for x in raw])
    running = RewardModel(str(folder), max_length=32, normalize="running")
    first = running(prompts[:3], right[:3])
    second = running(prompts[3:], right[3:])
    mean = sum(raw) / 6
    std = math.sqrt(sum((x - mean) ** 2 for x in raw) / 6)
    assert second == pytest.approx([(x - mean) / std for x in raw[3:]], abs=1e-5)  # stats over all 6 seen
    assert len(first) == 3


def test_any_sequence_classification_checkpoint_with_a_chat_template(tiny_dirs, tmp_path):
    """A decoder checkpoint with its own chat template and a fresh score head (the tiny Llama)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_dirs["llama"], num_labels=1)
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_dirs["llama"]).save_pretrained(tmp_path)
    rm = RewardModel(str(tmp_path), batch_size=3)
    assert rm.use_chat
    prompts = ["hi", "what is 2+2?", "a much longer prompt " * 5, "x", "y"]
    completions = ["hello", "4", "ok", "a longer completion here", ""]
    batched = rm(prompts, completions)
    single = [RewardModel(str(tmp_path), batch_size=1)([p], [c])[0] for p, c in zip(prompts, completions)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(round(x, 5) for x in batched)) > 1  # the head sees the text


def test_bad_options_say_what_to_fix(trained_rm):
    folder, _ = trained_rm
    from rewards import RewardError

    with pytest.raises(RewardError, match="normalize"):
        RewardModel(str(folder), normalize="minmax")
    with pytest.raises(RewardError, match="no chat template"):
        RewardModel(str(folder), template="chat")
