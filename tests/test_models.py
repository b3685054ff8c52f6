"""Backbones (offline ImageNet weights, hub failure offline), heads and the classifier."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from skimage import data as skdata

from mlic.core.io import load_checkpoint, save_checkpoint
from mlic.models import HEADS, OFFLINE_WEIGHTS, create_backbone, create_head, create_model, list_heads

# ImageNet class indices: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso, 968 cup, 504 coffee mug
CATS = {281, 282, 283, 284, 285}
COFFEE = {967, 968, 504}


def _imagenet_top3(model: torch.nn.Module, image: np.ndarray) -> set[int]:
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    cfg = timm.data.resolve_model_data_config(model)
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return set(model.eval()(x).topk(3).indices[0].tolist())


def test_offline_efficientnet_lite0_weights_classify_real_photos() -> None:
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(OFFLINE_WEIGHTS.get("efficientnet_lite0")(model))
    assert _imagenet_top3(model, skdata.chelsea()) & CATS  # scikit-image's photo of a tabby cat
    assert _imagenet_top3(model, skdata.coffee()) & COFFEE  # and of a cup of coffee
    random_init = timm.create_model("efficientnet_lite0", pretrained=False)
    assert not (_imagenet_top3(random_init, skdata.chelsea()) & CATS)


def test_create_backbone_loads_the_offline_weights_into_the_feature_extractor() -> None:
    backbone = create_backbone("efficientnet_lite0", pretrained=True)
    reference = timm.create_model("efficientnet_lite0", pretrained=False)
    reference.load_state_dict(OFFLINE_WEIGHTS.get("efficientnet_lite0")(reference))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval().forward_features(x), reference.eval().forward_features(x))


@pytest.mark.slow
def test_hub_weights_offline_fail_with_a_clear_message() -> None:
    code = ("import mlic.models as m\n"
            "try:\n    m.create_backbone('resnet18', pretrained=True)\n"
            "except m.backbones.WeightsUnavailableError as e:\n    print('CLEAR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "CLEAR" in out and "resnet18" in out and "timm/resnet18" in out and "pretrained=False" in out


def test_unknown_backbone_and_head_names_list_choices() -> None:
    with pytest.raises(ValueError, match="not a timm model"):
        create_backbone("no_such_net", pretrained=False)
    with pytest.raises(ValueError, match="gap"):
        create_head("no_such_head", in_features=8, num_classes=2)


@pytest.mark.parametrize("backbone,kwargs", [("test_efficientnet", {}), ("test_vit", {"img_size": 64})])
@pytest.mark.parametrize("head", list_heads())
def test_every_head_on_a_cnn_and_a_vit(backbone: str, kwargs: dict, head: str) -> None:
    model = create_model(backbone, head, 7, pretrained=False, backbone_kwargs=kwargs)
    images = torch.randn(2, 3, 64, 64, requires_grad=False)
    logits = model(images)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # gradients reach the backbone


def test_vit_prefix_tokens_are_removed_before_the_head() -> None:
    model = create_model("test_vit", "gap", 3, pretrained=False, backbone_kwargs={"img_size": 64})
    feats = model.forward_features(torch.randn(1, 3, 64, 64))
    grid = model.backbone.patch_embed.grid_size
    assert feats.shape[1] == grid[0] * grid[1]


def test_gap_head_is_mean_pool_then_linear() -> None:
    head = HEADS.create("gap", in_features=4, num_classes=3)
    feats = torch.randn(2, 4, 5, 5)
    expected = feats.mean(dim=(2, 3)) @ head.fc.weight.T + head.fc.bias
    torch.testing.assert_close(head(feats), expected)
    torch.testing.assert_close(head(feats.flatten(2).transpose(1, 2)), expected)  # token input, same answer


def test_model_round_trips_through_a_weights_only_checkpoint(tmp_path) -> None:
    model = create_model("test_efficientnet", "gap", 5, pretrained=False).eval()
    save_checkpoint(tmp_path / "m.pt", {"state_dict": model.state_dict(), "class_names": list("abcde")})
    restored = create_model("test_efficientnet", "gap", 5, pretrained=False).eval()
    restored.load_state_dict(load_checkpoint(tmp_path / "m.pt")["state_dict"])
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), restored(x))
