"""Asymmetric Loss (ASL) for multi-label classification.

Paper: T. Ridnik, E. Ben-Baruch, N. Zamir, A. Noy, I. Friedman, M. Protter, L. Zelnik-Manor, "Asymmetric Loss For
Multi-Label Classification", ICCV 2021 (arXiv:2009.14119). Reference code: ``Alibaba-MIIL/ASL``,
``src/loss_functions/losses.py`` (``AsymmetricLoss``, ``AsymmetricLossOptimized``).

Paper and reference versus `mlic`:

- ``gamma_pos``: the reference class ``AsymmetricLoss`` defaults to ``gamma_pos=1``, but every released training
  recipe (ASL's, ML-Decoder's and CPSD's ``train.py``) builds it with ``gamma_pos=0``. `mlic` defaults to the recipes'
  ``(gamma_neg, gamma_pos, clip) = (4, 0, 0.05)``; pass ``gamma_pos=1`` for the class default. Query2Label trains with
  ``(2, 0, 0)``.
- Reduction: the reference returns ``-(L * w).sum()``, a sum over batch and classes; `mlic` defaults to ``"mean"``
  over the counted entries (the sum divided by ``B * C``), and ``reduction="sum"`` reproduces the reference. Both give
  the same optimum but a ``B * C`` times smaller gradient, so learning rates tuned for one do not carry over as is.
  (Query2Label uses the sum divided by ``B * C``, times 1000.)
- Detached focusing weight: ``AsymmetricLoss`` defaults to ``disable_torch_grad_focal_loss=True`` and the recipes
  pass True, so `mlic`'s ``detach_focal_weight`` defaults to True; ``AsymmetricLossOptimized`` (and timm's
  ``AsymmetricLossMultiLabel``) default to keeping the gradient, which the maintainer recommends trying first
  (Alibaba-MIIL/ASL issue #31). The reference toggles the *global* grad mode (``torch.set_grad_enabled``), which
  re-enables gradients when the loss is called inside ``torch.no_grad()``; here the weight is computed under a scoped
  ``torch.no_grad()``.
- Clipping: the reference's ``xs_neg = min(1 - p + clip, 1)`` is ``1 - p_m`` for the paper's shifted probability
  ``p_m = max(p - m, 0)``, with ``m = clip``; the sign looks reversed only because ``xs_neg`` holds ``1 - p``.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mlic.losses.registry import LOSSES, MultiLabelLoss, prepare_inputs


@LOSSES.register("asl")
class AsymmetricLoss(MultiLabelLoss):
    """ASL: asymmetric focusing plus probability shifting of the negatives.

    With ``p = sigmoid(x)`` and targets ``y``, per entry:

    - ``xs_neg = min(1 - p + clip, 1)`` if ``clip > 0`` else ``1 - p``;
    - ``L = y * log(max(p, eps)) + (1 - y) * log(max(xs_neg, eps))``;
    - ``pt = p * y + xs_neg * (1 - y)`` and ``w = (1 - pt)^(gamma_pos * y + gamma_neg * (1 - y))``;
    - ``loss = -L * w``.

    The values are the reference's (the eps clamp included), but computed stably: ``log p`` and ``log(1 - p)`` come
    from ``logsigmoid`` rather than the log of a rounded probability, and ``1 - pt`` is evaluated as
    ``y * sigmoid(-x) + (1 - y) * max(sigmoid(x) - clip, 0)``, so logits of +-100 give finite values and gradients.

    Args:
        gamma_neg: Focusing exponent of negatives (>= 0).
        gamma_pos: Focusing exponent of positives (>= 0); the recipes' 0 by default (the reference class uses 1).
        clip: Probability margin ``m`` shifting negatives, in [0, 1); 0 disables shifting.
        eps: Lower clamp of the probabilities inside the logs, in [0, 1).
        detach_focal_weight: If True (default, as in the recipes), compute ``w`` under a scoped ``torch.no_grad()``
            so that it acts as a constant weight; if False, differentiate through it.
        reduction: ``"mean"`` over counted entries (default), ``"sum"`` (the reference's) or ``"none"``; see
            `mlic.losses.registry`.
    """

    def __init__(
        self,
        *,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        detach_focal_weight: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction)
        if gamma_neg < 0 or gamma_pos < 0:
            raise ValueError(f"gamma_neg and gamma_pos must be >= 0, got {gamma_neg} and {gamma_pos}")
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"clip must lie in [0, 1), got {clip}")
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must lie in [0, 1), got {eps}")
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = float(clip)
        self.eps = float(eps)
        self.detach_focal_weight = bool(detach_focal_weight)

    def forward(
        self, logits: Tensor, targets: Tensor, *, mask: Tensor | None = None, index: Tensor | None = None
    ) -> Tensor:
        """The loss of `logits` against `targets` (the shared contract: `MultiLabelLoss`)."""
        x, y = prepare_inputs(logits, targets, mask)
        log_eps = math.log(self.eps) if self.eps > 0 else -math.inf
        # log(max(p, eps)) == max(log p, log eps), with log p taken as logsigmoid(x).
        log_pos = F.logsigmoid(x).clamp_min(log_eps)
        if self.clip > 0:
            # xs_neg >= clip > 0 here, so its log is finite without any help.
            log_neg = torch.log((torch.sigmoid(-x) + self.clip).clamp(max=1.0).clamp_min(self.eps))
        else:
            log_neg = F.logsigmoid(-x).clamp_min(log_eps)
        loss = -(y * log_pos + (1.0 - y) * log_neg)

        if self.gamma_neg != 0 or self.gamma_pos != 0:
            with torch.no_grad() if self.detach_focal_weight else contextlib.nullcontext():
                # 1 - pt: 1 - p for positives, the shifted probability p_m = max(p - clip, 0) for negatives.
                p_neg = torch.sigmoid(x)
                if self.clip > 0:
                    p_neg = (p_neg - self.clip).clamp_min(0.0)
                one_minus_pt = y * torch.sigmoid(-x) + (1.0 - y) * p_neg
                weight = one_minus_pt.pow(self.gamma_pos * y + self.gamma_neg * (1.0 - y))
            loss = loss * weight
        return self.reduce(loss, mask)

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}, "
            f"detach_focal_weight={self.detach_focal_weight}, reduction={self.reduction!r}"
        )
