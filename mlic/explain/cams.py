"""Class activation maps of (image × label) targets through pytorch-grad-cam (`jacobgil/pytorch-grad-cam`), never
re-implemented here: `CAM_METHODS` maps a name (`gradcam`, `gradcam++`, `scorecam`, `eigencam`, `layercam`, ...) to
its class. What this module adds around it:

- **Targets are explicit pairs** `[P, 2]` of (image, label); they are batched, each pair its own row of the batch with
  a `ClassifierOutputTarget` on its label, so one call explains many labels of many images.
- **The target layer** defaults to the backbone's last feature stage by name (timm's `feature_info[-1]["module"]`);
  an int picks another `feature_info` stage, a string any sub-module (``"backbone.bn2"``). ViT tokens are reshaped to
  their patch grid, computed from the model and the input size (`patch_embed.dynamic_feat_size`), prefix tokens
  dropped; channels-last maps (Swin) are permuted.
- Every map has pytorch-grad-cam's convention: `[0, 1]`, min–max scaled per map, at the network's input resolution.

A model's train/eval mode (every sub-module's) is restored after each call; pytorch-grad-cam puts it in eval mode.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from mlic.core.registry import Registry

# ---------------------------------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------------------------------
CAM_METHODS: Registry[Any] = Registry("CAM method")
"""pytorch-grad-cam classes by name; `CAM_METHODS.get(name)` is the class itself."""

for _name, _cls in {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM, "eigencam": EigenCAM,
                    "layercam": LayerCAM, "xgradcam": XGradCAM, "hirescam": HiResCAM, "eigengradcam": EigenGradCAM,
                    "gradcam_elementwise": GradCAMElementWise}.items():
    CAM_METHODS.register(_name)(_cls)

_QUIET_METHODS = frozenset({"scorecam"})  # pytorch-grad-cam draws a tqdm bar per target for these



# ---------------------------------------------------------------------------------------------------------------------
# Target layer and reshape
# ---------------------------------------------------------------------------------------------------------------------
def resolve_target_layer(model: nn.Module, layer: str | int | None = None) -> tuple[str, nn.Module]:
    """The layer CAMs hook: `(qualified name, module)` inside `model`.

    Args:
        model: a `MultiLabelClassifier` (its `backbone` has timm's `feature_info`) or any module.
        layer: `None` → the backbone's last feature stage (`feature_info[-1]["module"]`); an int → that
            `feature_info` stage (e.g. -2 for the stride-16 stage: twice the map resolution); a string → the
            sub-module of that name in `model` (or, failing that, in `model.backbone`).
    """
    backbone = getattr(model, "backbone", model)
    prefix = "backbone." if backbone is not model else ""
    if layer is None or isinstance(layer, int):
        info = getattr(backbone, "feature_info", None)
        if info is None:
            raise ValueError("the backbone has no timm feature_info; name the target layer explicitly")
        stages = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        index = -1 if layer is None else layer
        try:
            name = str(stages[index]["module"])
        except IndexError:
            raise ValueError(f"feature_info has {len(stages)} stages, no stage {index}") from None
        return prefix + name, backbone.get_submodule(name)
    for base, pre in ((model, ""), (backbone, prefix)):
        try:
            return pre + layer, base.get_submodule(layer)
        except AttributeError:
            continue
    names = [n for n, _ in model.named_modules() if n][:12]
    raise ValueError(f"no sub-module {layer!r} in the model (e.g. {', '.join(names)}, ...)")


def patch_grid(model: nn.Module, input_hw: tuple[int, int], tokens: int) -> tuple[int, int]:
    """(h, w) of `tokens` patch tokens: the grid the model's `patch_embed` makes of an `input_hw` input when it has
    that many cells, else a square grid."""
    backbone = getattr(model, "backbone", model)
    patch_embed = getattr(backbone, "patch_embed", None)
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        h, w = (int(v) for v in patch_embed.dynamic_feat_size(tuple(input_hw)))
        if h * w == tokens:
            return h, w
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens fill neither the model's patch grid nor a square")
    return side, side


def token_reshape(model: nn.Module, input_hw: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's `reshape_transform` for `model` at input size `input_hw`: activations → `[B, C, h, w]`.

    ViT tokens `[B, prefix + h·w, C]` lose their prefix (class, register) tokens and take the patch grid that the
    model's `patch_embed` gives for this input size (`patch_grid`); channels-last maps `[B, h, w, C]` (Swin) are
    permuted; CNN maps pass through. The grid is computed, never assumed (no fixed 14 × 14).
    """
    backbone = getattr(model, "backbone", model)
    prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
    width = int(getattr(backbone, "num_features", 0) or 0)

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 3:
            tokens = tensor[:, prefix:] if prefix and tensor.shape[1] > prefix else tensor
            h, w = patch_grid(model, input_hw, int(tokens.shape[1]))
            return tokens.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)
        if tensor.dim() == 4 and width and tensor.shape[-1] == width and tensor.shape[1] != width:
            return tensor.permute(0, 3, 1, 2)
        return tensor

    return reshape


