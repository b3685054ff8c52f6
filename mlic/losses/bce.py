"""Binary cross-entropy on logits, one independent sigmoid per label: the baseline loss of multi-label classification.

Reference: PyTorch's ``F.binary_cross_entropy_with_logits`` (whose ``pos_weight`` semantics this keeps). ML-GCN trains
with ``nn.MultiLabelSoftMarginLoss``, which averages over classes and then over the batch, i.e. equals this loss with
``reduction="mean"``. The ASL repository's "CE" baseline is ASL with ``gamma_neg = gamma_pos = clip = 0``, which is
this loss with ``reduction="sum"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mlic.losses.registry import LOSSES, MultiLabelLoss, prepare_inputs


@LOSSES.register("bce")
class BinaryCrossEntropy(MultiLabelLoss):
    """Per-entry ``-[pos_weight * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x))]``, computed stably.

    Args:
        pos_weight: Optional weight of the positive term, a scalar or one value per class (``[C]``), as in
            ``torch.nn.BCEWithLogitsLoss``. It reweights entries but does not change the ``"mean"`` denominator,
            which stays the number of counted entries.
        smoothing: Symmetric binary label smoothing ``s`` in [0, 1): targets become ``y * (1 - s) + s / 2``, so
            positives aim at ``1 - s/2`` and negatives at ``s/2``. 0 (default) disables it. (timm's
            ``BinaryCrossEntropy`` smooths one-hot multi-class targets with ``s / C`` instead; the single-positive
            AN-LS loss has its own convention.)
        reduction: ``"mean"`` over counted entries (default), ``"sum"`` or ``"none"``; see `mlic.losses.registry`.
    """

    pos_weight: Tensor | None

    def __init__(
        self,
        *,
        pos_weight: float | Sequence[float] | Tensor | None = None,
        smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
        self.smoothing = float(smoothing)
        weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        # A buffer so that `.to(device)` moves it; not persistent, as losses are not part of checkpoints.
        self.register_buffer("pos_weight", weight, persistent=False)

    def forward(
        self, logits: Tensor, targets: Tensor, *, mask: Tensor | None = None, index: Tensor | None = None
    ) -> Tensor:
        """The loss of `logits` against `targets` (the shared contract: `MultiLabelLoss`)."""
        x, y = prepare_inputs(logits, targets, mask)
        if self.smoothing > 0:
            y = y * (1.0 - self.smoothing) + 0.5 * self.smoothing
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(x.dtype)
        loss = F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight, reduction="none")
        return self.reduce(loss, mask)

    def extra_repr(self) -> str:
        weighted = "None" if self.pos_weight is None else f"[{self.pos_weight.numel()}]"
        return f"pos_weight={weighted}, smoothing={self.smoothing}, reduction={self.reduction!r}"
