"""Reward functions that raise, return NaN/Inf or hang on 1 sample in 100, inside a training run.

on_fault=count: the run finishes, each fault is counted in reward/<fn>/frac_error (and scored 0,
never NaN into the loss). on_fault=error: the run stops at the first fault with a message naming
the function. A hanging *user* reward is bounded when it has timeout_s; without, it blocks (documented).
"""

from __future__ import annotations

import math
import threading
import time

import pytest

from rewards import RewardScorer, RewardSpec
from rewards.errors import RewardFunctionError
from tests.reliability import faulty_rewards
from tests.reliability.conftest import REWARDS, reward_label, step_records
from tests.reliability.fakes import FakeEngine

pytestmark = pytest.mark.integration
B, G, STEPS = 25, 4, 3  # 100 completions per step: exactly one POISON sample each step
BIG = [f"train.prompts_per_step={B}", f"rollout.group_size={G}", f"train.steps={STEPS}"]


@pytest.mark.parametrize("reward", ["raises_on_poison", "nan_on_poison", "inf_on_poison"])
def test_count_mode_survives_and_counts_one_fault_in_100(reward, tmp_path, tiny_cfg, tiny_dirs):
    from recipes.train_grpo import main

    engine = FakeEngine(tiny_dirs["llama"], poison_every=100)
    summary = main(tiny_cfg(tmp_path, ["rewards.on_fault=count", *BIG], reward=reward), engine=engine)
    steps = step_records(summary["run_dir"])
    label = reward_label(reward)
    assert [r["step"] for r in steps] == [1, 2, 3], "the run must go on past the faults"
    assert engine.poisoned == STEPS  # eval completions come before index 41: one poison per step
    for r in steps:
        assert r[f"reward/{label}/frac_error"] == pytest.approx(1 / (B * G)), r
        assert math.isfinite(r["reward/mean"]) and math.isfinite(r["loss"])
        assert r["nonfinite"] == 0, "a faulty sample must not reach the loss as NaN"
    assert summary["checkpoint"]


@pytest.mark.parametrize("reward,why", [("raises_on_poison", "raised ValueError: cannot score a poisoned"),
                                        ("nan_on_poison", "returned nan"), ("inf_on_poison", "returned inf")])
def test_error_mode_stops_naming_the_function(reward, why, tmp_path, tiny_cfg, tiny_dirs):
    from recipes.train_grpo import main

    engine = FakeEngine(tiny_dirs["llama"], poison_every=100)
    with pytest.raises(RewardFunctionError) as info:
        main(tiny_cfg(tmp_path, ["rewards.on_fault=error", *BIG], reward=reward), engine=engine)
    msg = str(info.value)
    assert reward_label(reward) in msg and why in msg and "on_fault='count'" in msg, msg
    assert info.value.function == reward_label(reward)
    assert step_records(tmp_path / "run") == []  # stopped in step 1, before anything was logged


def test_error_mode_via_cli_is_one_line(tmp_path, tiny_cfg, tiny_dirs, monkeypatch, capsys):
    """What a user sees from `grpo train`: one line naming the function, exit code 2, no traceback."""
    import rollouts
    from grpo import cli

    monkeypatch.setattr(rollouts, "make_engine", lambda *a, **k: FakeEngine(tiny_dirs["llama"], poison_every=100))
    cfg = tiny_cfg(tmp_path, [], reward="nan_on_poison")
    args = [f"model.name={cfg.model.name}", f"data.source={cfg.data.source}", "data.eval_size=4",
            "rollout.engine=hf", "rollout.max_tokens=8", "rollout.max_model_len=96", "train.steps=1",
            "train.plots=false", "train.tensorboard=false", f"train.output_dir={tmp_path}",
            f"rewards.functions=[{{name: '{REWARDS}:nan_on_poison'}}]", "rewards.on_fault=error", *BIG[:2]]
    code = cli.main(["train", *args])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: reward function") and "nan_on_poison" in err


def _scorer_with_timeout(fn_name: str, timeout: float, timeout_s: float | None = None):
    """Run the scorer on a batch with one POISON sample in a thread; (finished, result)."""
    scorer = RewardScorer([RewardSpec(f"{REWARDS}:{fn_name}", timeout_s=timeout_s, fault_score=-1.0)],
                          on_fault="count")
    box: dict = {}
    completions = ["12"] * 99 + ["POISON"]
    t = threading.Thread(target=lambda: box.setdefault("res", scorer([""] * 100, completions)), daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("res")


@pytest.fixture()
def release_hang():
    faulty_rewards.RELEASE.clear()
    yield
    faulty_rewards.RELEASE.set()  # let the blocked reward thread finish


def test_hanging_user_reward_with_timeout_s_is_bounded(release_hang):
    """timeout_s (rewards.functions[i].timeout_s in a config) runs the function in worker processes:
    the hung sample comes back as "timeout" with fault_score, the other 99 are scored."""
    finished, res = _scorer_with_timeout("hangs_on_poison", timeout=60.0, timeout_s=3.0)
    assert finished, "the scorer is still blocked by the hanging function"
    label = REWARDS.as_posix() + ":hangs_on_poison"
    assert res.status[label][-1] == "timeout" and res.per_function[label][-1] == -1.0
    assert set(res.status[label][:-1]) == {"ok"}


def test_hanging_user_reward_without_timeout_s_blocks(release_hang):
    """Without timeout_s the function runs in-process (fastest, any object can be passed) and a hang
    blocks the scorer: the documented trade-off (README, SECURITY.md)."""
    finished, _ = _scorer_with_timeout("hangs_on_poison", timeout=1.0)
    assert not finished


def test_timeout_pool_bounds_a_hanging_function():
    """The building block that does exist (math_accuracy uses it): a per-item hard timeout
    in worker processes; a hung item comes back as "timeout", the others are scored."""
    from rewards.timeout_pool import TimeoutPool

    with TimeoutPool("tests.reliability.hang_target:hang_item", num_workers=1, timeout_s=0.5, grace_s=0.5) as pool:
        t0 = time.monotonic()
        out = pool.map(["ab", "hang", "abc"])
        took = time.monotonic() - t0
    assert out == [("ok", 2), ("timeout", None), ("ok", 3)]
    assert took < 10
