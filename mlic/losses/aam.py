"""AAM: the asymmetric angular margin loss (Prokofiev & Sovrasov 2022, seed 002, Eq. 1).

Reference code: `tosfaq/deep-object-reid` (mirror of openvinotoolkit's), branch `multilabel-paper`,
`torchreid/losses/asl.py:AMBinaryLoss` — the variant implemented here. For cosine logits cosθ of a normalised
classifier, scale s, margin m and balance k:

    p+ = σ(s(cosθ − m)),   p− = σ(−s(cosθ + m))        (p− ≠ 1 − p+ unless m = 0)
    L  = −Σ_j [ (k/s)·y·w+·log p+ + ((1−k)/s)·(1−y)·w−·log p− ]
    w+ = p−^γ+ ,  w− = p+^γ−                            (when γ+ or γ− > 0, p− is first shifted: min(p− + clip, 1))

Differences worth knowing:
- The paper's Eq. 1 writes the positive term's exponent as γ− and the negative's as γ+; the code (and ASL, whose
  γ− handles the negatives) uses γ+ for positives and γ− for negatives, as here.
- The clip ("probability margin", 0.05) is applied only when focusing is on, and the shifted p− enters the log, as in
  the paper's code. The later production variant (OpenVINO training_extensions, `AsymmetricAngularLossWithIgnore`)
  drops s from the weights and the margin m, always applies the clip, and uses a head scale of 7: not implemented.
- The focusing weights keep their gradient by default (reference); `detach_focal_weight=True` detaches them.
- The reference reduces by sum; `reduction="mean"` (default here) divides by the number of counted entries.
- The released configs use m = 0, k = 0.7 and γ+ = γ− = 0 (s = 23 for COCO, 17 for VOC); the paper's tables use
  γ− = 1 (COCO) or 2 (VOC, NUS). Class defaults of the reference: s = 30, m = 0.35, k = 0.8.

Input: the head's logits must be `s·cosθ` (a head with `cosine=True, scale=s`); the loss divides by s and checks
that the result lies in [−1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from mlic.losses.registry import LOSSES, MultiLabelLoss, prepare_inputs, reduce_loss


@LOSSES.register("aam")
class AsymmetricAngularMarginLoss(MultiLabelLoss):
    """The AAM loss of the paper's code; see the module docstring for the formula and the reference differences."""

    def __init__(self, *, s: float = 23.0, m: float = 0.0, k: float = 0.7, gamma_pos: float = 0.0,
                 gamma_neg: float = 0.0, clip: float = 0.05, detach_focal_weight: bool = False,
                 reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        if s <= 0:
            raise ValueError(f"s must be positive, got {s}")
        if not 0.0 <= k <= 1.0:
            raise ValueError(f"k must lie in [0, 1], got {k}")
        self.s, self.m, self.k = float(s), float(m), float(k)
        self.gamma_pos, self.gamma_neg, self.clip = float(gamma_pos), float(gamma_neg), float(clip)
        self.detach_focal_weight = detach_focal_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, *, mask: torch.Tensor | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        logits, targets = prepare_inputs(logits, targets, mask)
        cos = logits / self.s
        if cos.detach().abs().max() > 1 + 1e-4:
            raise ValueError(f"AAM expects logits s·cosθ with s = {self.s}, got values up to "
                             f"{float(logits.detach().abs().max()):.3g}: use a head with cosine=True and scale=s")
        loss = aam_terms(cos, targets, s=self.s, m=self.m, k=self.k, gamma_pos=self.gamma_pos,
                         gamma_neg=self.gamma_neg, clip=self.clip, detach_focal_weight=self.detach_focal_weight)
        return reduce_loss(loss, mask, self.reduction)


def aam_terms(cos: torch.Tensor, targets: torch.Tensor, *, s: float, m: float, k: float, gamma_pos: float,
              gamma_neg: float, clip: float, detach_focal_weight: bool = False) -> torch.Tensor:
    """Element-wise AAM loss `[B, C]` (positive, non-negative values) for cosines `cos` and 0/1 `targets`."""
    log_pos = F.logsigmoid(s * (cos - m))
    log_neg = F.logsigmoid(-s * (cos + m))
    focusing = gamma_pos > 0 or gamma_neg > 0
    if focusing and clip > 0:
        log_neg = torch.log((log_neg.exp() + clip).clamp(max=1.0))
    loss = -(k / s) * targets * log_pos - ((1 - k) / s) * (1 - targets) * log_neg
    if focusing:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal_weight):
            p_pos, p_neg = log_pos.exp(), log_neg.exp()
            weight = targets * p_neg.pow(gamma_pos) + (1 - targets) * p_pos.pow(gamma_neg)
        loss = loss * weight
    return loss


def aam_curves(cos: np.ndarray, *, s: float = 23.0, m: float = 0.0, k: float = 0.7, gamma_pos: float = 0.0,
               gamma_neg: float = 0.0, clip: float = 0.05) -> dict[str, np.ndarray]:
    """The positive part (a positive label's loss) and negative part (a negative's) over cosθ, for figures like the
    paper's Figure 2."""
    grid = torch.as_tensor(np.asarray(cos, dtype=np.float64))
    kw = dict(s=s, m=m, k=k, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
    with torch.no_grad():
        positive = aam_terms(grid, torch.ones_like(grid), **kw)
        negative = aam_terms(grid, torch.zeros_like(grid), **kw)
    return {"cos": grid.numpy(), "positive": positive.numpy(), "negative": negative.numpy()}
