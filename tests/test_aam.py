"""The AAM loss against its formula (seed 002, Eq. 1, in the paper's code variant) and its limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mlic.losses import aam_curves, create_loss

X = torch.tensor([[2.0, -1.0, 0.5, -3.0], [0.0, 1.5, -0.5, 2.5]])
Y = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]])
COS = torch.tanh(X / 3)


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_golden_values_of_the_reference_toy() -> None:
    # implementations.md §12, re-derived below for one entry
    ref = create_loss("aam", s=30, m=0.35, k=0.8, reduction="sum")
    assert float(ref(COS * 30, Y)) == pytest.approx(1.689861, abs=1e-5)
    paper = create_loss("aam", s=23, m=0.0, k=0.7, reduction="sum")
    assert float(paper(COS * 23, Y)) == pytest.approx(0.912948, abs=1e-5)


def test_one_entry_by_hand_with_focusing_and_clip() -> None:
    # a negative with cos = 0.1, s = 10, m = 0.2, k = 0.6, gamma_neg = 2, clip = 0.05:
    # p- = σ(−10·(0.1 + 0.2)) = σ(−3) = 0.047426; shifted p- = 0.097426; p+ = σ(10·(0.1 − 0.2)) = σ(−1) = 0.268941
    # loss = −(1 − 0.6)/10 · p+^2 · log(0.097426) = 0.04 · 0.072329 · 2.328681 = 0.0067373
    p_neg = _sigmoid(-3) + 0.05
    p_pos = _sigmoid(-1)
    expected = -(0.4 / 10) * p_pos**2 * math.log(p_neg)
    loss = create_loss("aam", s=10, m=0.2, k=0.6, gamma_neg=2, gamma_pos=0, clip=0.05, reduction="sum")
    value = float(loss(torch.tensor([[1.0]]), torch.tensor([[0.0]])))  # logit = s·cos = 1.0
    assert value == pytest.approx(expected, rel=1e-6) and value == pytest.approx(0.0067373, rel=1e-4)


def test_zero_margin_and_no_focusing_is_k_balanced_scaled_bce() -> None:
    s, k = 17.0, 0.5
    loss = create_loss("aam", s=s, m=0.0, k=k, reduction="sum")
    bce = F.binary_cross_entropy_with_logits(COS * s, Y, reduction="sum")
    torch.testing.assert_close(loss(COS * s, Y), bce * k / s)  # k = ½: both halves weighted ½/s


def test_margin_makes_both_parts_stricter() -> None:
    kw = dict(s=20, k=0.5, reduction="none")
    no_margin = create_loss("aam", m=0.0, **kw)(COS * 20, Y)
    margin = create_loss("aam", m=0.2, **kw)(COS * 20, Y)
    assert (margin > no_margin).all()  # p+ = σ(s(cos − m)) < σ(s·cos), p− = σ(−s(cos + m)) < σ(−s·cos)


def test_logits_out_of_cosine_range_are_refused() -> None:
    with pytest.raises(ValueError, match="cosine=True"):
        create_loss("aam", s=5)(torch.tensor([[7.0]]), torch.tensor([[1.0]]))


def test_gradient_flows_through_focal_weight_unless_detached() -> None:
    logits = (COS * 23).clone().requires_grad_(True)
    grads = []
    for detach in (False, True):
        loss = create_loss("aam", s=23, gamma_neg=2, gamma_pos=1, detach_focal_weight=detach)
        (g,) = torch.autograd.grad(loss(logits, Y), logits)
        grads.append(g)
    assert not torch.allclose(grads[0], grads[1])


def test_curves_have_the_shape_of_the_papers_figure() -> None:
    cos = np.linspace(-1, 1, 101)
    curves = aam_curves(cos, s=23, m=0.0, k=0.7)
    assert np.all(np.diff(curves["positive"]) < 0)  # a positive is penalised less as cosθ grows
    assert np.all(np.diff(curves["negative"]) > 0)  # a negative more
    loss = create_loss("aam", s=23, m=0.0, k=0.7, reduction="none")
    grid = torch.as_tensor(cos, dtype=torch.float64)
    torch.testing.assert_close(torch.as_tensor(curves["positive"]),
                               loss(grid[:, None] * 23, torch.ones(101, 1, dtype=torch.float64))[:, 0])
