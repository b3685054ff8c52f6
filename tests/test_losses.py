"""Tests of `mlic.losses`: BCE, focal and ASL against each other, against numpy re-derivations and hand arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mlic.losses import (
    LOSSES,
    AsymmetricLoss,
    BinaryCrossEntropy,
    FocalLoss,
    create_loss,
    list_losses,
)

REDUCTIONS = ["mean", "sum", "none"]

# The toy inputs of implementations.md section 12.
X_TOY = [[2.0, -1.0, 0.5, -3.0], [0.0, 1.5, -0.5, 2.5]]
Y_TOY = [[1, 0, 0, 1], [0, 1, 1, 0]]


def _random_batch(seed: int = 0, b: int = 6, c: int = 5, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, c, generator=g) * 3).to(dtype)
    y = (torch.rand(b, c, generator=g) < 0.4).to(dtype)
    return x, y


def _asl_numpy(x, y, *, gamma_neg: float, gamma_pos: float, clip: float, eps: float = 1e-8) -> np.ndarray:
    """The ASL formula of implementations.md section 2.1, term by term, in float64 numpy; per-entry losses."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    xs_neg = np.minimum(1.0 - p + clip, 1.0) if clip > 0 else 1.0 - p
    log_term = y * np.log(np.maximum(p, eps)) + (1.0 - y) * np.log(np.maximum(xs_neg, eps))
    pt = p * y + xs_neg * (1.0 - y)
    w = (1.0 - pt) ** (gamma_pos * y + gamma_neg * (1.0 - y))
    return -log_term * w


def _bce_numpy(x, y) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


# --- golden values (implementations.md section 12), re-derived here before being trusted -------------------------


@pytest.mark.parametrize(
    ("gamma_neg", "gamma_pos", "clip", "golden"),
    [
        (4.0, 1.0, 0.05, 4.888698),  # the reference class defaults
        (4.0, 0.0, 0.05, 5.677502),  # the train.py setting, mlic's default
        (0.0, 0.0, 0.0, 8.910381),  # plain BCE
    ],
)
def test_asl_golden_values(gamma_neg: float, gamma_pos: float, clip: float, golden: float) -> None:
    numpy_sum = _asl_numpy(X_TOY, Y_TOY, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip).sum()
    assert numpy_sum == pytest.approx(golden, abs=2e-6)

    loss = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="sum")
    for dtype in (torch.float32, torch.float64):
        value = loss(torch.tensor(X_TOY, dtype=dtype), torch.tensor(Y_TOY, dtype=dtype)).item()
        assert value == pytest.approx(golden, abs=2e-6)
        assert value == pytest.approx(numpy_sum, rel=1e-6)


def test_bce_golden_value() -> None:
    assert _bce_numpy(X_TOY, Y_TOY).sum() == pytest.approx(8.910381, abs=2e-6)
    value = BinaryCrossEntropy(reduction="sum")(torch.tensor(X_TOY), torch.tensor(Y_TOY, dtype=torch.float32))
    assert value.item() == pytest.approx(8.910381, abs=2e-6)
    mean = BinaryCrossEntropy()(torch.tensor(X_TOY), torch.tensor(Y_TOY, dtype=torch.float32))
    assert mean.item() == pytest.approx(8.910381 / 8, abs=1e-6)


@pytest.mark.parametrize(
    ("gamma_neg", "gamma_pos", "clip", "eps"),
    [(4, 0, 0.05, 1e-8), (4, 1, 0.05, 1e-8), (2, 0, 0.0, 1e-5), (1.5, 0.5, 0.2, 1e-8), (3, 3, 0.0, 1e-8)],
)
def test_asl_matches_numpy_formula_on_random_inputs(
    gamma_neg: float, gamma_pos: float, clip: float, eps: float
) -> None:
    x, y = _random_batch(seed=1, b=16, c=7)
    expected = _asl_numpy(x.numpy(), y.numpy(), gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=eps)
    loss = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=eps, reduction="none")
    assert_close(loss(x, y), torch.from_numpy(expected), rtol=1e-9, atol=1e-12)


