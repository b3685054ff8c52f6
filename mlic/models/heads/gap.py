"""`gap`: global average pooling then one linear layer — the baseline every MLIC paper starts from."""

from __future__ import annotations

import torch
from torch import nn

from mlic.models.heads.cosine import classifier
from mlic.models.heads.registry import HEADS, Head, as_tokens


@HEADS.register("gap")
class GapHead(Head):
    """Mean over spatial positions (or tokens), optional dropout, then `Linear(in_features, num_classes)`.

    `cosine=True` makes the classifier a `CosineLinear` with logits `scale · cosθ` (for the AAM loss).
    """

    def __init__(self, in_features: int, num_classes: int, *, dropout: float = 0.0, cosine: bool = False,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = classifier(in_features, num_classes, cosine=cosine, scale=scale)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """`[B, C]` pooled features."""
        return as_tokens(features).mean(dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(features)))
