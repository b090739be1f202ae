"""End to end: a short GRPO run with real vLLM rollouts and a weight sync every
step must actually raise the reward (tiny MoE, routing replay on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpo.config_io import load_config
from grpo.metrics import read_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
TOY = Path(__file__).parent / "toy_rewards.py"


def _run(tmp_path, engine_kind: str, model: str, extra: list[str], engine=None) -> list[dict]:
    from recipes.train_grpo import main

    cfg = load_config(None, [
        f"model.name={model}", "data.source=reasoning_gym:basic_arithmetic", "data.train_size=200",
        "data.eval_size=16", f"rollout.engine={engine_kind}", "rollout.group_size=8", "rollout.max_tokens=8",
        "rollout.max_model_len=128", f"rewards.functions=[{{name: '{TOY}:digit_fraction'}}]",
        "optim.lr=1e-3", "train.steps=25", "train.prompts_per_step=4", f"train.output_dir={tmp_path}",
        "train.run_name=learn", "train.plots=false", "train.tensorboard=false", *extra,
    ])
    main(cfg, engine=engine)
    return [r for r in read_jsonl(tmp_path / "learn" / "metrics.jsonl") if "reward/mean" in r]


def test_grpo_with_vllm_rollouts_raises_reward(tmp_path, tiny_dirs, vllm_engine, restore_weights):
    engine = vllm_engine(tiny_dirs["mixtral"])
    with restore_weights(engine):
        steps = _run(tmp_path, "vllm", str(tiny_dirs["mixtral"]), ["moe.routing_replay=r3"], engine=engine)
    rewards = [r["reward/mean"] for r in steps]
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print("reward per step:", [round(x, 3) for x in rewards])
    assert start < 0.4, f"the task should start hard, got {start:.3f}"
    assert end >= 2 * start and end >= 0.8, f"reward went {start:.3f} -> {end:.3f}"
    # The weights reached the engine every step: its sampling logprobs match the trainer's.
    assert max(r["rollout_logp_absdiff_max"] for r in steps) < 1e-3
    assert all(r["time/sync"] > 0 for r in steps)
    assert any(k.startswith("moe/load/") for k in steps[-1]) and "moe/router_agreement" in steps[-1]