def test_asl_hand_computed_single_entries() -> None:
    clip = 0.05
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=clip, reduction="none")
    logit = torch.tensor([[math.log(3.0)]], dtype=torch.float64)  # p = sigmoid(ln 3) = 3 / (1 + 3) = 0.75

    # Negative (y = 0), clipping active:
    #   xs_neg = min(1 - 0.75 + 0.05, 1) = 0.30
    #   L      = log(0.30) = -1.2039728043259361
    #   1 - pt = 1 - 0.30 = 0.70            (the paper's shifted probability p_m = 0.75 - 0.05)
    #   w      = 0.70 ** 4 = 0.2401
    #   loss   = -L * w = 1.2039728043259361 * 0.2401 = 0.28907387...
    by_hand = 1.2039728043259361 * 0.2401
    assert by_hand == pytest.approx(0.2890738703, abs=1e-10)
    assert loss(logit, torch.zeros(1, 1, dtype=torch.float64)).item() == pytest.approx(by_hand, rel=1e-12)

    # Positive (y = 1), gamma_pos = 1: L = log(0.75) = -0.2876820724517809, w = (1 - 0.75) ** 1 = 0.25,
    #   loss = 0.2876820724517809 * 0.25 = 0.07192051811294523.
    assert loss(logit, torch.ones(1, 1, dtype=torch.float64)).item() == pytest.approx(0.07192051811294523, rel=1e-12)

    # Negative below the margin: p = sigmoid(ln(1/24)) = 1 / 25 = 0.04 < clip, so xs_neg = min(1.01, 1) = 1,
    #   L = log 1 = 0 and w = (1 - 1) ** 4 = 0: the easy negative is discarded entirely.
    easy = torch.tensor([[math.log(1.0 / 24.0)]], dtype=torch.float64)
    assert loss(easy, torch.zeros(1, 1, dtype=torch.float64)).item() == 0.0


# --- invariants between the losses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_asl_without_focusing_or_clip_is_bce(reduction: str) -> None:
    x, y = _random_batch()
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, reduction=reduction)
    expected = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    assert_close(asl(x, y), expected)
    assert_close(BinaryCrossEntropy(reduction=reduction)(x, y), expected)
    assert_close(FocalLoss(gamma=0, reduction=reduction)(x, y), expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("detach", [True, False])
def test_asl_with_equal_gammas_is_focal(gamma: float, detach: bool, reduction: str) -> None:
    x, y = _random_batch(seed=2)
    x_asl = x.clone().requires_grad_()
    x_focal = x.clone().requires_grad_()
    asl = AsymmetricLoss(gamma_neg=gamma, gamma_pos=gamma, clip=0, detach_focal_weight=detach, reduction=reduction)
    focal = FocalLoss(gamma=gamma, detach_weight=detach, reduction=reduction)
    value_asl, value_focal = asl(x_asl, y), focal(x_focal, y)
    assert_close(value_asl, value_focal)
    value_asl.sum().backward()
    value_focal.sum().backward()
    assert_close(x_asl.grad, x_focal.grad)


def test_bce_pos_weight_and_smoothing_follow_torch() -> None:
    x, y = _random_batch(seed=3)
    pos_weight = torch.linspace(0.5, 3.0, x.shape[1], dtype=torch.float64)
    expected = F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight)
    assert_close(BinaryCrossEntropy(pos_weight=pos_weight)(x, y), expected)
    assert_close(BinaryCrossEntropy(pos_weight=pos_weight.tolist())(x, y), expected)

    smoothed = y * 0.8 + 0.1  # s = 0.2: positives aim at 0.9, negatives at 0.1
    assert_close(BinaryCrossEntropy(smoothing=0.2)(x, y), F.binary_cross_entropy_with_logits(x, smoothed))


def test_focal_alpha_matches_the_definition() -> None:
    x, y = _random_batch(seed=4)
    p = torch.sigmoid(x)
    pt = p * y + (1 - p) * (1 - y)
    alpha_t = 0.25 * y + 0.75 * (1 - y)
    expected = alpha_t * (1 - pt) ** 2 * F.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert_close(FocalLoss(gamma=2, alpha=0.25, reduction="none")(x, y), expected)


def test_focal_matches_torchvision_values_and_gradients() -> None:
    ops = pytest.importorskip("torchvision.ops")
    x, y = _random_batch(seed=9)
    x_ours, x_tv = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = FocalLoss(gamma=2, alpha=0.25, reduction="sum")(x_ours, y)
    theirs = ops.sigmoid_focal_loss(x_tv, y, alpha=0.25, gamma=2, reduction="sum")
    assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    assert_close(x_ours.grad, x_tv.grad)


