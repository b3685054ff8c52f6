"""The head registry and the small contract every head keeps.

A head maps backbone features to logits `[B, num_classes]`. Features arrive as a CNN map `[B, C, H, W]` or as ViT
patch tokens `[B, N, C]` (prefix tokens already removed). Heads with tensors worth plotting (attention, gates, graph
weights) return them from `forward_aux` as a dict; heads with an auxiliary training loss return it from
`forward_train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mlic.core.registry import Registry


class Head(nn.Module):
    """Base class: `forward(features) -> logits`; `forward_aux` adds a dict of auxiliary tensors.

    The protocol the engine and the explainers rely on, declared here with its defaults: `bind` (the training
    labels, for heads that learn a label graph or label groups from them), `recorded_aux` (outputs the engine saves
    with the predictions) and `explained_aux` (outputs the explainers draw).
    """

    #: keys of `forward_aux` that the engine saves beside the scores in `predictions/<split>.npz` (as `aux_<key>`)
    recorded_aux: tuple[str, ...] = ()
    #: keys of `forward_aux` that `mlic.explain` reads: ``attention`` and ``query_of_class`` (per-label cross-
    #: attention), ``channel_weights`` (graph re-weighting), ``classifiers`` (graph-generated classifiers)
    explained_aux: tuple[str, ...] = ()

    def bind(self, labels: np.ndarray, class_names: Sequence[str]) -> None:
        """Learn what the head needs from the training labels `[N, C]` (e.g. a label graph); nothing by default."""

    def forward_aux(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the head's auxiliary tensors (none for plain heads)."""
        return self(features), {}

    def forward_train(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the head's own weighted auxiliary losses (e.g. MoE load balancing), which the engine adds to
        the training loss; none for plain heads."""
        return self(features), {}


HEADS: Registry[Head] = Registry("head")
"""Heads by name: each a `Head` factory taking `in_features`, `num_classes` and its own options."""


def as_tokens(features: torch.Tensor) -> torch.Tensor:
    """`[B, C, H, W]` map → `[B, H·W, C]` tokens; `[B, N, C]` tokens pass through."""
    if features.dim() == 4:
        return features.flatten(2).transpose(1, 2)
    if features.dim() == 3:
        return features
    raise ValueError(f"expected features [B, C, H, W] or [B, N, C], got shape {tuple(features.shape)}")


def create_head(name: str, *, in_features: int, num_classes: int, **kwargs: Any) -> Head:
    """Build the head registered as `name` for `in_features` input channels and `num_classes` outputs."""
    return HEADS.create(name, in_features=in_features, num_classes=num_classes, **kwargs)


def list_heads() -> list[str]:
    """Names of the registered heads."""
    return HEADS.list()
