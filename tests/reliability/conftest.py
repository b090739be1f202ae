"""Shared pieces of the reliability tier: a small arithmetic data file and tiny run configs.

Run the whole tier (hostile-code tests skip unless an outer pids guard is in place, SECURITY.md):

    make test-reliability     # = tests/guarded.sh .venv/bin/python -m pytest -q tests/reliability

    cfg = tiny_cfg(tmp_path, ["rewards.on_fault=count"], model="llama")
    summary = main(cfg, engine=FakeEngine(tiny_dirs["llama"], poison_every=100))
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo.config_io import load_config
from grpo.metrics import read_jsonl

HERE = Path(__file__).parent
REWARDS = HERE / "faulty_rewards.py"


@pytest.fixture(scope="session")
def arith_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("data") / "arith.jsonl"
    rows = [{"question": f"{a} + {b} = ?", "answer": str(a + b)} for a in range(15) for b in range(10)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


@pytest.fixture(scope="session")
def tiny_cfg(tiny_dirs, arith_file):
    """tiny_cfg(out_dir, overrides, model="llama", reward="digits") -> RunConfig of a tiny, fast run."""

    def make(out_dir: Path, overrides: list[str] = (), model: str = "llama", reward: str = "digits"):
        return load_config(None, [
            f"model.name={tiny_dirs[model]}", f"data.source={arith_file}", "data.eval_size=4",
            "rollout.engine=hf", "rollout.group_size=4", "rollout.max_tokens=8", "rollout.max_model_len=96",
            "train.prompts_per_step=4", "train.steps=2", "train.plots=false", "train.tensorboard=false",
            f"train.output_dir={out_dir}", "train.run_name=run", "optim.lr=1e-3",
            f"rewards.functions=[{{name: '{REWARDS}:{reward}'}}]", *overrides,
        ])

    return make


def step_records(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "reward/mean" in r]


def reward_label(reward: str) -> str:
    return f"{REWARDS}:{reward}"
