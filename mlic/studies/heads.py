"""Compare classification heads on one dataset and backbone: train each, evaluate, measure its cost, and pull out
the tensors the figures show (attention maps, graph classifiers).

`train_heads(base_cfg, heads)` is the grid a comparison notebook needs: one `mlic.runs.run_grid` variant per head
(same recipe, same seeds). With `model.freeze_backbone: True` the backbone features are extracted once (the cache is
keyed by backbone and images) and every head trains on them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlic.core.config import RunConfig
from mlic.data.table import LabelledImages
from mlic.inference import load_images
from mlic.models import backbone_data_config
from mlic.models.profile import profile_model
from mlic.runs import Run, run_grid
from mlic.stats import over_seeds

log = logging.getLogger(__name__)

_SPEC_KEYS = {"head", "head_kwargs", "overrides"}


def head_overrides(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted config overrides of one head entry.

    `spec` keys: `head` (registered name), `head_kwargs` (its options), `overrides` (other dotted config keys, e.g.
    `{"optim.lr": 3e-4}`).
    """
    unknown = set(spec) - _SPEC_KEYS
    if unknown or "head" not in spec:
        raise ValueError(f"head entry {name!r}: expected keys 'head' (required), 'head_kwargs', 'overrides'; "
                         f"got {sorted(spec)}")
    return {"model.head": spec["head"], "model.head_kwargs": dict(spec.get("head_kwargs") or {}),
            **dict(spec.get("overrides") or {})}


def train_heads(base_cfg: RunConfig, heads: Mapping[str, Mapping[str, Any]], *, seeds: Sequence[int] | None = None,
                profile: bool = True, latency_repeats: int = 10, workers: int = 1) -> pd.DataFrame:
    """Train and evaluate one run per head and seed (`run_grid`); one row per run.

    Args:
        base_cfg: everything but the head; `output_dir` becomes the parent of the runs.
        heads: display name → `{"head": ..., "head_kwargs": {...}, "overrides": {...}}` (see `head_overrides`).
        seeds: training seeds (default: the base config's).
        profile: add parameters, GFLOPs and CPU latency per image of each head's saved best model (first seed) at
            the run's image size.
        latency_repeats: timed forward passes per model.
        workers: runs trained at once (`run_grid`).

    Returns:
        `run_grid`'s columns (`variant` is the head's display name), and with `profile` the cost columns of
        `mlic.models.profile.profile_model`.
    """
    variants = {name: head_overrides(name, spec) for name, spec in heads.items()}
    table = run_grid(base_cfg, variants, seeds, workers=workers)
    if profile:
        costs = {}
        for row in table.drop_duplicates("variant").itertuples():
            model = Run(row.run_dir).load_model()
            costs[row.variant] = profile_model(model, base_cfg.data.image_size, repeats=latency_repeats)
        table = table.join(pd.DataFrame([costs[v] for v in table["variant"]], index=table.index))
    return table


COST_COLUMNS = ("params_M", "head_params_M", "GFLOPs", "head_GFLOPs", "latency_ms")


def summary(table: pd.DataFrame, splits: Sequence[str], metrics: Sequence[str] = ("mAP", "CF1", "OF1")
            ) -> pd.DataFrame:
    """Per head: mean ± std over seeds of each `<split>/<metric>`, the seed count, the mean training seconds and
    the cost columns of `train_heads` (a property of the architecture: the same for every seed)."""
    columns = [f"{s}/{m}" for s in splits for m in metrics if f"{s}/{m}" in table]
    out = over_seeds(table, "variant", columns)
    extra = [c for c in (*COST_COLUMNS, "train_seconds") if c in table]
    if extra:
        out = out.merge(table.groupby("variant", sort=False)[extra].mean().reset_index(), on="variant")
    return out


def attention_examples(run_dir: str | Path, table: LabelledImages, indices: Sequence[int]) -> dict[str, Any]:
    """Per-class attention maps of a run's head (ML-Decoder, Query2Label) on a few images of `table`.

    Returns:
        `images` `[n, S, S, 3]`, `attention` `[n, C, h, w]` (each class's query; ML-Decoder groups share one),
        `scores` `[n, C]` (sigmoid), `labels` `[n, C]`, `class_names`.
    """
    run = Run(run_dir)
    model, cfg = run.load_model(), run.config
    if "attention" not in model.head.explained_aux:
        raise ValueError(f"head {cfg.model.head!r} of {run_dir} exposes no attention maps")
    dcfg = backbone_data_config(model.backbone)
    inputs, images = load_images(table, indices, cfg.data.image_size, normalize=cfg.data.normalize,
                                 mean=dcfg["mean"], std=dcfg["std"])
    with torch.inference_mode():
        logits, aux = model.forward_aux(inputs)
    attention = aux["attention"][:, aux["query_of_class"]]
    if attention.dim() == 3:  # tokens: a square grid
        side = int(round(attention.shape[-1] ** 0.5))
        attention = attention.reshape(*attention.shape[:2], side, -1)
    return {"images": images, "attention": attention.float().numpy(), "scores": torch.sigmoid(logits).numpy(),
            "labels": table.labels[np.asarray(indices)], "class_names": run.class_names}


def classifier_similarity(run_dir: str | Path) -> np.ndarray:
    """Cosine similarity `[C, C]` of the per-label classifiers an ML-GCN run learned."""
    run = Run(run_dir)
    model = run.load_model()
    if "classifiers" not in model.head.explained_aux:
        raise ValueError(f"head {run.config.model.head!r} of {run_dir} has no per-label classifiers")
    channels = int(model.backbone.num_features)
    with torch.inference_mode():
        _, aux = model.head.forward_aux(torch.zeros(1, channels, 1, 1))
    weights = torch.nn.functional.normalize(aux["classifiers"].float(), dim=1)
    return (weights @ weights.T).numpy()
