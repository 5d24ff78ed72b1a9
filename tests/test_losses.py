"""fer_models.losses against torch references and values worked out by hand below."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fer_models import losses as L


def _assert_zero_with_finite_grad(loss: torch.Tensor, leaf: torch.Tensor) -> None:
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    assert torch.count_nonzero(leaf.grad) == 0


# --- masked cross-entropy ---------------------------------------------------------------------

def test_masked_ce_equals_torch_ce_on_labelled_subset():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 8, generator=g)
    target = torch.tensor([1, -100, 7, 0, -100, 3])
    keep = target != -100
    expected = F.cross_entropy(logits[keep], target[keep])
    assert torch.allclose(L.masked_cross_entropy(logits, target), expected)


def test_masked_ce_all_ignored_is_zero_with_grad():
    logits = torch.randn(3, 7, requires_grad=True)
    _assert_zero_with_finite_grad(L.masked_cross_entropy(logits, torch.full((3,), -100)), logits)


# --- masked BCE / MSE -------------------------------------------------------------------------

def test_masked_bce_matches_mean_over_mask_and_ignores_masked_nan_targets():
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    target = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    ref = torch.stack([
        F.binary_cross_entropy_with_logits(logits[0, 0], torch.tensor(1.0)),
        F.binary_cross_entropy_with_logits(logits[1, 0], torch.tensor(0.0)),
        F.binary_cross_entropy_with_logits(logits[1, 1], torch.tensor(1.0)),
    ]).mean()
    assert torch.allclose(L.masked_bce(logits, target, mask), ref)


def test_masked_bce_all_masked_zero_with_grad():
    logits = torch.randn(2, 3, requires_grad=True)
    _assert_zero_with_finite_grad(L.masked_bce(logits, torch.ones(2, 3), torch.zeros(2, 3)), logits)


def test_masked_mse_per_sample_mask_broadcasts():
    pred = torch.tensor([[0.5, -0.5], [0.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[0.0, 0.0], [9.0, 9.0], [0.0, 1.0]])
    mask = torch.tensor([1.0, 0.0, 1.0])  # VA: one mask per sample
    # known elements: 0.25, 0.25, 1, 0 -> mean 0.375
    assert L.masked_mse(pred, target, mask).item() == pytest.approx(0.375)
    p = torch.zeros(2, 2, requires_grad=True)
    _assert_zero_with_finite_grad(L.masked_mse(p, torch.ones(2, 2), torch.zeros(2)), p)


# --- uncertainty weighting --------------------------------------------------------------------

def test_uncertainty_weighting_value_and_skips_none():
    uw = L.UncertaintyWeighting(3)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.0, math.log(2.0), 5.0]))
    l0, l1 = torch.tensor(3.0), torch.tensor(4.0)
    # exp(0)*3 + 0 + exp(-log 2)*4 + log 2 ; task 2 skipped (its s=5 must not appear)
    total = uw([l0, l1, None])
    assert total.item() == pytest.approx(3.0 + 2.0 + math.log(2.0))
    total.backward()
    grad = uw.log_vars.grad
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    assert grad[0].item() == pytest.approx(1 - 3.0)
    assert grad[1].item() == pytest.approx(1 - 2.0)
    assert grad[2].item() == 0.0


def test_uncertainty_weighting_trains_and_all_none_is_zero():
    uw = L.UncertaintyWeighting(2)
    x = torch.tensor(2.0, requires_grad=True)
    uw([x**2, x * 3]).backward()
    assert uw.log_vars.grad is not None and torch.count_nonzero(uw.log_vars.grad) == 2
    assert x.grad.item() == pytest.approx(2 * 2.0 + 3)  # weights start at 1
    uw.zero_grad()
    _assert_zero_with_finite_grad(uw([None, None]), uw.log_vars)
    with pytest.raises(ValueError):
        uw([x])


# --- channel-diverse loss ---------------------------------------------------------------------

def test_channel_diverse_hand_computed():
    # C=14, 7 groups of 2; group maxima row0: 0.2, 0.4, ..., 1.4 (sum 5.6), row1: all 1.0 (sum 7)
    row0 = torch.tensor([[0.1 * k, 0.2 * k] for k in range(1, 8)]).reshape(-1)
    row1 = torch.tensor([[1.0, 0.0] if k % 2 else [0.0, 1.0] for k in range(7)]).reshape(-1)
    x = torch.stack([row0, row1])
    expected = 1 - ((5.6 + 7.0) / 2) / 14  # mean over 14 (batch x group) maxima, each divided by g=2
    assert L.channel_diverse_loss(x).item() == pytest.approx(expected)


def test_channel_diverse_truncates_extra_channels():
    x = torch.rand(3, 14)
    extra = torch.full((3, 1), 100.0)  # would be a group max if the 15th channel were used
    assert torch.allclose(L.channel_diverse_loss(torch.cat([x, extra], 1)), L.channel_diverse_loss(x))
    # C=15 with 5 groups: g=3 uses all 15
    y = torch.zeros(1, 15)
    y[0, 14] = 0.9
    assert L.channel_diverse_loss(y, num_groups=5).item() == pytest.approx(1 - (0.9 / 3) / 5)


def test_channel_diverse_grad_reaches_group_maxima_only():
    x = torch.tensor([[0.2, 0.8, 0.5, 0.1]], requires_grad=True)
    L.channel_diverse_loss(x, num_groups=2).backward()
    # loss = 1 - mean(max/2) over 2 groups -> d/dmax = -1/4
    assert torch.allclose(x.grad, torch.tensor([[0.0, -0.25, -0.25, 0.0]]))
    with pytest.raises(ValueError):
        L.channel_diverse_loss(torch.zeros(2, 6), num_groups=7)


# --- MDWA loss --------------------------------------------------------------------------------

def _asl_gamma1(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent asymmetric loss, gamma_pos=0, gamma_neg=1, no clipping, mean over known entries."""
    p = torch.sigmoid(logits.double())
    known = y >= 0
    per = -(y * torch.log(p) + (1 - y) * p * torch.log(1 - p))
    return per[known].mean()


