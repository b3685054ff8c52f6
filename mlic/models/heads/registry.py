"""The head registry and the small contract every head keeps.

A head maps backbone features to logits `[B, num_classes]`. Features arrive as a CNN map `[B, C, H, W]` or as ViT
patch tokens `[B, N, C]` (prefix tokens already removed). Heads with tensors worth plotting (attention, gates, graph
weights) return them from `forward_aux` as a dict; heads with an auxiliary training loss return it from
`forward_train`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlic.registry import Registry

HEADS: Registry[nn.Module] = Registry("head")


class Head(nn.Module):
    """Base class: `forward(features) -> logits`; `forward_aux` adds a dict of auxiliary tensors."""

    #: keys of `forward_aux` that the engine saves beside the scores in `predictions/<split>.npz` (as `aux_<key>`)
    recorded_aux: tuple[str, ...] = ()

    def forward_aux(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the head's auxiliary tensors (none for plain heads)."""
        return self(features), {}

    def forward_train(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the head's own weighted auxiliary losses (e.g. MoE load balancing), which the engine adds to
        the training loss; none for plain heads."""
        return self(features), {}


def as_tokens(features: torch.Tensor) -> torch.Tensor:
    """`[B, C, H, W]` map → `[B, H·W, C]` tokens; `[B, N, C]` tokens pass through."""
    if features.dim() == 4:
        return features.flatten(2).transpose(1, 2)
    if features.dim() == 3:
        return features
    raise ValueError(f"expected features [B, C, H, W] or [B, N, C], got shape {tuple(features.shape)}")


def create_head(name: str, *, in_features: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the head registered as `name` for `in_features` input channels and `num_classes` outputs."""
    return HEADS.create(name, in_features=in_features, num_classes=num_classes, **kwargs)


def list_heads() -> list[str]:
    """Names of the registered heads."""
    return HEADS.list()
