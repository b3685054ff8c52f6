"""Backbone cuts: run a timm backbone as a frozen prefix and a trainable suffix (`model.train_from`).

A study on a CPU cannot train a whole network per seed and method, and a head on frozen features (a linear probe)
leaves the labels no shared weights to train, so methods whose mechanism lives in shared features (CPSD's
distillation, MoE routing) cannot act. A cut at a module of the backbone's main sequence keeps everything before it
frozen — its output is computed once and cached — and trains the rest of the backbone and the head.

Each supported family lists the steps of its `forward_features` in order (`FAMILIES`); the cut points are the stage
modules of that sequence (``blocks.N``, ``layerN``, ``stages.N``). Frozen modules stay in eval mode (their
BatchNorm statistics do not move), so the cached prefix output is exactly what the prefix computes at any time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

Step = tuple[str, Callable[[torch.Tensor], torch.Tensor]]


def _modules(backbone: nn.Module, names: list[str]) -> list[Step]:
    return [(name, backbone.get_submodule(name)) for name in names]


def _indexed(backbone: nn.Module, container: str) -> list[str]:
    return [f"{container}.{i}" for i in range(len(backbone.get_submodule(container)))]


def _efficientnet(backbone: nn.Module) -> list[Step]:
    return _modules(backbone, ["conv_stem", "bn1", *_indexed(backbone, "blocks"), "conv_head", "bn2"])


def _mobilenetv3(backbone: nn.Module) -> list[Step]:
    return _modules(backbone, ["conv_stem", "bn1", *_indexed(backbone, "blocks")])


def _resnet(backbone: nn.Module) -> list[Step]:
    return _modules(backbone, ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"])


def _convnext(backbone: nn.Module) -> list[Step]:
    return _modules(backbone, ["stem", *_indexed(backbone, "stages"), "norm_pre"])


def _vit(backbone: nn.Module) -> list[Step]:
    steps: list[Step] = [("patch_embed", backbone.patch_embed), ("pos_embed", backbone._pos_embed)]
    return steps + _modules(backbone, ["patch_drop", "norm_pre", *_indexed(backbone, "blocks"), "norm"])


#: timm class name → (steps of its `forward_features`, prefixes of the step names that are cut points)
FAMILIES: dict[str, tuple[Callable[[nn.Module], list[Step]], tuple[str, ...]]] = {
    "EfficientNet": (_efficientnet, ("blocks.",)),
    "MobileNetV3": (_mobilenetv3, ("blocks.",)),
    "ResNet": (_resnet, ("layer",)),
    "ConvNeXt": (_convnext, ("stages.",)),
    "VisionTransformer": (_vit, ("blocks.",)),
}


def _family(backbone: nn.Module) -> tuple[Callable[[nn.Module], list[Step]], tuple[str, ...]]:
    for cls in type(backbone).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise ValueError(f"model.train_from: a {type(backbone).__name__} backbone cannot be cut; supported families: "
                     f"{', '.join(FAMILIES)} (or use model.freeze_backbone for head-only training)")


def cut_points(backbone: nn.Module) -> list[str]:
    """The module names `train_from` accepts for `backbone`, in forward order."""
    steps, prefixes = _family(backbone)
    return [name for name, _ in steps(backbone) if name.startswith(prefixes)]


@dataclass
class BackboneCut:
    """`backbone` split at `train_from`: `prefix` (frozen, cached) and `suffix` (trained), in forward order."""

    backbone: nn.Module
    train_from: str
    prefix_steps: list[Step] = field(init=False)
    suffix_steps: list[Step] = field(init=False)

    def __post_init__(self) -> None:
        points = cut_points(self.backbone)
        if self.train_from not in points:
            raise ValueError(f"model.train_from {self.train_from!r} is not a cut point of this "
                             f"{type(self.backbone).__name__}; choose from {', '.join(points)}")
        steps, _ = _family(self.backbone)
        all_steps = steps(self.backbone)
        at = [name for name, _ in all_steps].index(self.train_from)
        self.prefix_steps, self.suffix_steps = all_steps[:at], all_steps[at:]

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """The prefix's modules (the ViT position embedding is a method: its parameters are frozen separately)."""
        return [step for _, step in self.prefix_steps if isinstance(step, nn.Module)]

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Every parameter the prefix reads (for ViTs also the class token and position embedding)."""
        params = [p for module in self.frozen_modules for p in module.parameters()]
        if any(name == "pos_embed" for name, _ in self.prefix_steps):
            params += [p for name, p in self.backbone.named_parameters(recurse=False)]
        return params

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The tensors (parameters and buffers) the prefix computes with, by name: all that its output depends on,
        so that a model trained from the cut keys the same cached prefix outputs as the one it started from."""
        state: dict[str, torch.Tensor] = {}
        for name, step in self.prefix_steps:
            if isinstance(step, nn.Module):
                state.update({f"{name}.{key}": value for key, value in step.state_dict().items()})
        if any(name == "pos_embed" for name, _ in self.prefix_steps):
            state.update({name: p for name, p in self.backbone.named_parameters(recurse=False)})
        return state

    def freeze(self) -> None:
        """Stop the prefix's parameters from training and keep its modules in eval mode."""
        for p in self.frozen_parameters():
            p.requires_grad_(False)
        for module in self.frozen_modules:
            module.eval()

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen part's output: what the feature cache stores."""
        x = images
        for _, step in self.prefix_steps:
            x = step(x)
        return x

    def suffix(self, x: torch.Tensor) -> torch.Tensor:
        """The trained part: from the cached prefix output to the backbone's features."""
        for _, step in self.suffix_steps:
            x = step(x)
        return x
