"""Sigmoid focal loss for multi-label classification.

Paper: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollár, "Focal Loss for Dense Object Detection", ICCV 2017
(arXiv:1708.02002). Reference code: ``torchvision.ops.sigmoid_focal_loss``.

Paper and reference versus `mlic`:

- ``alpha``: the paper's detection setting and torchvision's default are ``alpha=0.25``; here the default is ``None``
  (no class-balance weighting), so that ``gamma=0`` gives plain BCE.
- Gradient through the focusing weight: the paper and torchvision differentiate through ``(1 - p_t)^gamma``, and so
  does this loss by default. ``detach_weight=True`` treats the weight as a constant, as the ASL, ML-Decoder and CPSD
  recipes do for their focusing weight (``disable_torch_grad_focal_loss``).
- Reduction: torchvision defaults to ``"none"``; the paper normalises the sum by the number of anchors assigned to
  objects. Here the default is ``"mean"`` over the counted ``B x C`` entries.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from mlic.losses.registry import LOSSES, MultiLabelLoss, prepare_inputs


@LOSSES.register("focal")
class FocalLoss(MultiLabelLoss):
    """Per-entry ``alpha_t * (1 - p_t)^gamma * BCE(x, y)`` with ``p_t = p*y + (1 - p)*(1 - y)`` and ``p = sigmoid(x)``.

    ``1 - p_t`` is evaluated as ``y * sigmoid(-x) + (1 - y) * sigmoid(x)``, which avoids the cancellation in
    ``1 - sigmoid(x)`` for large logits.

    Args:
        gamma: Focusing parameter (>= 0); 0 gives (alpha-weighted) BCE.
        alpha: Optional weight in [0, 1] of positives, ``1 - alpha`` weighting negatives; ``None`` (default) means no
            such weighting. The paper and torchvision use 0.25.
        detach_weight: If True, compute the focusing weight under ``torch.no_grad()`` so that it acts as a constant;
            the default False keeps its gradient, as in the paper and torchvision.
        reduction: ``"mean"`` over counted entries (default), ``"sum"`` or ``"none"``; see `mlic.losses.registry`.
    """

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float | None = None,
        detach_weight: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] or be None, got {alpha}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.detach_weight = bool(detach_weight)

    def forward(
        self, logits: Tensor, targets: Tensor, *, mask: Tensor | None = None, index: Tensor | None = None
    ) -> Tensor:
        """The loss of `logits` against `targets` (the shared contract: `MultiLabelLoss`)."""
        x, y = prepare_inputs(logits, targets, mask)
        loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        if self.gamma != 0:
            with torch.no_grad() if self.detach_weight else contextlib.nullcontext():
                one_minus_pt = y * torch.sigmoid(-x) + (1.0 - y) * torch.sigmoid(x)
                weight = one_minus_pt.pow(self.gamma)
            loss = loss * weight
        if self.alpha is not None:
            loss = loss * (self.alpha * y + (1.0 - self.alpha) * (1.0 - y))
        return self.reduce(loss, mask)

    def extra_repr(self) -> str:
        return (
            f"gamma={self.gamma}, alpha={self.alpha}, detach_weight={self.detach_weight}, reduction={self.reduction!r}"
        )
