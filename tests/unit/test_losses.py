"""Every loss variant pinned on hand-made tensors, with the arithmetic written out."""

import math

import pytest
import torch

from grpo.config import AlgoConfig
from grpo.losses import (
    LOSSES,
    LossInputs,
    LossNorm,
    dapo_loss,
    dr_grpo_loss,
    grpo_loss,
    gspo_loss,
    k3_kl,
    rollout_is_weights,
)

e = math.exp
# Two completions, T = 3; the second has 2 tokens.
LOGP = [[-1.0, -2.0, -0.5], [-1.5, -0.2, 0.0]]
OLD = [[-1.22, -1.8, -0.5], [-1.0, -0.3, 0.0]]
ADV = [1.0, -2.0]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
# token log-ratios: seq0 (0.22, -0.2, 0), seq1 (-0.5, 0.1)
r00, r01, r02, r10, r11 = e(0.22), e(-0.2), 1.0, e(-0.5), e(0.1)  # 1.2461, 0.8187, 1, 0.6065, 1.1052


def run(fn, **kw):
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    old = torch.tensor(OLD, dtype=torch.float64)
    x = LossInputs(logp, old, torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK, dtype=torch.float64), **kw)
    loss, metrics = fn(x)
    loss.backward()
    return loss.item(), logp.grad, metrics


def close(grad, expected):
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=0)


def test_grpo_by_hand():
    loss, grad, m = run(grpo_loss, eps_low=0.2, eps_high=0.2)
    # seq0, A=+1: r00 = 1.246 > 1.2 is clipped high -> -1.2 (no grad); r01, r02 inside -> -r
    # seq1, A=-2: r10 = 0.607 < 0.8 is clipped low -> 2 * 0.8 (no grad); r11 inside -> 2 * r11
    seq0 = -(1.2 + r01 + r02) / 3
    seq1 = (1.6 + 2 * r11) / 2
    assert loss == pytest.approx((seq0 + seq1) / 2, abs=1e-12)
    assert loss == pytest.approx(0.4494637, abs=1e-6)  # (-3.0187308/3 + 3.8103418/2) / 2
    # d/dlogp of unclipped -A r = -A r; weight 1/|o_i| / N
    close(grad, [[0.0, -r01 / 6, -r02 / 6], [0.0, 2 * r11 / 4, 0.0]])
    assert m["clip_high_frac"] == pytest.approx(1 / 5) and m["clip_low_frac"] == pytest.approx(1 / 5)
    assert m["ratio_max"] == pytest.approx(r00) and m["tokens"] == 5


def test_dapo_by_hand():
    loss, grad, m = run(dapo_loss, eps_low=0.2, eps_high=0.28)
    # clip-higher: r00 = 1.246 < 1.28 is NOT clipped now; token sum / 5 tokens
    total = -(r00 + r01 + r02) + (1.6 + 2 * r11)
    assert loss == pytest.approx(total / 5, abs=1e-12)
    assert loss == pytest.approx(0.1491069, abs=1e-6)  # (-3.0648075 + 3.8103418) / 5
    close(grad, [[-r00 / 5, -r01 / 5, -r02 / 5], [0.0, 2 * r11 / 5, 0.0]])
    assert m["clip_high_frac"] == 0.0


def test_dr_grpo_by_hand():
    loss, grad, _ = run(dr_grpo_loss, eps_low=0.2, eps_high=0.2, norm=LossNorm(2, 5, max_tokens=4))
    # token sum / (N * max_tokens) = / 8
    total = -(1.2 + r01 + r02) + (1.6 + 2 * r11)
    assert loss == pytest.approx(total / 8, abs=1e-12)
    close(grad, [[0.0, -r01 / 8, -r02 / 8], [0.0, 2 * r11 / 8, 0.0]])


