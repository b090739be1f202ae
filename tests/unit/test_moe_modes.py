"""R2 / R3 selection and a two-pass R2 flow on a tiny model."""

from __future__ import annotations

import pytest
import torch

from grpo.errors import ConfigError
from grpo.models.loader import load_causal_lm, resolve_model
from grpo.moe import RoutingReplay, check_replay_mode, diagnostic_pass, moe_routers, replay_routes_for, routing_pass

R_ROLLOUT = torch.zeros(3, 2, 2, dtype=torch.long)
R_OLD = torch.ones(3, 2, 2, dtype=torch.long)


@pytest.mark.parametrize("mode,phase,expected", [
    ("none", "old", None), ("none", "train", None),
    ("r2", "old", None), ("r2", "train", R_OLD),
    ("r3", "old", R_ROLLOUT), ("r3", "train", R_ROLLOUT),
])
def test_selection_table(mode, phase, expected):
    got = replay_routes_for(mode, phase, R_ROLLOUT, R_OLD)
    assert got is expected


def test_selection_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="return_routing"):
        replay_routes_for("r3", "old", None, None)
    with pytest.raises(ConfigError, match="old-logprob pass"):
        replay_routes_for("r2", "train", R_ROLLOUT, None)
    with pytest.raises(ConfigError, match="rollout.return_routing=true"):
        check_replay_mode("r3", is_moe=True, rollout_returns_routing=False)
    with pytest.raises(ConfigError, match="dense"):
        check_replay_mode("r2", is_moe=False, rollout_returns_routing=False)
    with pytest.raises(ConfigError, match="choose one of none, r2, r3"):
        check_replay_mode("r4", is_moe=True, rollout_returns_routing=True)
    check_replay_mode("none", is_moe=False, rollout_returns_routing=False)
    assert diagnostic_pass("r3") == "live" and diagnostic_pass("r2") == "replay_rollout"


def test_r2_training_pass_replays_the_old_policy_routing_after_an_update():
    model = load_causal_lm(resolve_model("tiny-qwen3_moe"))
    rr = RoutingReplay(model)
    ids = torch.randint(5, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), routing_pass(rr, "r2", "old") as old:
        model(ids)
    old_routes = old.routes()
    with torch.no_grad():  # a big update of the routers: pi_theta routes differently than pi_old
        for r in moe_routers(model):
            r.module.weight.add_(torch.randn_like(r.module.weight))
    with routing_pass(rr, "r2", "train", old_routes=old_routes) as cap:
        model(ids).logits.logsumexp(-1).mean().backward()
    assert torch.equal(cap.routes(), old_routes)
    assert not torch.equal(cap.live_routes(), old_routes)  # without R2 the experts would have changed
    assert all(r.module.weight.grad.abs().sum() > 0 for r in moe_routers(model))
    rr.remove()