def test_mdwa_reduces_to_asymmetric_loss():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=g) * 2
    y = torch.randint(0, 2, (5, 4), generator=g).float()
    y[0, 1] = y[3, 2] = -1
    got = L.mdwa_loss(logits, y, [0.3] * 4, margin=0.0, gamma_bounds=(1.0, 1.0))
    assert got.item() == pytest.approx(_asl_gamma1(logits, y).item(), rel=1e-5)


def test_mdwa_weights_and_gamma_hand_computed():
    # r = [0.5, 0.25]: 1/r = [2, 4], sum 6 -> w = 2*[2/6, 4/6] = [2/3, 4/3]; gamma = [1, 2]
    w, gamma = L.mdwa_weights([0.5, 0.25], (1.0, 2.0))
    assert w.tolist() == pytest.approx([2 / 3, 4 / 3])
    assert gamma.tolist() == pytest.approx([1.0, 2.0])
    # interpolation: r=[0.4, 0.2, 0.1] -> gamma_1 = 1 + (0.4-0.2)/(0.4-0.1)
    _, gamma3 = L.mdwa_weights([0.4, 0.2, 0.1], (1.0, 2.0))
    assert gamma3.tolist() == pytest.approx([1.0, 1 + 2 / 3, 2.0])
    _, same = L.mdwa_weights([0.3, 0.3], (1.5, 4.0))
    assert same.tolist() == pytest.approx([1.5, 1.5])


def test_mdwa_1x2_hand_computed():
    # logits [0, ln 3] -> p = [0.5, 0.75]; targets [1, 0]; margin 0.05
    logits = torch.tensor([[0.0, math.log(3.0)]])
    y = torch.tensor([[1.0, 0.0]])
    pos = -(2 / 3) * math.log(0.5)  # w0 * -log p
    p_m = 0.75 - 0.05
    neg = -(4 / 3) * p_m**2 * math.log(1 - p_m)  # w1 * p_m^gamma1 * -log(1-p_m), gamma1 = 2
    got = L.mdwa_loss(logits, y, [0.5, 0.25], margin=0.05, gamma_bounds=(1.0, 2.0))
    assert got.item() == pytest.approx((pos + neg) / 2, rel=1e-5)


def test_mdwa_margin_truncates_easy_negatives():
    logits = torch.tensor([[-5.0]], requires_grad=True)  # p ~ 0.0067 < margin
    loss = L.mdwa_loss(logits, torch.tensor([[0.0]]), [0.2], margin=0.05, gamma_bounds=(0.5, 0.5))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.item() == 0.0  # also no NaN from p_m^gamma at 0 with gamma < 1


def test_mdwa_unknown_entries_do_not_change_loss():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3, generator=g)
    y = torch.randint(0, 2, (4, 3), generator=g).float()
    y[1, 0] = y[2, 2] = -1
    rates = [0.1, 0.5, 0.3]
    base = L.mdwa_loss(logits, y, rates)
    changed = logits.clone()
    changed[1, 0], changed[2, 2] = 40.0, -40.0
    assert torch.allclose(L.mdwa_loss(changed, y, rates), base)
    # same as dropping to the known entries via a loader-style mask
    mask = (y >= 0).float()
    assert torch.allclose(L.mdwa_loss(logits, y.clamp_min(0), rates, mask=mask), base)


def test_mdwa_all_unknown_zero_with_grad():
    logits = torch.randn(2, 3, requires_grad=True)
    _assert_zero_with_finite_grad(L.mdwa_loss(logits, -torch.ones(2, 3), [0.1, 0.2, 0.3]), logits)


@pytest.mark.parametrize("margin", [0.0, 0.05])
def test_mdwa_extreme_logits_finite_grad(margin):
    logits = torch.tensor([[50.0, -50.0, 50.0, -50.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    loss = L.mdwa_loss(logits, y, [0.0, 0.1, 0.5, 1.0], margin=margin)  # a zero rate too
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] < 0  # a confidently missed positive is still pushed up
    if margin == 0:
        assert logits.grad[0, 2] > 0  # a confident false positive is still pushed down


def test_mdwa_zero_rate_is_finite():
    w, gamma = L.mdwa_weights([0.0, 0.5])
    assert torch.isfinite(w).all() and torch.isfinite(gamma).all()
    assert w[0] > w[1]
    with pytest.raises(ValueError):
        L.mdwa_weights([0.1, -0.2])
