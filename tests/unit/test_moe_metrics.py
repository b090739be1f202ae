"""MoE step metrics, the KL guard and the expert-load plot (pure tensors, no model)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from grpo.errors import ConfigError, GrpoError
from grpo.moe import KLGuard, moe_step_metrics, plot_expert_load, rollout_kl, router_agreement
from grpo.moe.plots import load_matrix


def test_load_imbalance_and_entropy_on_known_routes():
    # layer 0: perfectly balanced over 4 experts; layer 1: everything on experts 0 and 1
    l0 = torch.tensor([[0, 1], [2, 3], [0, 2], [1, 3]])
    l1 = torch.tensor([[0, 1]] * 4)
    m = moe_step_metrics(num_experts=4, used_routes=torch.stack([l0, l1], dim=1))  # [4, 2, 2]
    assert [m[f"moe/load/layer0/expert{e}"] for e in range(4)] == [0.25] * 4
    assert [m[f"moe/load/layer1/expert{e}"] for e in range(4)] == [0.5, 0.5, 0.0, 0.0]
    assert m["moe/imbalance_max_over_mean"] == pytest.approx((1.0 + 2.0) / 2)
    assert m["moe/imbalance_max_layer"] == pytest.approx(2.0)
    assert m["moe/load_entropy"] == pytest.approx((1.0 + math.log(2) / math.log(4)) / 2)
    assert m["moe/dead_experts"] == 2.0
    masked = moe_step_metrics(4, used_routes=torch.stack([l0, l1], 1), token_mask=torch.tensor([1, 0, 0, 0]))
    assert masked["moe/load/layer0/expert2"] == 0.0


def test_router_agreement_ignores_order_and_skips_unrecorded_rows():
    rollout = torch.tensor([[[0, 1], [2, 3]], [[0, 1], [-1, -1]], [[1, 2], [0, 3]]])  # [3 tokens, 2 layers, 2]
    trainer = torch.tensor([[[1, 0], [2, 3]], [[0, 2], [1, 2]], [[1, 2], [0, 3]]])
    a = router_agreement(rollout, trainer)
    # rows: (t0,l0) 1.0, (t0,l1) 1.0, (t1,l0) 0.5, (t1,l1) skipped, (t2,*) 1.0, 1.0
    assert a["moe/router_agreement"] == pytest.approx(4.5 / 5)
    assert a["moe/router_set_match"] == pytest.approx(4 / 5)
    assert a["moe/tokens_route_differs"] == pytest.approx(1 / 3)


def test_rollout_kl_is_k3_and_zero_when_equal():
    mu = torch.log(torch.tensor([0.5, 0.25, 0.9]))
    pi = torch.log(torch.tensor([0.4, 0.25, 0.9]))
    kl, absdiff = rollout_kl(pi, mu)
    r = 0.4 / 0.5
    assert kl == pytest.approx((r - 1 - math.log(r)) / 3, rel=1e-5)
    assert absdiff == pytest.approx(abs(math.log(r)) / 3, rel=1e-5)
    assert rollout_kl(mu, mu) == (0.0, 0.0)
    m = moe_step_metrics(4, logp_rollout=mu, logp_replay=mu, logp_live=pi, logp_mask=torch.tensor([1, 1, 0]))
    assert m["moe/kl_rollout_replay"] == 0.0 and m["moe/kl_rollout_live"] == pytest.approx(
        (r - 1 - math.log(r)) / 2, rel=1e-5)


def test_kl_guard_warns_with_numbers_and_stops_when_asked(caplog):
    guard = KLGuard(threshold=0.01, action="warn")
    assert guard.check(0.005, step=3) is False
    with caplog.at_level(logging.WARNING, logger="grpo.moe"):
        assert guard.check(0.05, step=4, name="moe/kl_rollout_live") is True
    msg = caplog.records[-1].getMessage()
    assert "step 4" in msg and "0.05 > threshold 0.01" in msg and "routing_replay=r3" in msg
    assert guard.check(float("nan"), step=5) is True
    with pytest.raises(GrpoError, match="Stopping"):
        KLGuard(0.01, "stop").check(0.02, step=1)
    assert KLGuard(None).check(1e9, step=1) is False
    with pytest.raises(ConfigError):
        KLGuard(0.01, "explode")  # type: ignore[arg-type]
    cfg = type("MoECfg", (), {"kl_guard_threshold": 0.2, "kl_guard_action": "stop"})()
    assert KLGuard.from_config(cfg).action == "stop"


def test_plot_expert_load_writes_a_png_from_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for step in range(5):
            rec = {"step": step, "loss": 0.1}
            for layer in range(2):
                for e in range(4):
                    rec[f"moe/load/layer{layer}/expert{e}"] = (0.4 if e == step % 4 else 0.2)
            f.write(json.dumps(rec) + "\n")
        f.write(json.dumps({"step": 5, "loss": 0.1}) + "\n")  # a record without load keys is skipped
    steps, mats = load_matrix(path)
    assert list(steps) == [0, 1, 2, 3, 4] and mats[1].shape == (4, 5) and mats[0][2, 2] == 0.4
    out = plot_expert_load(path, tmp_path / "plots" / "load.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
