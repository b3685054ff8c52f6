"""`MultiLabelClassifier`: backbone → feature map (or tokens) → head → logits, with optional auxiliary outputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlic.models.backbones import create_backbone, feature_channels, num_prefix_tokens
from mlic.models.cuts import BackboneCut
from mlic.models.heads.registry import create_head


class MultiLabelClassifier(nn.Module):
    """A timm backbone and a registered head.

    `forward_features` strips ViT prefix tokens so heads always see spatial features; `forward_head` runs the head
    on precomputed features (the frozen-backbone path uses it on cached features). With a cut (`set_cut`, the
    config's `model.train_from`) the backbone's prefix is frozen and stays in eval mode whatever `train()` is
    called with; `forward_prefix` gives what the cache stores and `forward(x, from_cut=True)` continues from it.
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
        self.cut: BackboneCut | None = None
        #: timm's hierarchical transformers (Swin) return channels-last maps, declared by their `output_fmt`
        self.channels_last_features = getattr(backbone, "output_fmt", "NCHW") == "NHWC"

    def set_cut(self, train_from: str | None) -> None:
        """Freeze the backbone before the module `train_from` (None: no cut, everything trains)."""
        self.cut = None if train_from is None else BackboneCut(self.backbone, train_from)
        if self.cut is not None:
            self.cut.freeze()

    def train(self, mode: bool = True) -> MultiLabelClassifier:
        super().train(mode)
        if self.cut is not None:  # the cached prefix output stays what the prefix computes
            for module in self.cut.frozen_modules:
                module.eval()
        return self

    def _head_input(self, features: torch.Tensor) -> torch.Tensor:
        """The backbone's output as heads take it: Swin's NHWC maps permuted to NCHW, ViT prefix tokens dropped."""
        if features.dim() == 4 and self.channels_last_features:
            features = features.permute(0, 3, 1, 2)
        if features.dim() == 3 and self.prefix_tokens:
            features = features[:, self.prefix_tokens:]
        return features

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features: `[B, C, H, W]` for CNNs (and Swin's NHWC maps, permuted), `[B, N, C]` patch tokens for
        ViTs."""
        return self._head_input(self.backbone.forward_features(images))

    def forward_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen prefix's output (what a cut's cache stores); needs a cut."""
        if self.cut is None:
            raise ValueError("the model has no cut (model.train_from)")
        return self.cut.prefix(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from features."""
        return self.head(features)

    def features_from(self, inputs: torch.Tensor, *, from_features: bool = False, from_cut: bool = False
                      ) -> torch.Tensor:
        """Backbone features from images, from cached prefix outputs (`from_cut`) or as given (`from_features`)."""
        if from_features:
            return inputs
        if from_cut:
            if self.cut is None:
                raise ValueError("from_cut needs a cut (model.train_from)")
            return self._head_input(self.cut.suffix(inputs))
        return self.forward_features(inputs)

    def forward(self, inputs: torch.Tensor, *, from_features: bool = False, from_cut: bool = False,
                with_aux_loss: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits from images (or from backbone features with `from_features`, or from a cut's cached prefix
        output with `from_cut`).

        With `with_aux_loss` it returns `(logits, aux_losses)`, the head's weighted auxiliary losses for training.
        Every option goes through `forward` so that a `DistributedDataParallel` wrapper sees every training call.
        """
        features = self.features_from(inputs, from_features=from_features, from_cut=from_cut)
        if not with_aux_loss:
            return self.head(features)
        return self.head.forward_train(features)

    def forward_aux(self, images: torch.Tensor, *, from_cut: bool = False
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the head's auxiliary tensors (attention, gates, ...)."""
        return self.head.forward_aux(self.features_from(images, from_cut=from_cut))


def create_model(backbone: str, head: str, num_classes: int, *, pretrained: bool = True,
                 head_kwargs: dict[str, Any] | None = None, backbone_kwargs: dict[str, Any] | None = None,
                 train_from: str | None = None) -> MultiLabelClassifier:
    """Build a classifier from a timm backbone name and a registered head name.

    Args:
        backbone: timm model name; `efficientnet_lite0` has ImageNet weights offline.
        head: a name from `mlic.models.list_heads()`.
        num_classes: number of labels.
        pretrained: ImageNet weights for the backbone.
        head_kwargs: the head's own options.
        backbone_kwargs: extra `timm.create_model` options.
        train_from: a cut point of the backbone (`mlic.models.cuts.cut_points`, e.g. ``"blocks.5"``): the modules
            before it are frozen (`requires_grad=False`, eval mode); None trains everything.
    """
    net = create_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
    head_module = create_head(head, in_features=feature_channels(net), num_classes=num_classes, **(head_kwargs or {}))
    model = MultiLabelClassifier(net, head_module, num_classes=num_classes, backbone_name=backbone, head_name=head)
    model.set_cut(train_from)
    return model
