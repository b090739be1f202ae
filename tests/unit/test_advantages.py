import math

import pytest
import torch

from grpo.advantages import compute_advantages, zero_variance_groups
from rewards.health import ZERO_VARIANCE_TOL, frac_zero_variance_groups

# two groups of 3: [1, 0, 0] and [1, 1, 1] (zero variance)
R = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
G = ["a", "a", "a", "b", "b", "b"]


def test_group_normalised_by_hand():
    # group a: mean 1/3, unbiased std = sqrt(((2/3)^2 + 2*(1/3)^2) / 2) = sqrt(1/3)
    std = math.sqrt(1 / 3)
    adv = compute_advantages(R, G, "group")
    exp = [(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), 0, 0, 0]
    torch.testing.assert_close(adv, torch.tensor(exp), atol=1e-6, rtol=0)


def test_batch_none_rloo_by_hand():
    # batch std of R (unbiased): mean 2/3, var = (2*(1/3)^2 + 4*(1/3)^2... computed below
    r = torch.tensor(R, dtype=torch.float64)
    bstd = float(r.std())
    adv = compute_advantages(R, G, "batch")
    torch.testing.assert_close(adv[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (bstd + 1e-4))
    torch.testing.assert_close(compute_advantages(R, G, "none"), torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0]))
    # RLOO: 1 - mean(0, 0) = 1;  0 - mean(1, 0) = -0.5
    torch.testing.assert_close(compute_advantages(R, G, "rloo"), torch.tensor([1.0, -0.5, -0.5, 0, 0, 0]))


def test_int_group_size_means_contiguous_groups():
    torch.testing.assert_close(compute_advantages(R, 3, "group"), compute_advantages(R, G, "group"))
    assert zero_variance_groups(R, 3).tolist() == [False] * 3 + [True] * 3
    with pytest.raises(ValueError, match="groups of 4"):
        compute_advantages(R, 4)


def test_rloo_is_scaled_dr_grpo_and_nan_rewards_get_zero():
    r = torch.tensor([0.3, 0.9, 0.1, 0.5])
    g = [0, 0, 0, 0]
    torch.testing.assert_close(compute_advantages(r, g, "rloo"), compute_advantages(r, g, "none") * 4 / 3)
    adv = compute_advantages([1.0, float("nan"), 0.0], [0, 0, 0], "none")
    torch.testing.assert_close(adv, torch.tensor([0.5, 0.0, -0.5]))  # NaN left out of the mean


def test_zero_variance_groups_one_definition():
    assert zero_variance_groups(R, G).tolist() == [False] * 3 + [True] * 3
    assert frac_zero_variance_groups(R, G) == 0.5  # the health metric reads the same definition
    # NaN (unscorable) rewards are left out, as the advantages leave them out: one scorable reward
    # or equal scorable rewards is a zero-variance group (its advantages are all 0).
    nan = float("nan")
    assert zero_variance_groups([1.0, nan, 1.0, nan, nan, 0.0], 3).tolist() == [True] * 6
    assert compute_advantages([1.0, nan, 1.0], 3, "group").abs().max() == 0
    # One tolerance: rounding noise is no signal, a real difference is.
    assert zero_variance_groups([0.3, 0.3 + ZERO_VARIANCE_TOL / 2], 2).all()
    assert not zero_variance_groups([0.3, 0.3 + 10 * ZERO_VARIANCE_TOL], 2).any()