# --- gradients through the focusing weight -------------------------------------------------------------------------


def test_asl_detached_weight_gets_no_gradient() -> None:
    x, y = _random_batch(seed=5, b=8, c=6)
    gamma_neg, gamma_pos, clip = 4.0, 1.0, 0.05
    p = torch.sigmoid(x)
    xs_neg = torch.clamp(1 - p + clip, max=1)
    w = (1 - (p * y + xs_neg * (1 - y))) ** (gamma_pos * y + gamma_neg * (1 - y))
    # d/dx of -w * log term with w held constant:
    #   positives: -w * d log p / dx = -w * (1 - p)
    #   negatives: -w * d log(1 - p + clip) / dx = w * p (1 - p) / xs_neg where xs_neg < 1, else 0 (clamped).
    d_log_neg = torch.where(1 - p + clip < 1, -p * (1 - p) / xs_neg, torch.zeros_like(p))
    analytic = -w * (y * (1 - p) + (1 - y) * d_log_neg)

    def grad(detach: bool) -> torch.Tensor:
        xg = x.clone().requires_grad_()
        loss = AsymmetricLoss(
            gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, detach_focal_weight=detach, reduction="sum"
        )
        loss(xg, y).backward()
        return xg.grad

    assert_close(grad(True), analytic)
    # The check discriminates: with the weight's gradient kept, the result differs.
    assert not torch.allclose(grad(False), analytic)


def test_focal_detached_weight_gets_no_gradient() -> None:
    x, y = _random_batch(seed=6)
    p = torch.sigmoid(x)
    w = (1 - (p * y + (1 - p) * (1 - y))) ** 2
    analytic = w * (p - y)  # d BCE / dx = p - y, times the constant weight

    xg = x.clone().requires_grad_()
    FocalLoss(gamma=2, detach_weight=True, reduction="sum")(xg, y).backward()
    assert_close(xg.grad, analytic)

    xg = x.clone().requires_grad_()
    FocalLoss(gamma=2, reduction="sum")(xg, y).backward()
    assert not torch.allclose(xg.grad, analytic)


@pytest.mark.parametrize("detach", [True, False])
def test_asl_leaves_grad_mode_alone(detach: bool) -> None:
    x, y = _random_batch()
    asl = AsymmetricLoss(detach_focal_weight=detach)
    with torch.no_grad():
        value = asl(x.clone().requires_grad_(), y)
        assert not torch.is_grad_enabled()
    assert not value.requires_grad
    assert torch.is_grad_enabled()
    assert asl(x.clone().requires_grad_(), y).requires_grad


# --- masks, reductions, numerics -----------------------------------------------------------------------------------


LOSS_FACTORIES = {
    "bce": lambda reduction: BinaryCrossEntropy(reduction=reduction),
    "bce_pos_weight": lambda reduction: BinaryCrossEntropy(pos_weight=2.0, smoothing=0.1, reduction=reduction),
    "focal": lambda reduction: FocalLoss(alpha=0.25, reduction=reduction),
    "focal_detached": lambda reduction: FocalLoss(gamma=1.5, detach_weight=True, reduction=reduction),
    "asl": lambda reduction: AsymmetricLoss(reduction=reduction),
    "asl_class_defaults": lambda reduction: AsymmetricLoss(gamma_pos=1, detach_focal_weight=False, reduction=reduction),
    "asl_no_clip": lambda reduction: AsymmetricLoss(clip=0, eps=0, reduction=reduction),
}


@pytest.mark.parametrize("name", sorted(LOSS_FACTORIES))
def test_mask_keeps_only_the_counted_entries(name: str) -> None:
    x, y = _random_batch(seed=7, b=8, c=6)
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(8)) < 0.6
    garbage = torch.where(mask, y, torch.full_like(y, float("nan")))  # unknown labels must not matter
    kept_x, kept_y = x[mask][None], y[mask][None]
    for reduction in ("mean", "sum"):
        loss = LOSS_FACTORIES[name](reduction)
        xg = x.clone().requires_grad_()
        value = loss(xg, garbage, mask=mask)
        assert_close(value, loss(kept_x, kept_y))
        value.backward()
        assert torch.isfinite(xg.grad).all()
        assert (xg.grad[~mask] == 0).all()
    per_entry = LOSS_FACTORIES[name]("none")(x, garbage, mask=mask)
    assert per_entry.shape == x.shape
    assert (per_entry[~mask] == 0).all()
    assert_close(per_entry[mask], LOSS_FACTORIES[name]("none")(kept_x, kept_y)[0])


