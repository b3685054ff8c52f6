"""Head-native maps (`HEAD_MAPS`): what a head itself says about where a label is, scaled like pytorch-grad-cam's
maps so every explanation compares alike.

- ``attention``: the last decoder layer's cross-attention of the label's query (ML-Decoder, Query2Label, the MoE
  heads, and graph re-weighting over ML-Decoder);
- ``graph_cam``: for graph re-weighting with a linear decoder, the class activation map of the re-weighted features
  (`Σ_f W[c, f] · w_f · f(x, y)`, `w` the graph's channel weights).

Whether a map applies to a model is read from what its head declares (`Head.explained_aux`), not probed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam.utils.image import scale_cam_image
from torch import nn

from mlic.core.registry import Registry
from mlic.explain.cams import CAM_METHODS, CamResult, _as_pairs, _modes_restored, patch_grid
from mlic.models.heads.gat_reweight import PooledLinear

HEAD_MAPS: Registry[tuple[torch.Tensor, torch.Tensor]] = Registry("head-native map")
"""Head-native maps by name: `fn(model, inputs, labels) -> (raw maps [P, h, w] before scaling, logits)`; a
ValueError when the model's head has no such map."""

#: whether each head-native map applies to a model, from what its head declares
APPLIES: dict[str, Callable[[Any], bool]] = {
    "attention": lambda model: {"attention", "query_of_class"} <= set(model.head.explained_aux),
    "graph_cam": lambda model: ("channel_weights" in model.head.explained_aux
                                and isinstance(model.head.decoder, PooledLinear)),
}


def list_methods() -> list[str]:
    """Every map name: the pytorch-grad-cam methods, then the head-native maps."""
    return [*CAM_METHODS.list(), *HEAD_MAPS.list()]


def method_kind(method: str) -> str:
    """`cam` (pytorch-grad-cam) or `head` (head-native) for a map name; a ValueError listing the names."""
    if method in CAM_METHODS:
        return "cam"
    if method in HEAD_MAPS:
        return "head"
    raise ValueError(f"Unknown CAM method {method!r}. Available: {', '.join(list_methods())}")


def head_maps(model: nn.Module, inputs: torch.Tensor, pairs: Any, *, method: str = "attention",
              batch_size: int = 32) -> CamResult:
    """Head-native maps (`HEAD_MAPS`) for (row of `inputs`, label column) pairs, scaled like pytorch-grad-cam's."""
    pairs = _as_pairs(pairs)
    fn = HEAD_MAPS.get(method)
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    maps = np.zeros((len(pairs), *size), dtype=np.float32)
    scores = np.zeros(len(pairs), dtype=np.float32)
    device = next(model.parameters()).device
    with _modes_restored(model), torch.no_grad():
        model.eval()
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            batch = inputs[torch.as_tensor(chunk[:, 0])].to(device)
            labels = torch.as_tensor(chunk[:, 1], device=device)
            raw, logits = fn(model, batch, labels)
            grid = raw.float().cpu().numpy()
            maps[start:start + len(chunk)] = scale_cam_image(np.maximum(grid, 0), (size[1], size[0]))
            scores[start:start + len(chunk)] = torch.sigmoid(
                logits.float()[torch.arange(len(chunk), device=device), labels]).cpu().numpy()
    return CamResult(maps, pairs, scores, method)


def _grid_maps(model: nn.Module, maps: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """`[B, N]` per-token values → `[B, h, w]` on the model's patch grid (a `[B, h, w]` map passes through)."""
    if maps.dim() == 3:
        return maps
    return maps.reshape(maps.shape[0], *patch_grid(model, input_hw, int(maps.shape[1])))


@HEAD_MAPS.register("attention")
def _attention(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention of the label's query in the head's last decoder layer, averaged over heads (ML-Decoder:
    the label's group query; Query2Label: the label's own query)."""
    if not APPLIES["attention"](model):
        raise ValueError(f"head {type(model.head).__name__} has no per-label cross-attention")
    logits, aux = model.forward_aux(inputs)
    query = aux["query_of_class"].to(labels.device)[labels]
    attention = aux["attention"][torch.arange(len(labels), device=labels.device), query]
    return _grid_maps(model, attention, (int(inputs.shape[-2]), int(inputs.shape[-1]))), logits


@HEAD_MAPS.register("graph_cam")
def _graph_cam(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Graph re-weighting with a linear decoder: `Σ_f W[c, f] · w_f · f(x, y)`, the class activation map of the
    features re-weighted by the graph branch's channel weights `w`."""
    head = model.head
    if not APPLIES["graph_cam"](model):
        raise ValueError(f"head {type(head).__name__} is not graph re-weighting with a linear decoder")
    fc = head.decoder.fc
    features = model.forward_features(inputs)
    logits, aux = model.head.forward_aux(features)
    weighted = fc.weight[labels] * aux["channel_weights"].to(fc.weight.dtype)  # [P, F]
    if features.dim() == 4:
        raw = torch.einsum("pf,pfhw->phw", weighted, features.float())
    else:
        raw = _grid_maps(model, torch.einsum("pf,pnf->pn", weighted, features.float()),
                         (int(inputs.shape[-2]), int(inputs.shape[-1])))
    return raw, logits


def available_methods(model: nn.Module, image_size: int = 64) -> list[str]:
    """The map names that apply to `model`: every pytorch-grad-cam method, and the head-native maps its head
    declares (`APPLIES`). `image_size` is unused: the answer does not depend on the input."""
    return [*CAM_METHODS.list(), *(name for name in HEAD_MAPS.list() if APPLIES[name](model))]
