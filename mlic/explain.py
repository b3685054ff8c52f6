"""Explanations: class activation maps for (image × label) targets, scored against the objects' boxes.

CAMs come from pytorch-grad-cam (`jacobgil/pytorch-grad-cam`), never re-implemented here: `CAM_METHODS` maps a name
(`gradcam`, `gradcam++`, `scorecam`, `eigencam`, `layercam`, ...) to its class. What this module adds around it:

- **Targets are explicit pairs** `[P, 2]` of (image, label); they are batched, each pair its own row of the batch with
  a `ClassifierOutputTarget` on its label, so one call explains many labels of many images.
- **The target layer** defaults to the backbone's last feature stage by name (timm's `feature_info[-1]["module"]`);
  an int picks another `feature_info` stage, a string any sub-module (``"backbone.bn2"``). ViT tokens are reshaped to
  their patch grid, computed from the model and the input size (`patch_embed.dynamic_feat_size`), prefix tokens
  dropped; channels-last maps (Swin) are permuted.
- **Head-native maps** (`HEAD_MAPS`): the last decoder layer's cross-attention of the label's query (ML-Decoder,
  Query2Label, and graph re-weighting over ML-Decoder), and for graph re-weighting with a linear decoder the class
  activation map of the re-weighted features (`Σ_f W[c, f] · w_f · f(x, y)`, `w` the graph's channel weights).
  They go through pytorch-grad-cam's `scale_cam_image`, so every map has the same convention: `[0, 1]`, min–max
  scaled per map, at the network's input resolution (a square of side `image_size`, the squish resize).
- **Models made of parts**: a CPSD teacher family (one run per label part) is explained label by label with the part
  that owns the label (`ExplainedModel`); a single run is the one-part case.
- **Scores against the truth** on data with boxes (Scenes, COCO): for each (image, positive label) the *pointing game*
  (is the map's maximum inside a box of that label?) and *energy* (the map's share inside those boxes), and — the
  quantitative form of CPSD's Figure 1 — *companion energy*: the share on the boxes of the image's **other** labels
  (outside the label's own boxes). `area` and `companion_area` are what a uniform map scores: the chance levels.

A model's train/eval mode (every sub-module's) is restored after each call; pytorch-grad-cam puts it in eval mode.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from mlic.config import DataConfig, RunConfig
from mlic.data.table import LabelledImages
from mlic.registry import Registry

log = logging.getLogger(__name__)

__all__ = [
    "CAM_METHODS", "HEAD_MAPS", "CamResult", "ExplainedModel", "list_methods", "available_methods",
    "resolve_target_layer", "patch_grid", "token_reshape", "compute_cams", "head_maps", "load_explained", "cpsd_models",
    "find_runs", "positive_pairs", "sample_rows", "box_masks", "image_sizes", "pointing_game", "random_maps",
    "summarize_pointing", "per_label_pointing", "score_models", "pointing_metrics", "pick_figure_pairs",
    "disagreements", "comparison_examples", "gather_runs",
]

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


HEAD_MAPS: Registry[tuple[torch.Tensor, torch.Tensor]] = Registry("head-native map")
"""Head-native maps by name: `fn(model, inputs, labels) -> (raw maps [P, h, w] before scaling, logits)`; a
ValueError when the model's head has no such map."""


def list_methods() -> list[str]:
    """Every map name: the pytorch-grad-cam methods, then the head-native maps."""
    return [*CAM_METHODS.list(), *HEAD_MAPS.list()]


def _method_kind(method: str) -> str:
    if method in CAM_METHODS:
        return "cam"
    if method in HEAD_MAPS:
        return "head"
    raise ValueError(f"Unknown CAM method {method!r}. Available: {', '.join(list_methods())}")


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
    logits, aux = model.forward_aux(inputs)
    if "attention" not in aux or "query_of_class" not in aux:
        raise ValueError(f"head {type(model.head).__name__} has no per-label cross-attention")
    query = aux["query_of_class"].to(labels.device)[labels]
    attention = aux["attention"][torch.arange(len(labels), device=labels.device), query]
    return _grid_maps(model, attention, (int(inputs.shape[-2]), int(inputs.shape[-1]))), logits


