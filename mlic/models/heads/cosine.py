"""`CosineLinear`: a classifier on the unit hypersphere, `scale · cos(feature, class weight)`.

Metric-learning heads (the AAM paper, seed 002) normalise both the feature and each class weight; the AAM loss then
reads cosθ = logit / scale. Weight initialisation follows deep-object-reid's `AngleSimpleLinear` (normal, each
class vector renormalised to unit length). No bias: a bias would move logits off the cosine range.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CosineLinear(nn.Module):
    """`[B, in_features]` → `[B, out_features]` logits `scale · cosθ`, each in [−scale, scale]."""

    def __init__(self, in_features: int, out_features: int, *, scale: float = 1.0) -> None:
        super().__init__()
        # unit-norm class vectors, as the reference's renorm: the weights' scale sets SGD's effective step size
        self.weight = nn.Parameter(F.normalize(torch.randn(out_features, in_features), dim=1))
        self.scale = float(scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.scale * cos.clamp(-1.0, 1.0)


def classifier(in_features: int, num_classes: int, *, cosine: bool = False, scale: float = 1.0) -> nn.Module:
    """A linear layer, or a cosine classifier when `cosine` (the heads' `cosine` option)."""
    if cosine:
        return CosineLinear(in_features, num_classes, scale=scale)
    return nn.Linear(in_features, num_classes)
