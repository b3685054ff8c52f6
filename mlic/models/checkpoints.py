"""Import the authors' released checkpoints (ASL, ML-Decoder, Query2Label, ML-GCN) as mlic checkpoints.

Each release is read in its own layout, taken from the authors' repositories:

- **ASL** (`Alibaba-MIIL/ASL`, `infer.py`): `{"model": state_dict, "num_classes", "idx_to_class"}`; TResNet
  (`body.SpaceToDepth`, `body.conv1`, `body.layer1..4`, inplace-ABN layers as `conv.0` conv + `conv.1` ABN) and
  `head.fc`, a linear layer on the global average. Inputs are [0, 1] pixels without mean/std normalisation.
- **ML-Decoder** (`Alibaba-MIIL/ML_Decoder`, `validate.py`): the same container and TResNet (v2 for TResNet-L:
  Bottleneck blocks in the first two stages), the head under `head.decoder.*`: `embed_standart`, `query_embed`,
  `layers.0.*` (no self-attention), `duplicate_pooling`, `duplicate_pooling_bias`; 8 attention heads.
- **Query2Label** (`SlongLiu/query2labels`, `q2l_infer.py`): `{"state_dict": ...}` saved from a DataParallel /
  DistributedDataParallel model, so every key starts with `module.`. The backbone is `backbone.0` of a DETR `Joiner`:
  a torchvision ResNet behind `IntermediateLayerGetter` (`backbone.0.body.*`, frozen BatchNorm), a TResNet
  (`backbone.0.body.body.*`) or the original Swin (`backbone.0.*`); `backbone.1.pe` is the precomputed sine encoding
  (checked against mlic's, then dropped); `input_proj` is a 1×1 convolution or absent (identity); the DETR transformer
  as `transformer.encoder.layers.N.*`, `transformer.decoder.layers.N.*`, `transformer.decoder.norm`; `query_embed`
  and `fc.W`, `fc.b` (GroupWiseLinear). The number of attention heads is not in the weights: 4 (the released
  configs'), or the `nheads` of the release's `config_new.json` given as `config`. CvT-w24 is refused (timm has no
  CvT).
- **ML-GCN** (`Megvii-Nanjing/ML-GCN`, `engine.py`): `{"state_dict": ...}` of `GCNResnet`: a torchvision
  ResNet-101 as `features.0/1/4/5/6/7` (conv1, bn1, layer1..4), `gc1.weight`, `gc2.weight` and `A`, the re-weighted
  correlation matrix before `gen_adj`. The label word vectors are *not* in the checkpoint: they are the repository's
  `data/coco/coco_glove_word2vec.pkl` (`word_vectors`). Classes in alphabetical order, ImageNet mean/std.

Backbones go through timm: TResNet with timm's own remapping of the original weights
(`timm.models.tresnet.checkpoint_filter_fn`, which also turns inplace-ABN weights into BatchNorm ones as `|w| + ε`),
the original Swin layout with `timm.models.swin_transformer.checkpoint_filter_fn`, and torchvision ResNets, whose
parameter names timm's ResNets share. The architecture (blocks per stage, widths, window size, transformer sizes) is
read from the tensors' names and shapes.

Every source tensor must be consumed and every target tensor filled: leftovers, missing tensors and shape mismatches
are listed by name and fail the import unless `allow_partial`. Buffers that the source holds but timm recomputes
(Swin's `relative_position_index`, `attn_mask`) are reported as derived; BatchNorm `num_batches_tracked` counters,
which play no part at inference and which old releases lack, are kept at their defaults and reported.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from mlic._version import __version__
from mlic.core.config import RunConfig
from mlic.core.errors import MlicError
from mlic.core.io import save_checkpoint
from mlic.core.registry import Registry
from mlic.models.classifier import create_model
from mlic.models.label_graph import normalize_adjacency

log = logging.getLogger(__name__)

#: the 80 COCO categories in category-id order (ASL, ML-Decoder and Query2Label's class order)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

#: BatchNorm counters: unused at inference, absent from releases saved before PyTorch 0.4.1 and from frozen BatchNorm
COUNTER_SUFFIX = "num_batches_tracked"


class CheckpointImportError(MlicError, ValueError):
    """A released checkpoint cannot be imported; the message names the file and the tensors at fault."""


# ---------------------------------------------------------------------------------------------------------------------
# The source tensors, with a record of what was consumed
# ---------------------------------------------------------------------------------------------------------------------
class SourceState:
    """The released tensors by name; each mapping marks what it consumes, so leftovers can be listed."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
        self.tensors = dict(tensors)
        self.path = str(path)
        self.consumed: set[str] = set()
        self.derived: set[str] = set()

    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in self.tensors if k.startswith(prefix)]

    def take(self, key: str) -> torch.Tensor:
        """The tensor `key`, marked consumed; a missing key is an error naming the file."""
        if key not in self.tensors:
            raise CheckpointImportError(f"{self.path}: expected tensor {key!r} is missing")
        self.consumed.add(key)
        return self.tensors[key]

    def take_prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every tensor under `prefix`, names stripped of it, marked consumed."""
        found = {k[len(prefix):]: self.take(k) for k in self.keys(prefix)}
        if not found:
            raise CheckpointImportError(f"{self.path}: no tensors under {prefix!r}; the keys start with "
                                        f"{sorted({k.split('.')[0] for k in self.tensors})}")
        return found

    def mark_derived(self, key: str) -> None:
        """`key` holds a value the target recomputes (a cached buffer): consumed, and reported as derived."""
        self.consumed.add(key)
        self.derived.add(key)

    def leftover(self) -> list[str]:
        return sorted(set(self.tensors) - self.consumed)


def count_blocks(keys: Iterable[str], stage: str) -> int:
    """Blocks of a stage from names like `<stage>.<index>.*` (0 if none)."""
    pattern = re.compile(rf"^{re.escape(stage)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


# ---------------------------------------------------------------------------------------------------------------------
# Backbone layouts: which timm model a released backbone is, and its tensors under timm's names
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class BackboneLayout:
    """A released backbone layout: `infer` names the timm model (and kwargs) from the tensors, `to_timm` renames
    them (in order, one output per input), `is_derived` tells buffers the timm model recomputes."""

    name: str
    infer: Callable[[Mapping[str, torch.Tensor], int], tuple[str, dict[str, Any]]]
    to_timm: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    is_derived: Callable[[str], bool] = lambda key: False


def _known_or_generic(known: Mapping[str, dict[str, Any]], found: dict[str, Any], generic: str
                      ) -> tuple[str, dict[str, Any]]:
    """The registered timm name whose architecture is `found`, else `generic` with `found` as kwargs."""
    for name, arch in known.items():
        if arch == found:
            return name, {}
    return generic, found


# TResNet (ASL, ML-Decoder, Query2Label's TResNet backbones): timm remaps the original weights itself
_TRESNETS = {
    "tresnet_m": {"layers": [3, 4, 11, 3], "planes": 64, "v2": False},
    "tresnet_l": {"layers": [4, 5, 18, 3], "planes": 76, "v2": False},
    "tresnet_xl": {"layers": [4, 5, 24, 3], "planes": 83, "v2": False},
    "tresnet_v2_l": {"layers": [3, 4, 23, 3], "planes": 64, "v2": True},
}


def _infer_tresnet(tensors: Mapping[str, torch.Tensor], image_size: int) -> tuple[str, dict[str, Any]]:
    stem = next((tensors[k] for k in ("body.conv1.0.weight", "body.conv1.conv.weight") if k in tensors), None)
    if stem is None:
        raise CheckpointImportError("TResNet: no stem convolution body.conv1.0.weight")
    found = {"layers": [count_blocks(tensors, f"body.layer{i}") for i in range(1, 5)], "planes": int(stem.shape[0]),
             "v2": any(k.startswith("body.layer1.0.conv3.") for k in tensors)}
    name, kwargs = _known_or_generic(_TRESNETS, found, "tresnet_v2_l" if found["v2"] else "tresnet_m")
    if kwargs:  # timm's TResNet takes the stage depths and a width factor (planes = int(64 · width))
        kwargs = {"layers": found["layers"], "width_factor": found["planes"] / 64, "v2": found["v2"]}
    return name, kwargs


def _tresnet_to_timm(tensors: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    from timm.models.tresnet import checkpoint_filter_fn

    return checkpoint_filter_fn(tensors, backbone)


TRESNET = BackboneLayout("tresnet", _infer_tresnet, _tresnet_to_timm)


# torchvision ResNets (Query2Label's ResNet-101, ML-GCN's): timm's ResNets use the same parameter names
_RESNETS = {
    "resnet18": {"layers": [2, 2, 2, 2], "bottleneck": False},
    "resnet34": {"layers": [3, 4, 6, 3], "bottleneck": False},
    "resnet50": {"layers": [3, 4, 6, 3], "bottleneck": True},
    "resnet101": {"layers": [3, 4, 23, 3], "bottleneck": True},
    "resnet152": {"layers": [3, 8, 36, 3], "bottleneck": True},
}


def _infer_resnet(tensors: Mapping[str, torch.Tensor], image_size: int) -> tuple[str, dict[str, Any]]:
    if "conv1.weight" not in tensors or tensors["conv1.weight"].shape[0] != 64:
        raise CheckpointImportError("ResNet: expected a torchvision ResNet stem conv1.weight with 64 channels")
    found = {"layers": [count_blocks(tensors, f"layer{i}") for i in range(1, 5)],
             "bottleneck": any(k.startswith("layer1.0.conv3.") for k in tensors)}
    name, kwargs = _known_or_generic(_RESNETS, found, "resnet50" if found["bottleneck"] else "resnet18")
    return name, {"layers": found["layers"]} if kwargs else {}


RESNET = BackboneLayout("torchvision_resnet", _infer_resnet, lambda tensors, backbone: dict(tensors))


# The original Swin Transformer (Query2Label's Swin backbones): timm converts the layout (downsampling at the start of
# a stage instead of the end) and recomputes the attention masks and relative position indices
_SWINS = {
    "swin_large_patch4_window12_384": {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48],
                                       "window_size": 12, "img_size": 384},
    "swin_base_patch4_window12_384": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32],
                                      "window_size": 12, "img_size": 384},
    "swin_large_patch4_window7_224": {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48],
                                      "window_size": 7, "img_size": 224},
    "swin_base_patch4_window7_224": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32],
                                     "window_size": 7, "img_size": 224},
}
_SWIN_DERIVED = ("relative_position_index", "attn_mask")


def _infer_swin(tensors: Mapping[str, torch.Tensor], image_size: int) -> tuple[str, dict[str, Any]]:
    stages = sum(1 for i in range(8) if count_blocks(tensors, f"layers.{i}.blocks"))
    tables = [tensors[f"layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(stages)]
    found = {"embed_dim": int(tensors["patch_embed.proj.weight"].shape[0]),
             "depths": [count_blocks(tensors, f"layers.{i}.blocks") for i in range(stages)],
             "num_heads": [int(t.shape[1]) for t in tables],
             "window_size": (math.isqrt(int(tables[0].shape[0])) + 1) // 2, "img_size": int(image_size)}
    return _known_or_generic(_SWINS, found, "swin_tiny_patch4_window7_224")


def _swin_to_timm(tensors: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    from timm.models.swin_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(tensors, backbone)


SWIN = BackboneLayout("swin", _infer_swin, _swin_to_timm,
                      is_derived=lambda key: any(part in key for part in _SWIN_DERIVED))


def refuse_cvt(path: str) -> CheckpointImportError:
    """The error for a CvT backbone (Query2Label's CvT-w24): timm has no CvT implementation to load it into."""
    available = timm.list_models("*cvt*")
    reason = "timm has no CvT model (timm.list_models('*cvt*') is empty)" if not available else \
        f"mlic has no mapping of the original CvT layout onto timm's {available}"
    return CheckpointImportError(f"{path}: the backbone is a CvT (Query2Label's CvT-w24): {reason}, so this checkpoint "
                                 "cannot be imported; the ResNet-101, TResNet and Swin releases can")


# ---------------------------------------------------------------------------------------------------------------------
# What an import produces
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class ImportOptions:
    """What the user adds to a release: class names, input size, a timm backbone name, ML-GCN's word vectors, the
    release's own JSON config (Query2Label), the dataset an `mlic eval` of the result reads."""

    classes: list[str] | None = None
    image_size: int | None = None
    backbone: str | None = None
    word_vectors: str | None = None
    source_config: dict[str, Any] = field(default_factory=dict)
    dataset: str = "coco"
    data_root: str = "data/coco"
    split: str = "val2014"


@dataclass
class ImportPlan:
    """A release read: the model to build and its tensors under the target's names."""

    backbone_layout: BackboneLayout
    backbone_tensors: dict[str, torch.Tensor]  # in the release's backbone names, prefix stripped
    backbone_sources: list[str]  # the source key of each backbone tensor, in order
    head: str
    head_kwargs: dict[str, Any]
    head_tensors: dict[str, tuple[str, torch.Tensor]]  # head parameter → (source key, tensor)
    num_classes: int
    image_size: int
    normalize: bool
    class_order: str
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """What an import did: the written checkpoint, the model, and the accounting of every tensor."""

    output: str
    release: str
    backbone: str
    backbone_kwargs: dict[str, Any]
    head: str
    head_kwargs: dict[str, Any]
    num_classes: int
    image_size: int
    normalize: bool
    class_order: str
    consumed: int
    filled: int
    derived: list[str]
    defaulted: list[str]
    leftover: list[str]
    missing: list[str]
    mismatched: list[str]
    notes: list[str]

    @property
    def complete(self) -> bool:
        return not (self.leftover or self.missing or self.mismatched)


RELEASE_FORMATS: Registry[ImportPlan] = Registry("release format")
"""Release formats by name: each reads a `SourceState` (and `ImportOptions`) into an `ImportPlan`."""


def _backbone(source: SourceState, prefix: str, layout: BackboneLayout, *, under: str = ""
              ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The backbone tensors under `prefix + under` (names stripped of `prefix`), derived buffers marked, left out."""
    tensors, sources = {}, []
    for key in source.keys(prefix + under):
        if layout.is_derived(key):
            source.mark_derived(key)
            continue
        tensors[key[len(prefix):]] = source.take(key)
        sources.append(key)
    if not tensors:
        raise CheckpointImportError(f"{source.path}: no backbone tensors under {prefix!r}")
    return tensors, sources


def _release_classes(idx_to_class: Any) -> list[str] | None:
    """Class names from ASL / ML-Decoder's `idx_to_class` (index → name), in index order."""
    if not isinstance(idx_to_class, Mapping):
        return None
    return [str(idx_to_class[k]) for k in sorted(idx_to_class, key=int)]


@RELEASE_FORMATS.register("asl")
def read_asl(source: SourceState, options: ImportOptions) -> ImportPlan:
    """ASL: TResNet + `head.fc` (linear on the global average) → `gap` head."""
    backbone, sources = _backbone(source, "", TRESNET, under="body.")
    weight, bias = source.take("head.fc.weight"), source.take("head.fc.bias")
    return ImportPlan(TRESNET, backbone, sources, "gap", {},
                      {"fc.weight": ("head.fc.weight", weight), "fc.bias": ("head.fc.bias", bias)},
                      num_classes=int(weight.shape[0]), image_size=options.image_size or 448, normalize=False,
                      class_order="id", notes=[] if options.image_size else ["image size not given: 448 (TResNet-L)"])


@RELEASE_FORMATS.register("ml_decoder")
def read_ml_decoder(source: SourceState, options: ImportOptions) -> ImportPlan:
    """ML-Decoder: TResNet + `head.decoder.*` → `ml_decoder` head (8 attention heads, as the reference fixes)."""
    backbone, sources = _backbone(source, "", TRESNET, under="body.")
    prefix = "head.decoder."
    head: dict[str, tuple[str, torch.Tensor]] = {}
    renames = {"embed_standart.": "input_proj.", "query_embed.": "query_embed.", "layers.": "layers.",
               "duplicate_pooling": "duplicate_pooling"}
    for key in source.keys(prefix):
        name = key[len(prefix):]
        for old, new in renames.items():
            if name.startswith(old):
                head[new + name[len(old):]] = (key, source.take(key))
                break
    if "duplicate_pooling" not in head or "query_embed.weight" not in head:
        raise CheckpointImportError(f"{source.path}: not an ML-Decoder head (no {prefix}duplicate_pooling / "
                                    f"{prefix}query_embed.weight); zero-shot (word-vector query) heads are not "
                                    "supported")
    groups, width, _ = head["duplicate_pooling"][1].shape
    num_classes = int(head["duplicate_pooling_bias"][1].shape[0])
    kwargs = {"num_groups": int(groups), "decoder_embedding": int(width), "num_heads": 8,
              "dim_feedforward": int(head["layers.0.linear1.weight"][1].shape[0]),
              "num_layers": count_blocks(head, "layers")}
    return ImportPlan(TRESNET, backbone, sources, "ml_decoder", kwargs, head,
                      num_classes=num_classes, image_size=options.image_size or 448, normalize=False, class_order="id",
                      notes=[] if options.image_size else ["image size not given: 448 (TResNet-L)"])


_Q2L_ENCODER = {"self_attn.": "self_attn.", "linear1.": "ffn.linear1.", "linear2.": "ffn.linear2.",
                "norm1.": "norm1.", "norm2.": "norm2."}
_Q2L_DECODER = {"self_attn.": "self_attn.", "multihead_attn.": "multihead_attn.", "linear1.": "ffn.linear1.",
                "linear2.": "ffn.linear2.", "norm1.": "norm1.", "norm2.": "norm2.", "norm3.": "norm3."}


def _q2l_layers(source: SourceState, prefix: str, target: str, renames: Mapping[str, str],
                head: dict[str, tuple[str, torch.Tensor]]) -> int:
    """Map `transformer.{encoder,decoder}.layers.N.*` onto `transformer.{encoder,decoder}.N.*`; returns N layers."""
    n = count_blocks(source.keys(prefix), prefix.rstrip("."))
    for i in range(n):
        for key in source.keys(f"{prefix}{i}."):
            rest = key[len(f"{prefix}{i}."):]
            new = next((renames[old] + rest[len(old):] for old in renames if rest.startswith(old)), None)
            if new is not None:
                head[f"transformer.{target}.{i}.{new}"] = (key, source.take(key))
    return n


@RELEASE_FORMATS.register("query2label")
def read_query2label(source: SourceState, options: ImportOptions) -> ImportPlan:
    """Query2Label: a ResNet / TResNet / Swin backbone and the DETR-style decoder → `query2label` head."""
    config = options.source_config
    if config.get("pre_norm"):
        raise CheckpointImportError(f"{source.path}: a pre-norm transformer (pre_norm) is not supported; mlic's "
                                    "Query2Label head is post-norm, as the released models")
    if any(k.startswith("backbone.0.stage") for k in source.tensors):
        raise refuse_cvt(source.path)
    if "backbone.0.body.body.conv1.0.weight" in source:
        layout, prefix = TRESNET, "backbone.0.body."
    elif "backbone.0.body.conv1.weight" in source:
        layout, prefix = RESNET, "backbone.0.body."
    elif "backbone.0.patch_embed.proj.weight" in source:
        layout, prefix = SWIN, "backbone.0."
    else:
        raise CheckpointImportError(f"{source.path}: unknown Query2Label backbone; expected backbone.0.body.* "
                                    "(ResNet, TResNet) or backbone.0.patch_embed.* (Swin)")
    backbone, sources = _backbone(source, prefix, layout)
    query = source.take("query_embed.weight")
    num_classes, hidden = (int(s) for s in query.shape)
    head: dict[str, tuple[str, torch.Tensor]] = {"query_embed.weight": ("query_embed.weight", query),
                                                 "fc.W": ("fc.W", source.take("fc.W")),
                                                 "fc.b": ("fc.b", source.take("fc.b"))}
    keep_input_proj = "input_proj.weight" in source
    if keep_input_proj:  # a 1×1 convolution [d, F, 1, 1] there, a linear layer [d, F] here
        head["input_proj.weight"] = ("input_proj.weight", source.take("input_proj.weight").flatten(1))
        head["input_proj.bias"] = ("input_proj.bias", source.take("input_proj.bias"))
    enc = _q2l_layers(source, "transformer.encoder.layers.", "encoder", _Q2L_ENCODER, head)
    dec = _q2l_layers(source, "transformer.decoder.layers.", "decoder", _Q2L_DECODER, head)
    for part in ("weight", "bias"):
        head[f"transformer.decoder_norm.{part}"] = (f"transformer.decoder.norm.{part}",
                                                    source.take(f"transformer.decoder.norm.{part}"))
    if dec and any(k.startswith("transformer.decoder.layers.0.self_attn.") for k in source.tensors):
        raise CheckpointImportError(f"{source.path}: the first decoder layer has self-attention "
                                    "(keep_first_self_attn_dec), which mlic's Query2Label head never has")
    ffn = head.get("transformer.decoder.0.ffn.linear1.weight")
    kwargs = {"hidden_dim": hidden, "num_heads": int(config.get("nheads", 4)), "enc_layers": enc, "dec_layers": dec,
              "dim_feedforward": int(ffn[1].shape[0]) if ffn else int(config.get("dim_feedforward", 8192)),
              "decoder_self_attention": any(k.startswith("transformer.decoder.") and ".self_attn." in k
                                            for k in source.tensors),
              "keep_input_proj": keep_input_proj}
    image_size = options.image_size or config.get("img_size")
    stride = 32
    if "backbone.1.pe" in source:  # the sine encoding precomputed for img_size / 32: it tells the release's size
        pe = source.take("backbone.1.pe")
        source.mark_derived("backbone.1.pe")
        image_size = image_size or int(pe.shape[-1]) * stride
        _check_position_encoding(pe, hidden, source.path)
    if not image_size:
        raise CheckpointImportError(f"{source.path}: the input size is unknown; give --image-size (e.g. 448)")
    normalize = not config.get("orid_norm", False)
    return ImportPlan(layout, backbone, sources, "query2label", kwargs, head, num_classes=num_classes,
                      image_size=int(image_size), normalize=normalize, class_order="id",
                      notes=[] if "nheads" in config else ["attention heads not in the weights: 4 (the released "
                                                           "configs'); give the release's config_new.json otherwise"])


def _check_position_encoding(pe: torch.Tensor, hidden: int, path: str) -> None:
    """The release's cached `[1, d, H, W]` encoding must be mlic's `sine_position_encoding` of the same grid."""
    from mlic.models.heads.query2label import sine_position_encoding

    _, dim, height, width = pe.shape
    ours = sine_position_encoding(int(height), int(width), int(dim)).T.reshape(1, dim, height, width)
    if dim != hidden or not torch.allclose(pe.float(), ours, atol=1e-5):
        raise CheckpointImportError(f"{path}: backbone.1.pe is not the DETR sine encoding mlic computes "
                                    f"(max |Δ| {float((pe.float() - ours).abs().max()) if dim == hidden else 'n/a'})")


_MLGCN_FEATURES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


@RELEASE_FORMATS.register("ml_gcn")
def read_ml_gcn(source: SourceState, options: ImportOptions) -> ImportPlan:
    """ML-GCN: `features.*` (torchvision ResNet), `gc1`, `gc2`, `A` and the word-vector file → `ml_gcn` head."""
    backbone, sources = {}, []
    for key in source.keys("features."):
        index, rest = key[len("features."):].split(".", 1)
        if index not in _MLGCN_FEATURES:
            continue  # left over, reported
        backbone[f"{_MLGCN_FEATURES[index]}.{rest}"] = source.take(key)
        sources.append(key)
    gc1, gc2, correlation = source.take("gc1.weight"), source.take("gc2.weight"), source.take("A")
    num_classes = int(correlation.shape[0])
    propagation = torch.from_numpy(normalize_adjacency(correlation.double().numpy()).astype(np.float32))
    head: dict[str, tuple[str, torch.Tensor]] = {
        "gc1.weight": ("gc1.weight", gc1), "gc2.weight": ("gc2.weight", gc2),
        "adjacency": ("A (as gen_adj(A) = D Aᵀ D)", propagation), "bound": ("A", torch.tensor(True))}
    if options.word_vectors:
        vectors = torch.from_numpy(read_word_vectors(options.word_vectors))
        head["embeddings"] = (f"{options.word_vectors}", vectors)
    kwargs = {"label_embeddings": "learned", "embedding_dim": int(gc1.shape[0]), "hidden_dim": int(gc1.shape[1])}
    notes = [] if options.word_vectors else ["no --word-vectors: the GCN's label embeddings are not in the "
                                             "checkpoint (ML-GCN's data/coco/coco_glove_word2vec.pkl)"]
    return ImportPlan(RESNET, backbone, sources, "ml_gcn", kwargs, head, num_classes=num_classes,
                      image_size=options.image_size or 448, normalize=True, class_order="alpha", notes=notes)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays only (the reference's word-vector files), never arbitrary objects."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are read")
        if module.startswith("numpy.core.") and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 moved the pickled module
        return super().find_class(module, name)


def read_word_vectors(path: str | Path) -> np.ndarray:
    """`[C, D]` float32 label vectors from a `.npy` or the reference's pickled array (`coco_glove_word2vec.pkl`)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with open(path, "rb") as handle:
                array = _ArrayUnpickler(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, ValueError, EOFError) as err:
        raise CheckpointImportError(f"{path}: cannot read label word vectors ({type(err).__name__}: {err})") from err
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise CheckpointImportError(f"{path}: expected a [classes, dim] array of word vectors, got {array.shape}")
    return array


# ---------------------------------------------------------------------------------------------------------------------
# Reading, mapping, accounting, writing
# ---------------------------------------------------------------------------------------------------------------------
#: the top-level key of each release's file (ASL / ML-Decoder save `model`, Query2Label / ML-GCN `state_dict`)
TOP_LEVEL_KEYS = ("model", "state_dict")


def load_release(path: str | Path, *, trust_source: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of a released file (top-level `model` or `state_dict`, or a bare state dict), DataParallel's
    `module.` prefixes stripped, and the file's other entries.

    Loaded with `weights_only=True`; a release that pickles other objects needs `trust_source` (full unpickling:
    only for files you trust).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not trust_source)
    except Exception as err:  # torch raises several types for a refused or corrupt pickle; name the file in each
        hint = "" if trust_source else "; if you trust the file, pass --trust-source (full unpickling)"
        raise CheckpointImportError(f"{path}: cannot load ({type(err).__name__}: {err}){hint}") from err
    if not isinstance(raw, Mapping):
        raise CheckpointImportError(f"{path}: expected a dict, got {type(raw).__name__}")
    key = next((k for k in TOP_LEVEL_KEYS if isinstance(raw.get(k), Mapping)), None)
    state = raw[key] if key else raw
    extras = {k: v for k, v in raw.items() if k != key} if key else {}
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointImportError(f"{path}: no tensors under {', '.join(TOP_LEVEL_KEYS)} or at the top level; "
                                    f"its keys: {sorted(map(str, raw))[:10]}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, extras


def _class_names(plan: ImportPlan, options: ImportOptions, path: str) -> list[str]:
    if options.classes is not None:
        names = [str(c) for c in options.classes]
    elif plan.class_names is not None:
        names = plan.class_names
    elif plan.num_classes == len(COCO_CLASSES):
        names = list(COCO_CLASSES) if plan.class_order == "id" else sorted(COCO_CLASSES)
    else:
        raise CheckpointImportError(f"{path}: {plan.num_classes} classes, not COCO's 80: give their names (--classes)")
    if len(names) != plan.num_classes:
        raise CheckpointImportError(f"{path}: {len(names)} class names for {plan.num_classes} classes")
    return names


def import_checkpoint(release: str, source: str | Path, output: str | Path, *, options: ImportOptions | None = None,
                      allow_partial: bool = False, trust_source: bool = False) -> ImportReport:
    """Read an author-released checkpoint and write an mlic checkpoint that `mlic eval` / `mlic predict` load.

    Args:
        release: the release format, one of `RELEASE_FORMATS` (`asl`, `ml_decoder`, `query2label`, `ml_gcn`).
        source: the released file, as downloaded.
        output: the mlic checkpoint to write (atomically; nothing is written when the import fails).
        options: class names, input size, timm backbone name, word vectors, the release's config, the dataset.
        allow_partial: write the checkpoint even with leftover, missing or mismatched tensors (those stay at their
            initial values); they are listed in the report either way.
        trust_source: unpickle the file fully (for releases that pickle more than tensors).

    Returns:
        The report: the model built, and every tensor consumed, derived, defaulted, left over or missing.

    Raises:
        CheckpointImportError: an unreadable or unsupported release, or an incomplete mapping without
            `allow_partial` (the message lists the tensors by name).
    """
    options = options or ImportOptions()
    reader = RELEASE_FORMATS.get(release)
    tensors, extras = load_release(source, trust_source=trust_source)
    state = SourceState(tensors, source)
    plan = reader(state, options)
    if plan.class_names is None:
        plan.class_names = _release_classes(extras.get("idx_to_class"))
    class_names = _class_names(plan, options, str(source))

    backbone_name, backbone_kwargs = plan.backbone_layout.infer(plan.backbone_tensors, plan.image_size)
    if options.backbone:
        backbone_name, backbone_kwargs = options.backbone, {}
    torch.manual_seed(0)  # what an --allow-partial import leaves unfilled is the same on every run
    model = create_model(backbone_name, plan.head, plan.num_classes, pretrained=False, head_kwargs=plan.head_kwargs,
                         backbone_kwargs=backbone_kwargs)
    mapped = _target_tensors(plan, model.backbone)
    target = model.state_dict()
    filled, missing, mismatched, defaulted = {}, [], [], []
    for key, value in target.items():
        if key not in mapped:
            (defaulted if key.endswith(COUNTER_SUFFIX) else missing).append(key)
            continue
        origin, tensor = mapped[key]
        if tuple(tensor.shape) != tuple(value.shape):
            mismatched.append(f"{key} {list(value.shape)} ← {origin} {list(tensor.shape)}")
            continue
        filled[key] = tensor.to(value.dtype)
    leftover = state.leftover() + sorted(f"{origin} (→ {key}, not in the {backbone_name} + {plan.head} model)"
                                         for key, (origin, _) in mapped.items() if key not in target)
    report = ImportReport(
        output=str(output), release=release, backbone=backbone_name, backbone_kwargs=backbone_kwargs, head=plan.head,
        head_kwargs=plan.head_kwargs, num_classes=plan.num_classes, image_size=plan.image_size,
        normalize=plan.normalize, class_order=plan.class_order, consumed=len(state.consumed), filled=len(filled),
        derived=sorted(state.derived), defaulted=defaulted, leftover=leftover, missing=missing, mismatched=mismatched,
        notes=plan.notes)
    if not report.complete and not allow_partial:
        raise CheckpointImportError(_incomplete_message(report, str(source)))
    model.load_state_dict(filled, strict=False)
    cfg = _run_config(plan, options, backbone_name, backbone_kwargs, release, str(source), str(output))
    save_checkpoint(output, {"state_dict": model.state_dict(), "config": cfg.to_dict(), "class_names": class_names,
                             "mlic_version": __version__, "weights": "imported", "epoch": None,
                             "imported": {"release": release, "source": str(source), "complete": report.complete}})
    log.info("imported %s (%s): %d tensors filled, %d defaulted, %d derived → %s", source, release, len(filled),
             len(defaulted), len(state.derived), output)
    return report


def _target_tensors(plan: ImportPlan, backbone: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """Target name → (source name, tensor): the backbone through the layout's timm conversion, the head as read."""
    converted = plan.backbone_layout.to_timm(dict(plan.backbone_tensors), backbone)
    if len(converted) != len(plan.backbone_sources):  # each layout renames one to one, in order
        raise CheckpointImportError(f"the {plan.backbone_layout.name} conversion turned {len(plan.backbone_sources)} "
                                    f"tensors into {len(converted)}")
    mapped = {f"backbone.{k}": (origin, v) for (k, v), origin in zip(converted.items(), plan.backbone_sources)}
    mapped.update({f"head.{k}": v for k, v in plan.head_tensors.items()})
    return mapped


def _incomplete_message(report: ImportReport, source: str) -> str:
    parts = []
    for title, names in (("left over in the source", report.leftover), ("missing from it", report.missing),
                         ("of another shape", report.mismatched)):
        if names:
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
            parts.append(f"{len(names)} tensors {title}: {shown}")
    notes = f" ({'; '.join(report.notes)})" if report.notes else ""
    return (f"{source}: incomplete import as {report.backbone} + {report.head}{notes}: {'; '.join(parts)}. "
            "Pass --allow-partial to write it anyway")


def _run_config(plan: ImportPlan, options: ImportOptions, backbone: str, backbone_kwargs: dict[str, Any],
                release: str, source: str, output: str) -> RunConfig:
    """The config an imported checkpoint carries: its model, the release's preprocessing and class order, and the
    dataset split `mlic eval` reads by default."""
    reader_options: dict[str, Any] = {}
    if options.dataset in ("coco", "scenes"):
        reader_options["class_order"] = plan.class_order
    if options.dataset == "coco":
        reader_options["keep_empty"] = False  # the releases' evaluation lists hold only annotated images
    return RunConfig.from_dict({
        "data": {"dataset": options.dataset, "root": options.data_root, "train_split": options.split,
                 "val_split": None, "eval_splits": [options.split], "options": reader_options,
                 "image_size": plan.image_size, "normalize": plan.normalize, "batch_size": 32},
        "model": {"backbone": backbone, "head": plan.head, "pretrained": False, "head_kwargs": plan.head_kwargs,
                  "backbone_kwargs": backbone_kwargs},
        "output_dir": str(Path(output).parent), "name": f"{release} import",
        "tags": {"imported_from": source, "release": release},
    })


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file (one per line) or a JSON list."""
    import json

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        names = json.loads(text)
        if not isinstance(names, list):
            raise CheckpointImportError(f"{path}: expected a JSON list of class names")
        return [str(n) for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]

