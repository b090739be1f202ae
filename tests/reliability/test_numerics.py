"""The numerics guard in a run: a NaN loss or an Inf gradient skips the update (weights and
optimizer untouched), is logged and counted (metrics["nonfinite"]); N in a row stop the run
with a message saying what to do; a checkpoint is never written with NaN weights.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors.torch import load_file

import recipes.train_grpo as tg
from grpo.checkpoint import latest_checkpoint, list_checkpoints
from grpo.errors import CheckpointError, GrpoError
from tests.reliability.conftest import step_records
from tests.reliability.fakes import FakeEngine

pytestmark = pytest.mark.integration
RUN = ["train.steps=4", "train.save_every=1", "train.keep_checkpoints=5", "optim.max_nonfinite_steps=3"]


def _nan_advantages_at(monkeypatch, steps: set[int]):
    """Advantages become NaN in the given steps (so does the loss); other steps are untouched."""
    real, calls = tg.compute_advantages, {"n": 0}

    def compute(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return torch.full_like(out, math.nan) if calls["n"] in steps else out
    monkeypatch.setattr(tg, "compute_advantages", compute)  # where the recipe looks it up


def _inf_gradient_at(monkeypatch, steps: set[int]):
    """The first parameter's gradient becomes Inf in the given steps (the loss stays finite)."""
    real_build, real_step = tg.build_policy, tg.train_step
    current = {"step": 0}

    def build(cfg):
        policy = real_build(cfg)
        p = next(policy.model.parameters())
        p.register_hook(lambda g: g * math.inf if current["step"] in steps else g)
        return policy

    def step(state, n):
        current["step"] = n
        return real_step(state, n)
    monkeypatch.setattr(tg, "build_policy", build)
    monkeypatch.setattr(tg, "train_step", step)


def _weights(run_dir, step):
    return load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors")


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("inject", ["nan_loss", "inf_gradient"])
def test_transient_nonfinite_update_is_skipped_and_the_run_goes_on(inject, tmp_path, tiny_cfg, tiny_dirs,
                                                                 monkeypatch, caplog):
    from recipes.train_grpo import main

    caplog.set_level(logging.WARNING, logger="grpo")
    (_nan_advantages_at if inject == "nan_loss" else _inf_gradient_at)(monkeypatch, {2, 3})
    main(tiny_cfg(tmp_path, RUN), engine=FakeEngine(tiny_dirs["llama"]))
    run = tmp_path / "run"
    steps = step_records(run)
    assert [r["nonfinite"] for r in steps] == [0, 1, 1, 0]
    assert [r["step"] for r in steps] == [1, 2, 3, 4], "two in a row (< 3) must not stop the run"
    w = {s: _weights(run, s) for s in (1, 2, 3, 4)}
    assert _same(w[1], w[2]) and _same(w[2], w[3]), "a skipped update must not move the weights"
    assert not _same(w[3], w[4]), "updates resume after the bad steps"
    assert all(torch.isfinite(t).all() for ws in w.values() for t in ws.values())
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert warnings == ["non-finite loss/gradient: update skipped (1 in a row)",
                        "non-finite loss/gradient: update skipped (2 in a row)"]


def test_n_nonfinite_in_a_row_stop_the_run_clearly(tmp_path, tiny_cfg, tiny_dirs, monkeypatch):
    from recipes.train_grpo import main

    _nan_advantages_at(monkeypatch, {2, 3, 4})
    with pytest.raises(GrpoError, match=r"3 consecutive non-finite updates: stopping\. Lower optim\.lr"):
        main(tiny_cfg(tmp_path, RUN), engine=FakeEngine(tiny_dirs["llama"]))
    run = tmp_path / "run"
    assert [r["step"] for r in step_records(run)] == [1, 2, 3]  # step 4 raised before logging
    assert latest_checkpoint(run).name == "step-000003"
    assert _same(_weights(run, 1), _weights(run, 3))
    assert all(torch.isfinite(t).all() for c in list_checkpoints(run) for t in load_file(
        c / "model.safetensors").values())


def test_nan_weights_are_never_checkpointed(tmp_path, tiny_cfg, tiny_dirs, monkeypatch):
    """Weights corrupted to NaN (here: by hand after step 2's update): the step-2 checkpoint is
    refused, the run stops, and the newest checkpoint on disk is the last finite one."""
    real = tg.train_step

    def step(state, n):
        out = real(state, n)
        if n == 2:
            with torch.no_grad():
                next(state.policy.model.parameters())[0, 0] = math.nan
        return out
    monkeypatch.setattr(tg, "train_step", step)
    with pytest.raises(CheckpointError, match="refusing to write checkpoint at step 2: the model has NaN/Inf"):
        tg.main(tiny_cfg(tmp_path, RUN), engine=FakeEngine(tiny_dirs["llama"]))
    run = tmp_path / "run"
    assert [c.name for c in list_checkpoints(run)] == ["step-000001"]
    assert all(torch.isfinite(t).all() for t in _weights(run, 1).values())
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
