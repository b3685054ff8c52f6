"""Inference with trained models: scores on a dataset table, the metrics of a checkpoint on dataset splits
(`mlic eval`), and network inputs for a few images. One evaluation loop for every caller."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mlic import metrics
from mlic.data.dataset import ImageDataset, build_transforms, collate_skipping
from mlic.data.sources import load_split
from mlic.data.table import LabelledImages
from mlic.models import backbone_data_config
from mlic.models.classifier import MultiLabelClassifier
from mlic.runs import checkpoint_of, load_model
from mlic.train.engine import resolve_device


@torch.inference_mode()
def predict_table(model: MultiLabelClassifier, table: LabelledImages, *, image_size: int, normalize: bool = True,
                  batch_size: int = 64, device: str | torch.device = "cpu", num_workers: int = 0,
                  logits: bool = False) -> np.ndarray:
    """Sigmoid scores `[N, C]` (or the raw `logits`) of `model` on every image of a table (evaluation transform)."""
    dcfg = backbone_data_config(model.backbone)
    transform = build_transforms(image_size, train=False, mean=dcfg["mean"], std=dcfg["std"], normalize=normalize)
    loader = DataLoader(ImageDataset(table, transform, bad_images="raise"), batch_size=batch_size,
                        collate_fn=collate_skipping, num_workers=num_workers)
    model.eval()
    out = np.zeros((len(table), model.num_classes), dtype=np.float32)
    for batch in loader:
        raw = model(batch["image"].to(device)).float()
        out[batch["index"].numpy()] = (raw if logits else torch.sigmoid(raw)).cpu().numpy()
    return out


def evaluate_checkpoint(checkpoint: str | Path, *, splits: list[str] | None = None, data_root: str | None = None,
                        device: str = "auto", batch_size: int | None = None, threshold: float = 0.5,
                        top_k: int | None = None) -> dict[str, dict[str, float]]:
    """Metrics (mAP CP CR CF1 OP OR OF1, percent) of a checkpoint (or run folder) on `splits` (default: the run's
    validation and evaluation splits)."""
    dev = resolve_device(device)
    model, cfg, class_names = load_model(checkpoint_of(checkpoint), device=dev)
    data = cfg.data
    root = data_root or data.root
    results = {}
    for split in splits or [s for s in [data.val_split, *data.eval_splits] if s]:
        table = load_split(data.dataset, root, split, **data.options)
        if table.class_names != class_names:
            raise ValueError(f"split {split!r} of {root} has other classes than the checkpoint {checkpoint}")
        scores = predict_table(model, table, image_size=data.image_size, normalize=data.normalize,
                               batch_size=batch_size or data.eval_batch_size or data.batch_size, device=dev)
        results[split] = metrics.evaluate(scores, table.labels, threshold=threshold, top_k=top_k,
                                          mask=table.evaluation_mask())
    return results


def load_images(table: LabelledImages, indices: Sequence[int], image_size: int, *, normalize: bool = True,
                mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, np.ndarray]:
    """Network inputs `[n, 3, S, S]` and displayable RGB images `[n, S, S, 3]` in [0, 1] of rows `indices`."""
    shown = build_transforms(image_size, train=False, mean=mean, std=std, normalize=False)
    net = build_transforms(image_size, train=False, mean=mean, std=std, normalize=normalize)
    subset = table.subset(np.asarray(indices))
    batch = collate_skipping([ImageDataset(subset, net, bad_images="raise")[i] for i in range(len(subset))])
    raw = collate_skipping([ImageDataset(subset, shown, bad_images="raise")[i] for i in range(len(subset))])
    return batch["image"], raw["image"].permute(0, 2, 3, 1).clamp(0, 1).numpy()