def test_gspo_by_hand():
    # s0 = exp(mean(0.22, -0.2, 0)) = exp(0.02/3); s1 = exp(mean(-0.5, 0.1)) = exp(-0.2)
    s0, s1 = e(0.02 / 3), e(-0.2)
    loss, grad, _ = run(gspo_loss, eps_low=0.2, eps_high=0.2)  # wide range: nothing clipped
    assert loss == pytest.approx((-s0 + 2 * s1) / 2, abs=1e-12)
    assert loss == pytest.approx(0.3153863, abs=1e-6)  # (-1.0066889 + 1.6374615) / 2
    # d s_i / d logp_it = s_i / |o_i|
    close(grad, [[-s0 / 6] * 3, [2 * s1 / 4] * 2 + [0.0]])
    # paper range (3e-4, 4e-4): s0 > 1.0004 with A>0 and s1 < 0.9997 with A<0: both clipped, no gradient
    loss, grad, m = run(gspo_loss, eps_low=3e-4, eps_high=4e-4)
    assert loss == pytest.approx((-1.0004 + 2 * 0.9997) / 2, abs=1e-12)
    close(grad, [[0.0] * 3, [0.0] * 3])
    assert m["clip_high_frac"] == pytest.approx(3 / 5) and m["clip_low_frac"] == pytest.approx(2 / 5)


def test_dual_clip_caps_negative_advantage_loss():
    logp = torch.tensor([[math.log(4.0)]], requires_grad=True)  # ratio 4 against old logp 0
    args = (logp, torch.zeros(1, 1), torch.tensor([-2.0]), torch.ones(1, 1))
    plain, _ = grpo_loss(LossInputs(*args))
    capped, m = grpo_loss(LossInputs(*args, dual_clip=3.0))
    assert plain.item() == pytest.approx(8.0) and capped.item() == pytest.approx(6.0)  # |A| * min(r, c)
    capped.backward()
    assert logp.grad.abs().item() == 0.0 and m["dual_clip_frac"] == 1.0


def test_kl_and_is_weights_enter_per_token():
    ref = [[-1.1, -2.0, -0.4], [-1.4, -0.5, 0.0]]
    w = [[2.0, 1.0, 0.5], [1.0, 0.5, 0.0]]
    beta = 0.1
    loss, grad, m = run(
        dapo_loss, eps_low=0.2, eps_high=0.28, beta=beta, ref_logp=torch.tensor(ref, dtype=torch.float64),
        is_weights=torch.tensor(w, dtype=torch.float64),
    )
    d = [[ref[i][t] - LOGP[i][t] for t in range(3)] for i in range(2)]
    k3 = [[e(x) - x - 1 for x in row] for row in d]
    pg = [[-r00, -r01, -r02], [1.6, 2 * r11, 0.0]]
    toks = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert loss == pytest.approx(sum(w[i][t] * pg[i][t] + beta * k3[i][t] for i, t in toks) / 5, abs=1e-12)
    # d k3 / d logp = 1 - exp(d)
    dpg = [[-r00, -r01, -r02], [0.0, 2 * r11, 0.0]]
    exp = [[0.0] * 3, [0.0] * 3]
    for i, t in toks:
        exp[i][t] = (w[i][t] * dpg[i][t] + beta * (1 - e(d[i][t]))) / 5
    close(grad, exp)
    assert m["kl"] == pytest.approx(sum(k3[i][t] for i, t in toks) / 5)
    # kl_ratio (DeepSeek-V3.2 / TRL use_bias_correction_kl): the k3 term is multiplied by the token ratio
    ratio = [[r00, r01, r02], [r10, r11, 1.0]]
    loss_r, _, _ = run(
        dapo_loss, eps_low=0.2, eps_high=0.28, beta=beta, ref_logp=torch.tensor(ref, dtype=torch.float64),
        is_weights=torch.tensor(w, dtype=torch.float64), kl_ratio=True,
    )
    assert loss_r - loss == pytest.approx(sum(beta * k3[i][t] * (ratio[i][t] - 1) for i, t in toks) / 5, abs=1e-12)
    assert float(k3_kl(torch.tensor(0.3), torch.tensor(0.3))) == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_split_batch_with_whole_batch_norm_equals_full_batch(name):
    torch.manual_seed(0)
    N, T = 6, 5
    logp = (torch.randn(N, T, dtype=torch.float64) * 0.1 - 1).requires_grad_()
    old = logp.detach() + torch.randn(N, T, dtype=torch.float64) * 0.05
    adv = torch.randn(N, dtype=torch.float64)
    mask = (torch.arange(T)[None] < torch.tensor([5, 3, 1, 4, 2, 5])[:, None]).double()
    kw = dict(eps_low=0.1, eps_high=0.1) if name != "gspo" else dict(eps_low=0.02, eps_high=0.02)
    full, _ = LOSSES[name](LossInputs(logp, old, adv, mask, norm=LossNorm.from_mask(mask, 8), **kw))
    (g_full,) = torch.autograd.grad(full, logp)
    norm = LossNorm.from_mask(mask, 8)
    parts = [LOSSES[name](LossInputs(logp[s], old[s], adv[s], mask[s], norm=norm, **kw))[0]
             for s in (slice(0, 2), slice(2, 6))]
    (g_parts,) = torch.autograd.grad(sum(parts), logp)
    assert sum(parts).item() == pytest.approx(full.item(), abs=1e-12)
    torch.testing.assert_close(g_parts, g_full, atol=1e-12, rtol=0)


