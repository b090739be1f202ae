"""The recipe's loop on a tiny model with a model-free engine: the metrics it logs and the files it writes.

- the logged `lr` of step k is the rate the optimiser stepped with in step k (under warm-up and decay;
  it used to be read after scheduler.step(): the next step's rate);
- each metric key has one producer (merge_metrics refuses a key reported twice);
- the resolved config is written into the run folder and reads back to the same RunConfig.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import recipes.train_grpo as tg
from grpo.config_io import load_config
from grpo.metrics import merge_metrics, read_jsonl
from tests.reliability.fakes import FakeEngine


def digit_fraction(prompts: list[str], completions: list[str], **columns) -> list[float]:
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


@pytest.fixture()
def tiny_run(tmp_path, tiny_dirs):
    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a} + {b} = ?", "answer": str(a + b)}) + "\n"
                            for a in range(6) for b in range(4)))

    def make(*overrides: str):
        return load_config(None, [
            f"model.name={tiny_dirs['llama']}", f"data.source={data}", "data.eval_size=4", "rollout.engine=hf",
            "rollout.group_size=4", "rollout.max_tokens=8", "rollout.max_model_len=96", "train.prompts_per_step=2",
            "train.plots=false", "train.tensorboard=false", f"train.output_dir={tmp_path / 'out'}",
            "train.run_name=run", f"rewards.functions=[{{name: '{__name__}:digit_fraction'}}]", *overrides])
    return make


def _record_lr_used(monkeypatch) -> list[list[float]]:
    """The optimiser's lr at each of its step() calls, grouped per trainer step."""
    used: list[list[float]] = []
    real_build, real_step = tg.build_policy, tg.train_step

    def build(cfg):
        policy = real_build(cfg)
        policy.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used[-1].append(opt.param_groups[0]["lr"]))
        return policy

    def train_step(run, n):
        used.append([])
        return real_step(run, n)
    monkeypatch.setattr(tg, "build_policy", build)
    monkeypatch.setattr(tg, "train_step", train_step)
    return used


@pytest.mark.parametrize("schedule", ["optim.warmup_steps=4", "optim.schedule=cosine"])
def test_logged_lr_is_the_rate_of_this_steps_update(tiny_run, monkeypatch, schedule):
    used = _record_lr_used(monkeypatch)
    cfg = tiny_run("train.steps=4", "optim.lr=1e-3", "algo.num_iterations=2", schedule)
    tg.main(cfg, engine=FakeEngine(cfg.model.name))
    steps = [r for r in read_jsonl(Path(cfg.train.output_dir) / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(len(u) == 2 and u[0] == u[1] for u in used)  # mu = 2 optimiser steps, one scheduler step
    rates = [u[0] for u in used]
    assert len(set(rates)) == 4, f"the schedule must move the rate every step: {rates}"
    assert [r["lr"] for r in steps] == pytest.approx(rates, rel=1e-12)


def test_run_folder_holds_the_resolved_config_and_one_producer_per_metric(tiny_run):
    cfg = tiny_run("train.steps=2", "algo.kl_ratio=true", "algo.beta=0.01")
    summary = tg.main(cfg, engine=FakeEngine(cfg.model.name))
    run_dir = Path(summary["run_dir"])
    assert load_config(run_dir / "config.yaml") == cfg
    records = read_jsonl(run_dir / "metrics.jsonl")
    step = next(r for r in records if r["step"] == 1)
    for key in ("reward/mean", "reward/std", "lr", "time/train", "time/train_grad", "time/generate",
                "reward/frac_zero_var_groups", "advantage/abs_mean", "kl", "memory/rss_gib"):
        assert key in step, key
    assert not {"time_train", "time_old", "time_ref", "time"} & set(step)  # one name per quantity


def test_merge_metrics_refuses_a_key_from_two_producers():
    assert merge_metrics({"a": 1.0}, {}, {"b/c": 2.0}) == {"a": 1.0, "b/c": 2.0}
    with pytest.raises(ValueError, match=r"metric\(s\) \['lr'\] reported by two producers"):
        merge_metrics({"lr": 1e-3, "loss": 0.1}, {"reward/mean": 0.5}, {"lr": 2e-3})