@HEAD_MAPS.register("graph_cam")
def _graph_cam(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Graph re-weighting with a linear decoder: `Σ_f W[c, f] · w_f · f(x, y)`, the class activation map of the
    features re-weighted by the graph branch's channel weights `w`."""
    head = model.head
    fc = getattr(getattr(head, "decoder", None), "fc", None)
    if not hasattr(head, "channel_weights") or not isinstance(fc, nn.Linear):
        raise ValueError(f"head {type(head).__name__} is not graph re-weighting with a linear decoder")
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
    """The map names that apply to `model`: every pytorch-grad-cam method, and the head-native maps its head has."""
    device = next(model.parameters()).device
    probe = torch.zeros(1, 3, image_size, image_size, device=device)
    native = []
    with _modes_restored(model), torch.no_grad():
        model.eval()
        for name in HEAD_MAPS.list():
            try:
                HEAD_MAPS.get(name)(model, probe, torch.zeros(1, dtype=torch.long, device=device))
            except (ValueError, AttributeError, KeyError):
                continue
            native.append(name)
    return [*CAM_METHODS.list(), *native]


# ---------------------------------------------------------------------------------------------------------------------
# Models as runs: one run, or a family of part runs (CPSD teachers)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class ExplainedModel:
    """A model to explain, made of one or more parts, each predicting some of the global labels.

    Attributes:
        name: display name.
        parts: `(model, columns)` pairs: a classifier and the global label column of each of its outputs.
        class_names: the global label names.
        data: the data config of the full label set (image size, normalisation, dataset, options).
        mean, std: the backbone's normalisation (timm's data config).
        source: the run folder (or checkpoint, or teacher-family folder) it came from.
    """

    name: str
    parts: list[tuple[nn.Module, np.ndarray]]
    class_names: list[str]
    data: DataConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: Path | None = None
    config: RunConfig | None = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        return int(self.data.image_size)

    @property
    def model(self) -> nn.Module:
        """The first (for a single run: the only) part's classifier."""
        return self.parts[0][0]

    def route(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Part index and local output column of each global label (-1 where no part predicts it)."""
        part = np.full(len(self.class_names), -1, dtype=np.int64)
        local = np.full(len(self.class_names), -1, dtype=np.int64)
        for p, (_, columns) in enumerate(self.parts):
            part[columns] = p
            local[columns] = np.arange(len(columns))
        labels = np.asarray(labels, dtype=np.int64)
        return part[labels], local[labels]

    def inputs(self, table: LabelledImages, rows: Sequence[int]) -> tuple[torch.Tensor, np.ndarray]:
        """Network inputs `[n, 3, S, S]` and displayable images `[n, S, S, 3]` of `rows` (evaluation transform)."""
        from mlic.compare import load_images

        return load_images(table, list(rows), self.image_size, normalize=self.data.normalize, mean=self.mean,
                           std=self.std)

    def predict(self, inputs: torch.Tensor, *, batch_size: int = 64) -> np.ndarray:
        """Sigmoid scores `[n, C]` over the global labels (NaN where no part predicts a label)."""
        out = np.full((len(inputs), len(self.class_names)), np.nan, dtype=np.float32)
        for model, columns in self.parts:
            device = next(model.parameters()).device
            with _modes_restored(model), torch.inference_mode():
                model.eval()
                for start in range(0, len(inputs), batch_size):
                    logits = model(inputs[start:start + batch_size].to(device)).float()
                    out[start:start + len(logits), columns] = torch.sigmoid(logits).cpu().numpy()
        return out

    def explain(self, inputs: torch.Tensor, pairs: Any, *, method: str = "gradcam",
                target_layer: str | int | None = None, batch_size: int = 32) -> CamResult:
        """Maps for (row of `inputs`, global label) pairs, each label explained by the part that predicts it."""
        pairs = _as_pairs(pairs)
        kind = _method_kind(method)
        part, local = self.route(pairs[:, 1])
        if (part < 0).any():
            missing = sorted({self.class_names[c] for c in pairs[part < 0, 1]})
            raise ValueError(f"{self.name}: no part predicts {missing}")
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        maps = np.zeros((len(pairs), *size), dtype=np.float32)
        scores = np.zeros(len(pairs), dtype=np.float32)
        layer = ""
        for p, (model, _) in enumerate(self.parts):
            sel = np.flatnonzero(part == p)
            if not len(sel):
                continue
            local_pairs = np.stack([pairs[sel, 0], local[sel]], axis=1)
            if kind == "cam":
                result = compute_cams(model, inputs, local_pairs, method=method, target_layer=target_layer,
                                      batch_size=batch_size)
            else:
                result = head_maps(model, inputs, local_pairs, method=method, batch_size=batch_size)
            maps[sel], scores[sel], layer = result.maps, result.scores, result.layer
        return CamResult(maps, pairs, scores, method, layer)

    def explain_table(self, table: LabelledImages, pairs: Any, *, method: str = "gradcam",
                      target_layer: str | int | None = None, batch_size: int = 32) -> CamResult:
        """`explain` for (table row, global label) pairs: loads the images of those rows."""
        pairs = _as_pairs(pairs)
        rows, inverse = np.unique(pairs[:, 0], return_inverse=True)
        inputs, _ = self.inputs(table, rows) if len(rows) else (torch.zeros(0, 3, self.image_size,
                                                                              self.image_size), None)
        result = self.explain(inputs, np.stack([inverse.reshape(-1), pairs[:, 1]], axis=1), method=method,
                              target_layer=target_layer, batch_size=batch_size)
        result.pairs = pairs
        return result

    def methods(self) -> list[str]:
        """Map names that apply to every part (`available_methods`)."""
        common = [set(available_methods(m, self.image_size)) for m, _ in self.parts]
        return [name for name in list_methods() if all(name in c for c in common)]


def _checkpoint_of(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise FileNotFoundError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt")


def _base_data(cfg: RunConfig) -> DataConfig:
    """The data config of the full label set: a `label_subset` view (CPSD teacher) is unwrapped to its base."""
    if cfg.data.dataset != "label_subset":
        return cfg.data
    options = dict(cfg.data.options)
    return cfg.updated({"data.dataset": options["base"], "data.options": dict(options.get("base_options") or {})}).data


def load_explained(path: str | Path, *, name: str = "", device: str | torch.device = "cpu",
                   class_names: Sequence[str] | None = None) -> ExplainedModel:
    """A run folder, a checkpoint, or a CPSD teacher-family folder (``teachers/<family>/part*/``) as one model.

    Args:
        path: the run folder (its `checkpoints/best.pt`, else `last.pt`), a checkpoint file, or a folder of part runs.
        name: display name (default: the folder's name).
        device: where the weights go (`auto`: CUDA when present).
        class_names: the global label order; for a family, defaults to the family's partition file
            (``<root>/partitions/<family>.json``), else the parts' labels in order.
    """
    from mlic.evaluate import load_run_model
    from mlic.models import backbone_data_config
    from mlic.train.engine import resolve_device

    path = Path(path)
    device = resolve_device(device) if isinstance(device, str) else device
    part_dirs = sorted(p for p in path.glob("part*") if p.is_dir()) if path.is_dir() else []
    if path.is_dir() and not (path / "checkpoints").is_dir() and part_dirs:
        loaded = [load_run_model(_checkpoint_of(p), device=device) for p in
                  sorted(part_dirs, key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0)]
        if class_names is None:
            partition = path.parent.parent / "partitions" / f"{path.name}.json"
            if partition.is_file():
                import json

                class_names = json.loads(partition.read_text())["class_names"]
            else:
                class_names = [c for _, _, names in loaded for c in names]
    else:
        loaded = [load_run_model(_checkpoint_of(path), device=device)]
        class_names = list(class_names) if class_names is not None else loaded[0][2]
    column = {c: i for i, c in enumerate(class_names)}
    parts = []
    for model, _, names in loaded:
        unknown = [c for c in names if c not in column]
        if unknown:
            raise ValueError(f"{path}: labels {unknown} are not among the global classes")
        parts.append((model, np.asarray([column[c] for c in names], dtype=np.int64)))
    cfg = loaded[0][1]
    dcfg = backbone_data_config(loaded[0][0].backbone)
    return ExplainedModel(name=name or path.name, parts=parts, class_names=list(class_names), data=_base_data(cfg),
                          mean=tuple(dcfg["mean"]), std=tuple(dcfg["std"]), source=path, config=cfg)


def cpsd_models(root: str | Path, *, k: int = 5, seed: int = 0) -> dict[str, Path]:
    """The Figure 4 models of a CPSD study folder (`mlic.cpsd.CPSDStudy` layout), those that exist:
    ``baseline`` (``students/baseline-seed<s>``), ``CGP`` and ``DGP`` teacher families
    (``teachers/{cgp,dgp}-k<k>-seed<s>``) and the ``CPSD`` student (``students/cpsd-k<k>-seed<s>``)."""
    root = Path(root)
    candidates = {
        "baseline": root / "students" / f"baseline-seed{seed}",
        "CGP": root / "teachers" / f"cgp-k{k}-seed{seed}",
        "DGP": root / "teachers" / f"dgp-k{k}-seed{seed}",
        "CPSD": root / "students" / f"cpsd-k{k}-seed{seed}",
    }
    found = {}
    for name, path in candidates.items():
        has_run = (path / "checkpoints" / "best.pt").is_file()
        has_parts = any((p / "checkpoints" / "best.pt").is_file() for p in path.glob("part*"))
        if has_run or has_parts:
            found[name] = path
    return found


def find_runs(root: str | Path) -> dict[str, Path]:
    """Run folders under `root` (itself included): every folder with `checkpoints/best.pt` or `last.pt`, named by
    its path relative to `root`; the part runs of a CPSD teacher family (``part<t>/``) are listed once, as the family.
    """
    root = Path(root)
    runs: dict[str, Path] = {}
    for run in sorted({p.parent.parent for p in root.rglob("checkpoints/*.pt")}):
        family = run.parent
        target = family if run.name.startswith("part") and (family == root or root in family.parents) else run
        key = target.name if target == root else str(target.relative_to(root))
        runs.setdefault(key, target)
    return runs


def gather_runs(runs: Mapping[str, str] | None = None, *, cpsd_root: str = "", k: int = 5, seed: int = 0,
                fallback: RunConfig | None = None) -> dict[str, str]:
    """The models a notebook explains: the CPSD study's Figure 4 models (`cpsd_models`) when `cpsd_root` has them,
    plus the explicit `runs` (name → run folder / checkpoint / teacher family); when both are empty, the run of
    `fallback` is trained (or reused when finished) as ``baseline``."""
    found: dict[str, str] = {}
    if cpsd_root:
        found.update({n: str(p) for n, p in cpsd_models(cpsd_root, k=k, seed=seed).items()})
        if not found:
            log.warning("no CPSD runs under %s (k=%d, seed=%d)", cpsd_root, k, seed)
    found.update({str(n): str(p) for n, p in (runs or {}).items()})
    if found:
        return found
    if fallback is None:
        raise ValueError("no runs given and no fallback config to train one")
    from mlic.train import fit

    done = Path(fallback.output_dir) / "final.json"
    if not (done.is_file() and (Path(fallback.output_dir) / "checkpoints" / "best.pt").is_file()):
        fit(fallback)
    return {"baseline": fallback.output_dir}


# ---------------------------------------------------------------------------------------------------------------------
# Truth: pairs, boxes, pointing game, energy
# ---------------------------------------------------------------------------------------------------------------------
def positive_pairs(table: LabelledImages, rows: Sequence[int] | np.ndarray | None = None,
                   labels: Sequence[int] | None = None) -> np.ndarray:
    """`[P, 2]` (table row, label) of every positive label of `rows` (default: all), optionally only `labels`."""
    rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
    sub = table.labels[rows].astype(bool)
    if labels is not None:
        keep = np.zeros(table.num_classes, dtype=bool)
        keep[np.asarray(labels, dtype=np.int64)] = True
        sub = sub & keep
    r, c = np.nonzero(sub)
    return np.stack([rows[r], c], axis=1).astype(np.int64)


def sample_rows(table: LabelledImages, n: int, *, seed: int = 0) -> np.ndarray:
    """`n` image rows drawn without replacement (all when `n` is 0 or larger than the table), sorted."""
    if n <= 0 or n >= len(table):
        return np.arange(len(table))
    return np.sort(np.random.default_rng(seed).choice(len(table), size=n, replace=False))


def image_sizes(table: LabelledImages, rows: Sequence[int]) -> np.ndarray:
    """`[n, 2]` (width, height) in pixels of `rows`: the COCO `width`/`height` extras, else read from the files."""
    rows = np.asarray(rows, dtype=np.int64)
    width, height = table.extras.get("width"), table.extras.get("height")
    if isinstance(width, np.ndarray) and isinstance(height, np.ndarray) and len(width) == len(table):
        return np.stack([width[rows], height[rows]], axis=1).astype(np.float64)
    from PIL import Image

    out = np.zeros((len(rows), 2))
    for i, r in enumerate(rows):
        with Image.open(table.paths[r]) as image:
            out[i] = image.size
    return out


def box_masks(boxes: np.ndarray, image_wh: tuple[float, float], size: tuple[int, int], *,
              tolerance: float = 0.0) -> dict[int, np.ndarray]:
    """Per class, the union of its boxes as a boolean `[H, W]` mask on a map of `size` (squish-resized image).

    A map pixel belongs to a box when its centre, mapped back to image pixels, lies inside the box (x, y, w, h in
    image pixels) grown by `tolerance` pixels on each side; a box too thin to hold a centre keeps the pixel under its
    own centre.
    """
    h, w = size
    width, height = image_wh
    xs = (np.arange(w) + 0.5) * (width / w)
    ys = (np.arange(h) + 0.5) * (height / h)
    out: dict[int, np.ndarray] = {}
    for row in np.asarray(boxes, dtype=np.float64).reshape(-1, 5):
        c, bx, by, bw, bh = int(row[0]), *row[1:]
        inside_x = (xs >= bx - tolerance) & (xs < bx + bw + tolerance)
        inside_y = (ys >= by - tolerance) & (ys < by + bh + tolerance)
        mask = inside_y[:, None] & inside_x[None, :]
        if not mask.any():
            cy = min(int((by + bh / 2) * h / height), h - 1)
            cx = min(int((bx + bw / 2) * w / width), w - 1)
            mask[max(cy, 0), max(cx, 0)] = True
        out[c] = out[c] | mask if c in out else mask
    return out


def pointing_game(maps: np.ndarray, pairs: Any, table: LabelledImages, *, tolerance: float = 0.0) -> pd.DataFrame:
    """Score maps of (table row, label) pairs against the table's boxes; one row per pair.

    Columns: ``row``, ``image_id``, ``label`` (column), ``class``, ``hit`` (the map's maximum — first in row-major
    order on ties — lies in a box of the label), ``energy`` (share of the map's sum inside the label's boxes),
    ``companion_energy`` (share inside boxes of the image's other positive labels, outside the label's own),
    ``background_energy`` (the rest), ``area`` and ``companion_area`` (the same shares for a uniform map: chance
    levels), ``companions`` (number of other positive labels), ``flat`` (a constant map: scored as uniform).

    Raises:
        ValueError: if the table has no boxes.
    """
    if table.boxes is None:
        raise ValueError(f"{table.source or 'the table'} has no boxes: the pointing game needs them")
    pairs = _as_pairs(pairs)
    maps = np.asarray(maps, dtype=np.float64)
    size = maps.shape[-2:]
    sizes = image_sizes(table, pairs[:, 0])
    rows = []
    cache: dict[int, dict[int, np.ndarray]] = {}
    for i, (r, c) in enumerate(pairs):
        if r not in cache:
            cache[int(r)] = box_masks(table.boxes[r], tuple(sizes[i]), size, tolerance=tolerance)
        masks = cache[int(r)]
        own = masks.get(int(c), np.zeros(size, dtype=bool))
        others = [int(o) for o in np.flatnonzero(table.labels[r]) if o != c]
        companion = np.zeros(size, dtype=bool)
        for o in others:
            if o in masks:
                companion |= masks[o]
        companion &= ~own
        m = np.maximum(maps[i], 0)
        total = m.sum()
        flat = bool(m.max() - m.min() <= 1e-12)
        area, companion_area = own.mean(), companion.mean()
        if total <= 0 or flat:
            energy, companion_energy = area, companion_area
        else:
            energy, companion_energy = m[own].sum() / total, m[companion].sum() / total
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        rows.append({"row": int(r), "image_id": table.image_ids[r], "label": int(c), "class": table.class_names[c],
                     "hit": bool(own[y, x]), "energy": float(energy), "companion_energy": float(companion_energy),
                     "background_energy": float(1.0 - energy - companion_energy), "area": float(area),
                     "companion_area": float(companion_area), "companions": len(others), "flat": flat})
    return pd.DataFrame(rows, columns=["row", "image_id", "label", "class", "hit", "energy", "companion_energy",
                                       "background_energy", "area", "companion_area", "companions", "flat"])


def random_maps(shape: tuple[int, ...], *, seed: int = 0, smooth: int = 0) -> np.ndarray:
    """Uniform random maps `[P, H, W]` in [0, 1] (the pointing game's chance baseline); `smooth` > 0 upsamples a
    coarse `smooth × smooth` random grid instead, like a CAM of that resolution."""
    rng = np.random.default_rng(seed)
    if smooth <= 0:
        return rng.random(shape).astype(np.float32)
    coarse = rng.random((shape[0], smooth, smooth)).astype(np.float32)
    return scale_cam_image(coarse, (shape[-1], shape[-2]))


_SCORE_COLUMNS = ("hit", "energy", "companion_energy", "area", "companion_area")


def summarize_pointing(frame: pd.DataFrame, *, by: Sequence[str] = ("model", "split")) -> pd.DataFrame:
    """Overall scores per group (e.g. model × split), means over pairs: ``pointing`` (hit rate, %), ``energy``
    (%), ``companion_energy`` (%, over pairs with at least one companion), chance levels ``pointing_chance`` /
    ``energy_chance`` (= label box area) and ``companion_chance``, ``pointing_macro`` (mean over labels) and
    ``pairs``."""
    by = [b for b in by if b in frame.columns]
    groups = frame.groupby(by, sort=False) if by else [((), frame)]
    rows = []
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        with_company = part[part["companions"] > 0]
        rows.append({**dict(zip(by, key)), "pairs": len(part),
                     "pointing": 100 * part["hit"].mean(), "pointing_chance": 100 * part["area"].mean(),
                     "pointing_macro": 100 * part.groupby("label")["hit"].mean().mean(),
                     "energy": 100 * part["energy"].mean(), "energy_chance": 100 * part["area"].mean(),
                     "companion_energy": 100 * with_company["companion_energy"].mean() if len(with_company)
                     else float("nan"),
                     "companion_chance": 100 * with_company["companion_area"].mean() if len(with_company)
                     else float("nan"),
                     "companion_pairs": len(with_company)})
    return pd.DataFrame(rows)


def per_label_pointing(frame: pd.DataFrame, *, by: Sequence[str] = ("model", "split")) -> pd.DataFrame:
    """`summarize_pointing` per label (one row per group × class)."""
    by = [b for b in by if b in frame.columns]
    out = summarize_pointing(frame, by=[*by, "class"])
    return out.drop(columns=["pointing_macro"])


# ---------------------------------------------------------------------------------------------------------------------
# Several models, several splits
# ---------------------------------------------------------------------------------------------------------------------
def score_models(models: Mapping[str, ExplainedModel], tables: Mapping[str, LabelledImages], *,
                 method: str = "gradcam", target_layer: str | int | None = None, max_images: int = 200,
                 seed: int = 0, batch_size: int = 32, tolerance: float = 0.0) -> pd.DataFrame:
    """Pointing game and energies of every model on the same (image, positive label) pairs of every split.

    `max_images` images per split are drawn once (seeded) and shared by all models, so rows line up across models.
    Returns `pointing_game`'s columns plus ``model``, ``split``, ``score`` (the pair's sigmoid score); the hooked
    layer's name is in ``attrs["layer"]``.
    """
    frames = []
    layer = ""
    for split, table in tables.items():
        pairs = positive_pairs(table, sample_rows(table, max_images, seed=seed))
        for name, model in models.items():
            result = model.explain_table(table, pairs, method=method, target_layer=target_layer,
                                         batch_size=batch_size)
            frame = pointing_game(result.maps, pairs, table, tolerance=tolerance)
            frame.insert(0, "split", split)
            frame.insert(0, "model", name)
            frame["score"] = result.scores
            frames.append(frame)
            layer = layer or result.layer
            log.info("%s on %s: %d pairs, pointing %.1f%%", name, split, len(frame), 100 * frame["hit"].mean())
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out.attrs["layer"] = layer  # the hooked layer's name, for titles
    return out


def pointing_metrics(summary: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Headline numbers of a `summarize_pointing(by=model, split)` table for `mlic.report.record`:
    ``<model>`` → ``<split>_pointing``, ``<split>_energy``, ``<split>_companion_energy`` (percent)."""
    out: dict[str, dict[str, float]] = {}
    for _, row in summary.iterrows():
        entry = out.setdefault(str(row["model"]), {})
        for key in ("pointing", "energy", "companion_energy"):
            entry[f"{row['split']}_{key}"] = round(float(row[key]), 3)
    return out


def pick_figure_pairs(frame: pd.DataFrame, *, label: str = "", n: int = 4, model: str = "", split: str = "",
                      min_pairs: int = 0) -> pd.DataFrame:
    """Pairs for CPSD's Figure 4: images of one label that also hold other labels, those where `model` (default:
    the first) puts the most energy on the companions first — where a model finds "mouse" by looking at the laptop.

    Args:
        frame: `score_models` rows.
        label: class name; empty → the label with the highest mean companion energy under `model` among labels with
            at least `min_pairs` (default `n`) such pairs.
        n: pairs returned.
        model: the model whose companion energy ranks the pairs.
        split: restrict to a split (default: the first).
    """
    model = model or str(frame["model"].iloc[0])
    split = split or str(frame["split"].iloc[0])
    rows = frame[(frame["model"] == model) & (frame["split"] == split) & (frame["companions"] > 0)]
    if rows.empty:
        rows = frame[(frame["model"] == model) & (frame["split"] == split)]
    if not label:
        counts = rows.groupby("class")["companion_energy"].agg(["mean", "size"])
        eligible = counts[counts["size"] >= (min_pairs or n)]
        label = str((eligible if len(eligible) else counts)["mean"].idxmax())
    chosen = rows[rows["class"] == label].sort_values("companion_energy", ascending=False, kind="stable")
    return chosen.head(n)[["split", "row", "image_id", "label", "class"]].reset_index(drop=True)


def disagreements(frame: pd.DataFrame, *, n: int = 4, split: str = "", key: str = "energy") -> pd.DataFrame:
    """The (image, label) pairs where the models' maps disagree most: the largest range of `key` across models
    (energy by default) on `split` (default: the last split). One row per pair with each model's `key`."""
    split = split or str(frame["split"].iloc[-1])
    part = frame[frame["split"] == split]
    wide = part.pivot_table(index=["row", "label", "class", "image_id"], columns="model", values=key)
    if wide.shape[1] < 2:
        wide["spread"] = 0.0
    else:
        wide["spread"] = wide.max(axis=1) - wide.min(axis=1)
    wide = wide.sort_values("spread", ascending=False, kind="stable").head(n).reset_index()
    wide.insert(0, "split", split)
    wide.columns.name = None
    return wide


def comparison_examples(models: Mapping[str, ExplainedModel], table: LabelledImages, pairs: Any, *,
                        method: str = "gradcam", target_layer: str | int | None = None) -> dict[str, Any]:
    """What `mlic.plots.cam_comparison` draws: the images of (table row, label) `pairs` and every model's map.

    Returns:
        ``images`` `[P, S, S, 3]` in [0, 1], ``maps`` (model → `[P, S, S]`), ``scores`` (model → `[P]`),
        ``pairs``, ``class_names``, ``labels`` `[P, C]` (truth of each image), and ``boxes``: per pair, the image's
        boxes `[k, 5]` scaled to the `S × S` map (class, x, y, w, h).
    """
    pairs = _as_pairs(pairs)
    first = next(iter(models.values()))
    size = first.image_size
    _, images = first.inputs(table, pairs[:, 0]) if len(pairs) else (None, np.zeros((0, size, size, 3)))
    maps, scores = {}, {}
    for name, model in models.items():
        result = model.explain_table(table, pairs, method=method, target_layer=target_layer)
        if result.maps.shape[-1] != size:  # models of another input size: resample to the shown one
            result.maps = scale_cam_image(result.maps, (size, size))
        maps[name], scores[name] = result.maps, result.scores
    boxes = []
    sizes = image_sizes(table, pairs[:, 0]) if len(pairs) else np.zeros((0, 2))
    for (r, _), (w, h) in zip(pairs, sizes):
        b = np.asarray(table.boxes[r] if table.boxes is not None else np.zeros((0, 5)), dtype=np.float64).copy()
        b = b.reshape(-1, 5)
        b[:, [1, 3]] *= size / w
        b[:, [2, 4]] *= size / h
        boxes.append(b)
    return {"images": images, "maps": maps, "scores": scores, "pairs": pairs, "class_names": list(table.class_names),
            "labels": table.labels[pairs[:, 0]] if len(pairs) else np.zeros((0, table.num_classes)),
            "boxes": boxes, "method": method}
