"""`MultiLabelClassifier`: backbone → feature map (or tokens) → head → logits, with optional auxiliary outputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlic.models.backbones import create_backbone, feature_channels, num_prefix_tokens
from mlic.models.heads.registry import create_head


class MultiLabelClassifier(nn.Module):
    """A timm backbone and a registered head.

    `forward_features` strips ViT prefix tokens so heads always see spatial features; `forward_head` runs the head
    on precomputed features (the frozen-backbone path uses it on cached features).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, num_classes: int, backbone_name: str = "",
                 head_name: str = "") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.backbone_name = backbone_name
        self.head_name = head_name
        self.prefix_tokens = num_prefix_tokens(backbone)
        #: timm's hierarchical transformers (Swin) return channels-last maps, declared by their `output_fmt`
        self.channels_last_features = getattr(backbone, "output_fmt", "NCHW") == "NHWC"

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features: `[B, C, H, W]` for CNNs (and Swin's NHWC maps, permuted), `[B, N, C]` patch tokens for
        ViTs."""
        features = self.backbone.forward_features(images)
        if features.dim() == 4 and self.channels_last_features:
            features = features.permute(0, 3, 1, 2)
        if features.dim() == 3 and self.prefix_tokens:
            features = features[:, self.prefix_tokens:]
        return features

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from features."""
        return self.head(features)

    def forward(self, inputs: torch.Tensor, *, from_features: bool = False, with_aux_loss: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits from images (or from backbone features with `from_features`).

        With `with_aux_loss` it returns `(logits, aux_losses)`, the head's weighted auxiliary losses for training.
        Both options go through `forward` so that a `DistributedDataParallel` wrapper sees every training call.
        """
        features = inputs if from_features else self.forward_features(inputs)
        if not with_aux_loss:
            return self.head(features)
        return self.head.forward_train(features)

    def forward_aux(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the head's auxiliary tensors (attention, gates, ...)."""
        return self.head.forward_aux(self.forward_features(images))


def create_model(backbone: str, head: str, num_classes: int, *, pretrained: bool = True,
                 head_kwargs: dict[str, Any] | None = None, backbone_kwargs: dict[str, Any] | None = None
                 ) -> MultiLabelClassifier:
    """Build a classifier from a timm backbone name and a registered head name.

    Args:
        backbone: timm model name; `efficientnet_lite0` has ImageNet weights offline.
        head: a name from `mlic.models.list_heads()`.
        num_classes: number of labels.
        pretrained: ImageNet weights for the backbone.
        head_kwargs: the head's own options.
        backbone_kwargs: extra `timm.create_model` options.
    """
    net = create_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
    head_module = create_head(head, in_features=feature_channels(net), num_classes=num_classes, **(head_kwargs or {}))
    return MultiLabelClassifier(net, head_module, num_classes=num_classes, backbone_name=backbone, head_name=head)
