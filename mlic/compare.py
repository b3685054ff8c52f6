"""Compare classification heads on one dataset and backbone: train each, evaluate, measure its cost, and pull out
the tensors the figures show (attention maps, graph classifiers).

`train_heads(base_cfg, heads)` is the loop a comparison notebook needs, kept here so it is tested: each entry of
`heads` is one run of `base_cfg` with another head, in its own folder `output_dir/<name>`. With
`model.freeze_backbone: True` the backbone features are extracted once (the cache is keyed by backbone and images) and
every head trains on them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlic.config import RunConfig
from mlic.data.dataset import ImageDataset, build_transforms, collate_skipping
from mlic.data.table import LabelledImages
from mlic.evaluate import load_run_model
from mlic.experiments import fit_row
from mlic.models import backbone_data_config
from mlic.models.profile import profile_model

log = logging.getLogger(__name__)

REPORTED = ("mAP", "CF1", "OF1")


def head_config(base_cfg: RunConfig, name: str, spec: dict[str, Any]) -> RunConfig:
    """`base_cfg` with the head of `spec` and the run folder `output_dir/<name>`.

    `spec` keys: `head` (registered name), `head_kwargs` (its options), `overrides` (other dotted config keys, e.g.
    `{"optim.lr": 3e-4}`).
    """
    unknown = set(spec) - {"head", "head_kwargs", "overrides"}
    if unknown or "head" not in spec:
        raise ValueError(f"head entry {name!r}: expected keys 'head' (required), 'head_kwargs', 'overrides'; "
                         f"got {sorted(spec)}")
    return base_cfg.updated({
        "model.head": spec["head"],
        "model.head_kwargs": dict(spec.get("head_kwargs") or {}),
        **dict(spec.get("overrides") or {}),
        "output_dir": str(Path(base_cfg.output_dir) / name),
        "name": name,
    })


def train_heads(base_cfg: RunConfig, heads: dict[str, dict[str, Any]], *, profile: bool = True,
                latency_repeats: int = 10) -> pd.DataFrame:
    """Train and evaluate one run per head; one row per head.

    Args:
        base_cfg: everything but the head; `output_dir` becomes the parent of the runs.
        heads: display name → `{"head": ..., "head_kwargs": {...}, "overrides": {...}}` (see `head_config`).
        profile: add parameters, GFLOPs and CPU latency per image of the saved best model at the run's image size.
        latency_repeats: timed forward passes per model.

    Returns:
        Columns `head`, `mAP_<split>`, `CF1_<split>`, `OF1_<split>` for every evaluated split, `best_epoch`,
        `weights`, `train_seconds`, the cost columns of `mlic.models.profile.profile_model`, and `run_dir`.
    """
    rows = []
    for name, spec in heads.items():
        cfg = head_config(base_cfg, name, spec)
        row, result = fit_row(cfg, name, label="head", keys=REPORTED)
        if profile:
            model, _, _ = load_run_model(result.run_dir / "checkpoints" / "best.pt")
            row.update(profile_model(model, cfg.data.image_size, repeats=latency_repeats))
        row["run_dir"] = str(result.run_dir)
        rows.append(row)
    return pd.DataFrame(rows)


def load_images(table: LabelledImages, indices: Sequence[int], image_size: int, *, normalize: bool = True,
                mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, np.ndarray]:
    """Network inputs `[n, 3, S, S]` and displayable RGB images `[n, S, S, 3]` in [0, 1] of rows `indices`."""
    shown = build_transforms(image_size, train=False, mean=mean, std=std, normalize=False)
    net = build_transforms(image_size, train=False, mean=mean, std=std, normalize=normalize)
    subset = table.subset(np.asarray(indices))
    batch = collate_skipping([ImageDataset(subset, net, bad_images="raise")[i] for i in range(len(subset))])
    raw = collate_skipping([ImageDataset(subset, shown, bad_images="raise")[i] for i in range(len(subset))])
    return batch["image"], raw["image"].permute(0, 2, 3, 1).clamp(0, 1).numpy()


def attention_examples(run_dir: str | Path, table: LabelledImages, indices: Sequence[int]) -> dict[str, Any]:
    """Per-class attention maps of a run's head (ML-Decoder, Query2Label) on a few images of `table`.

    Returns:
        `images` `[n, S, S, 3]`, `attention` `[n, C, h, w]` (each class's query; ML-Decoder groups share one),
        `scores` `[n, C]` (sigmoid), `labels` `[n, C]`, `class_names`.
    """
    model, cfg, class_names = load_run_model(Path(run_dir) / "checkpoints" / "best.pt")
    dcfg = backbone_data_config(model.backbone)
    inputs, images = load_images(table, indices, cfg.data.image_size, normalize=cfg.data.normalize,
                                 mean=dcfg["mean"], std=dcfg["std"])
    with torch.inference_mode():
        logits, aux = model.forward_aux(inputs)
    if "attention" not in aux:
        raise ValueError(f"head {cfg.model.head!r} of {run_dir} exposes no attention maps")
    attention = aux["attention"][:, aux["query_of_class"]]
    if attention.dim() == 3:  # tokens: a square grid
        side = int(round(attention.shape[-1] ** 0.5))
        attention = attention.reshape(*attention.shape[:2], side, -1)
    return {"images": images, "attention": attention.float().numpy(), "scores": torch.sigmoid(logits).numpy(),
            "labels": table.labels[np.asarray(indices)], "class_names": class_names}


def classifier_similarity(run_dir: str | Path) -> np.ndarray:
    """Cosine similarity `[C, C]` of the per-label classifiers an ML-GCN run learned."""
    model, cfg, _ = load_run_model(Path(run_dir) / "checkpoints" / "best.pt")
    channels = int(model.backbone.num_features)
    with torch.inference_mode():
        _, aux = model.head.forward_aux(torch.zeros(1, channels, 1, 1))
    if "classifiers" not in aux:
        raise ValueError(f"head {cfg.model.head!r} of {run_dir} has no per-label classifiers")
    weights = torch.nn.functional.normalize(aux["classifiers"].float(), dim=1)
    return (weights @ weights.T).numpy()
