"""The loss registry and the contract every multi-label loss in `mlic` follows.

Every loss is an `nn.Module` called as ``loss(logits, targets, *, mask=None, index=None)``:

- ``logits`` and ``targets`` are ``[B, C]``; targets are floats in {0, 1} (soft targets are accepted where the
  formula allows them).
- ``mask`` (optional, broadcastable to ``[B, C]``, bool or float) marks the entries that count. Masked-out entries
  (``mask == 0``) contribute exactly zero to the value and to the gradient, whatever their target holds, so unknown
  labels may be encoded as ``-1`` or NaN. A float mask acts as a per-entry weight.
- ``index`` (optional ``[B]`` long) holds the samples' dataset indices. BCE, focal and ASL ignore it; it is part of
  the common signature so that the training engine can always pass it to losses that keep per-sample state (ROLE).

Reductions, chosen with ``reduction`` at construction:

- ``"mean"`` (default): the sum of the per-entry losses divided by the number of counted entries, i.e. by ``B * C``
  without a mask and by ``mask.sum()`` with one. This equals ``F.binary_cross_entropy_with_logits(...,
  reduction="mean")`` for BCE. An all-masked batch gives 0.
- ``"sum"``: the plain sum over batch and classes, which is what the ASL, AAM and OTX reference code return.
- ``"none"``: the ``[B, C]`` per-entry losses, with masked-out entries set to 0.

Losses compute in float32 (or float64 when given float64), even under autocast: half-precision logits are upcast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mlic.core.registry import Registry

REDUCTIONS = ("mean", "sum", "none")



def create_loss(name: str | MultiLabelLoss, **kwargs: Any) -> MultiLabelLoss:
    """Build the loss registered as `name`.

    Args:
        name: A registered loss name (see `list_losses`), or an already built module, which is returned unchanged.
        **kwargs: The loss's constructor arguments; `None` values are dropped so that the loss's default applies.

    Returns:
        The loss module.

    Raises:
        ValueError: If `name` is not registered; the message lists the valid names.
    """
    return LOSSES.create(name, **kwargs)


def list_losses() -> list[str]:
    """The registered loss names, sorted."""
    return LOSSES.list()


def check_reduction(reduction: str) -> str:
    """Return `reduction` if it is one of `REDUCTIONS`, else raise a ValueError naming the valid ones."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unknown reduction {reduction!r}. Available: {', '.join(REDUCTIONS)}")
    return reduction


def prepare_inputs(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Check shapes, upcast to at least float32 and neutralise the targets of masked-out entries.

    Args:
        logits: Raw scores, ``[B, C]``.
        targets: Labels of the same shape.
        mask: Optional entries that count, broadcastable to ``[B, C]``.

    Returns:
        ``(logits, targets)`` as floating tensors of dtype at least float32; targets of masked-out entries are 0, so
        a placeholder such as -1 or NaN there cannot reach the value or the gradient.

    Raises:
        ValueError: If the shapes of `logits`, `targets` and `mask` do not agree.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape [B, C], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    dtype = torch.promote_types(logits.dtype, torch.float32) if logits.is_floating_point() else torch.float32
    logits = logits.to(dtype)
    targets = targets.to(dtype)
    if mask is not None:
        keep = _broadcast_mask(mask, logits.shape) != 0
        targets = torch.where(keep, targets, torch.zeros_like(targets))
    return logits, targets


def reduce_loss(loss: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    """Apply `mask` to the per-entry `loss` and reduce it as described in this module's docstring.

    Args:
        loss: Per-entry losses, ``[B, C]``.
        mask: Optional entries that count (bool or float weights), broadcastable to `loss`.
        reduction: One of ``"mean"``, ``"sum"``, ``"none"``.

    Returns:
        A scalar, or ``[B, C]`` for ``"none"``.
    """
    if mask is None:
        if reduction == "mean":
            return loss.mean()
        return loss.sum() if reduction == "sum" else loss
    weight = _broadcast_mask(mask, loss.shape).to(loss.dtype)
    # `where`, not only a product: a non-finite value in a dropped entry must not leak as 0 * inf = NaN.
    loss = torch.where(weight != 0, loss * weight, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    # An all-masked batch has a zero numerator, so clamping the denominator yields 0 without a host sync.
    return loss.sum() / weight.sum().clamp_min(torch.finfo(loss.dtype).tiny)


def _broadcast_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    try:
        return torch.broadcast_to(mask, shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to logits {tuple(shape)}") from None


class MultiLabelLoss(nn.Module):
    """Base class holding the `reduction` of a multi-label loss; subclasses implement `forward`.

    The protocol the training engine relies on, declared here with its defaults:

    - `uses_observed`: the loss takes the *observed*-label matrix (1 / 0 / -1 for positive / unknown / negative) as
      its targets, not the true labels masked to the observed entries (the single-positive losses);
    - `lr_mult`: the loss's own parameters (ROLE's label estimator) train at `optim.lr × lr_mult`;
    - `bind(table)`: called once with the training split before training, for losses that need it (teacher logits
      aligned to its images, the expected number of positives, an estimator of one row per image).

    Args:
        reduction: ``"mean"`` (over counted entries), ``"sum"`` or ``"none"``; see the module docstring.
    """

    uses_observed: bool = False
    lr_mult: float = 1.0

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(  # pragma: no cover - abstract
        self, logits: Tensor, targets: Tensor, *, mask: Tensor | None = None, index: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError

    def bind(self, table: Any) -> None:
        """Learn what the loss needs from the training split `table` (a `LabelledImages`); nothing by default."""

    def reduce(self, loss: Tensor, mask: Tensor | None) -> Tensor:
        """Mask and reduce per-entry losses with this loss's `reduction`."""
        return reduce_loss(loss, mask, self.reduction)


LOSSES: Registry[MultiLabelLoss] = Registry("loss")
"""Losses by name: each a `MultiLabelLoss` factory (`create_loss`, `list_losses`)."""
