"""Exponential moving average of the model, as in every reference recipe (decay 0.9997, all state-dict entries,
batch-norm buffers included, updated after each optimiser step). A thin wrapper over timm's `ModelEmaV3`."""

from __future__ import annotations

from timm.utils import ModelEmaV3
from torch import nn


def create_ema(model: nn.Module, decay: float, *, warmup: bool = False) -> ModelEmaV3:
    """An EMA copy of `model`.

    Args:
        decay: per-step decay (0.9997 in ASL / ML-Decoder / Q2L / CPSD; "0.9997^641 = 0.82").
        warmup: timm's decay warm-up (decay grows from 0 over the first steps). Off in the references; useful for
            short runs where a 0.9997 average would still be mostly the initial weights.
    """
    return ModelEmaV3(model, decay=decay, use_warmup=warmup)