@contextlib.contextmanager
def _gradients_from(model: nn.Module, layer: nn.Module, enabled: bool = True) -> Iterator[None]:
    """While a gradient CAM runs: backpropagate from the output down to `layer` only, and leave no `.grad` behind.

    The model's parameters stop requiring gradients and the layer's output becomes a leaf that requires them (a
    forward hook put before pytorch-grad-cam's own, so that its hooks see the leaf). The gradient at the layer is the
    one a full backward pass gives, at a fraction of the cost, and a frozen backbone needs no special case.
    """
    if not enabled:
        yield
        return
    flags = {p: p.requires_grad for p in model.parameters()}

    def leaf(_module: nn.Module, _args: Any, output: Any) -> Any:
        return output.detach().requires_grad_(True) if isinstance(output, torch.Tensor) else output

    handle = layer.register_forward_hook(leaf, prepend=True)
    try:
        for p in flags:
            p.requires_grad_(False)
        yield
    finally:
        handle.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)


@contextlib.contextmanager
def _modes_restored(model: nn.Module) -> Iterator[None]:
    """Restore every sub-module's train/eval flag on exit (pytorch-grad-cam calls `model.eval()`)."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


# ---------------------------------------------------------------------------------------------------------------------
# CAMs of one model
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class CamResult:
    """Maps of (image, label) pairs.

    Attributes:
        maps: `[P, H, W]` float32 in [0, 1] at the network's input resolution (pytorch-grad-cam's convention).
        pairs: `[P, 2]` (image, label) — image rows of the table (or of the input batch), global label columns.
        scores: `[P]` sigmoid score of the pair's label from the same forward pass.
        method: the method's name.
        layer: the hooked layer's name (`""` for head-native maps).
    """

    maps: np.ndarray
    pairs: np.ndarray
    scores: np.ndarray
    method: str
    layer: str = ""


def _as_pairs(pairs: Any) -> np.ndarray:
    out = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return out


def compute_cams(model: nn.Module, inputs: torch.Tensor, pairs: Any, *, method: str = "gradcam",
                 target_layer: str | int | None = None, batch_size: int = 32) -> CamResult:
    """pytorch-grad-cam maps of `model` for (row of `inputs`, output column) pairs, `batch_size` pairs per pass.

    Each pair is one row of the batch with a `ClassifierOutputTarget` on its label, the call pytorch-grad-cam's README
    shows. Gradient methods backpropagate only from the logits down to the layer (`_gradients_from`: same gradient,
    far less work, no `.grad` left on the model); a batch of one pair is run as two identical rows, which works
    around a torch CPU bug (eval-mode BatchNorm backward is wrong for a batch of one when the incoming gradient is
    channels-last strided, as the heads' token view makes it).

    Args:
        model: a classifier returning logits `[B, C]`.
        inputs: network inputs `[N, 3, H, W]` (normalised as the model expects).
        pairs: `[P, 2]` (row of `inputs`, label column of the logits).
        method: a `CAM_METHODS` name.
        target_layer: see `resolve_target_layer`.
        batch_size: pairs per forward/backward pass (Score-CAM also runs its masked inputs in batches this big).
    """
    pairs = _as_pairs(pairs)
    cls = CAM_METHODS.get(method)
    layer_name, layer = resolve_target_layer(model, target_layer)
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    maps = np.zeros((len(pairs), *size), dtype=np.float32)
    scores = np.zeros(len(pairs), dtype=np.float32)
    if not len(pairs):
        return CamResult(maps, pairs, scores, method, layer_name)
    device = next(model.parameters()).device
    with _modes_restored(model), torch.enable_grad():
        cam = cls(model=model, target_layers=[layer], reshape_transform=token_reshape(model, size))
        cam.batch_size = batch_size  # Score-CAM's masked-input batch
        quiet = method in _QUIET_METHODS
        try:
            with _gradients_from(model, layer, cam.uses_gradients):
                for start in range(0, len(pairs), batch_size):
                    chunk = pairs[start:start + batch_size]
                    n = len(chunk)
                    # A batch of one is run twice over: torch's CPU eval-mode BatchNorm backward returns wrong input
                    # gradients for a batch of one when the incoming gradient is channels-last strided (which the
                    # heads' token view makes it); rows are independent in eval mode, so the copy changes nothing.
                    run = np.repeat(chunk, 2, axis=0) if n == 1 else chunk
                    batch = inputs[torch.as_tensor(run[:, 0])].to(device)
                    targets = [ClassifierOutputTarget(int(c)) for c in run[:, 1]]
                    with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
                        maps[start:start + n] = cam(input_tensor=batch, targets=targets)[:n]
                    logits = cam.outputs.detach().float()[:n]
                    scores[start:start + n] = torch.sigmoid(
                        logits[torch.arange(n), torch.as_tensor(chunk[:, 1])]).cpu().numpy()
        finally:
            cam.activations_and_grads.release()
    return CamResult(maps, pairs, scores, method, layer_name)