def test_each_variant_takes_its_clip_range_and_the_kl_settings_from_the_config():
    algo = AlgoConfig(epsilon_low=0.1, epsilon_high=0.3, gspo_epsilon_low=1e-3, gspo_epsilon_high=2e-3,
                      dual_clip=3.0, beta=0.04, kl_ratio=True)
    t = torch.zeros(1, 2)
    for name, want in [("grpo", (0.1, 0.3)), ("dapo", (0.1, 0.3)), ("dr_grpo", (0.1, 0.3)), ("gspo", (1e-3, 2e-3))]:
        algo.loss = name
        x = LossInputs.from_algo(algo, t, t, torch.zeros(1), torch.ones(1, 2, dtype=torch.int64))
        assert (x.eps_low, x.eps_high) == want, name
        assert (x.dual_clip, x.beta, x.kl_ratio) == (3.0, 0.04, True)
        assert x.mask.dtype == t.dtype and x.norm == LossNorm(1.0, 2.0, 2.0)  # default: this batch alone


def test_rollout_is_weights_modes():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    samp = torch.tensor([[-1.0, 0.5, float("nan")]])  # diffs: +1, -0.5, NaN -> 0 (no record)
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    w, m = rollout_is_weights(old, samp, mask, "token_truncate", cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, e(-0.5), 1.0]]))  # e^1 = 2.718 truncated to 2
    assert m["is_clipped_frac"] == pytest.approx(1 / 3)
    assert m["rollout_logp_absdiff"] == pytest.approx(1.5 / 3)
    assert m["rollout_kl_k3"] == pytest.approx(((e(1) - 2) + (e(-0.5) - 0.5)) / 3, rel=1e-6)
    w, _ = rollout_is_weights(old, samp, mask, "token_mask", cap=2.0, min_value=0.7)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 1.0]]))  # 2.718 > 2 and 0.607 < 0.7 masked
    w, _ = rollout_is_weights(old, samp, mask, "sequence_truncate", cap=2.0)
    torch.testing.assert_close(w, torch.full((1, 3), e(0.5)))  # exp(1 - 0.5) = 1.65 < 2
    w, _ = rollout_is_weights(old, samp, mask, "sequence_mask", cap=1.5)
    torch.testing.assert_close(w, torch.zeros(1, 3))
    assert rollout_is_weights(old, samp, mask, "none")[0] is None