def test_mask_edge_cases() -> None:
    x, y = _random_batch()
    loss = AsymmetricLoss()
    # "mean" divides by the number of counted entries, not by B * C.
    mask = torch.zeros_like(y, dtype=torch.bool)
    mask[:, :2] = True
    assert_close(loss(x, y, mask=mask), AsymmetricLoss(reduction="sum")(x, y, mask=mask) / mask.sum())
    # A per-class mask broadcasts; a float mask weights.
    assert_close(loss(x, y, mask=mask[0]), loss(x, y, mask=mask))
    assert_close(loss(x, y, mask=mask.double()), loss(x, y, mask=mask))
    # An all-masked batch is 0, with a usable gradient.
    xg = x.clone().requires_grad_()
    value = loss(xg, y, mask=torch.zeros_like(y))
    value.backward()
    assert value.item() == 0.0
    assert (xg.grad == 0).all()
    with pytest.raises(ValueError, match="broadcast"):
        loss(x, y, mask=torch.ones(3, 3, dtype=torch.bool))


@pytest.mark.parametrize("name", sorted(LOSS_FACTORIES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_extreme_logits_stay_finite(name: str, reduction: str) -> None:
    x = torch.tensor([[100.0, -100.0, 100.0, -100.0, 1e4, -1e4, 0.0, 30.0]])
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
    xg = x.clone().requires_grad_()
    value = LOSS_FACTORIES[name](reduction)(xg, y)
    assert torch.isfinite(value).all()
    value.sum().backward()
    assert torch.isfinite(xg.grad).all()


def test_asl_eps_clamp_keeps_the_reference_value() -> None:
    # A confidently wrong positive: log(max(sigmoid(-100), 1e-8)) = log(1e-8), not -100.
    value = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, reduction="sum")(
        torch.tensor([[-100.0]]), torch.ones(1, 1)
    )
    assert value.item() == pytest.approx(-math.log(1e-8), rel=1e-6)


@pytest.mark.parametrize("name", ["bce", "focal", "asl"])
def test_half_precision_logits_compute_in_float32(name: str) -> None:
    x, y = _random_batch(dtype=torch.float32)
    loss = create_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(x.bfloat16(), y, index=torch.arange(x.shape[0]))
    assert value.dtype == torch.float32
    assert_close(value, loss(x.bfloat16().float(), y))


def test_reduction_and_shape_are_checked() -> None:
    for name in ("bce", "focal", "asl"):
        with pytest.raises(ValueError, match="mean, sum, none"):
            create_loss(name, reduction="avg")
    x, y = _random_batch()
    with pytest.raises(ValueError, match="same shape"):
        AsymmetricLoss()(x, y[:, :-1])


# --- registry ------------------------------------------------------------------------------------------------------


def test_registry_lists_the_losses() -> None:
    assert {"bce", "focal", "asl"} <= set(list_losses())
    assert list_losses() == LOSSES.list()
    assert isinstance(create_loss("bce"), BinaryCrossEntropy)
    assert isinstance(create_loss("focal"), FocalLoss)
    assert isinstance(create_loss("asl"), AsymmetricLoss)
    built = AsymmetricLoss(gamma_pos=1)
    assert create_loss(built) is built


def test_unknown_loss_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="Unknown loss 'nope'") as info:
        create_loss("nope")
    for name in ("asl", "bce", "focal"):
        assert name in str(info.value)


def test_none_means_default() -> None:
    loss = create_loss("asl", gamma_neg=None, gamma_pos=None, clip=None, reduction=None)
    assert isinstance(loss, AsymmetricLoss)
    assert (loss.gamma_neg, loss.gamma_pos, loss.clip, loss.eps) == (4.0, 0.0, 0.05, 1e-8)
    assert loss.detach_focal_weight is True
    assert loss.reduction == "mean"
    focal = create_loss("focal", gamma=None, alpha=None)
    assert (focal.gamma, focal.alpha, focal.detach_weight) == (2.0, None, False)
