"""Evaluate a saved checkpoint on dataset splits (`mlic eval`), and load a run's model for analysis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mlic import metrics
from mlic.config import RunConfig
from mlic.data.dataset import ImageDataset, build_transforms, collate_skipping
from mlic.data.sources import load_split
from mlic.models import backbone_data_config, create_model
from mlic.models.classifier import MultiLabelClassifier
from mlic.train.checkpoint import load_checkpoint
from mlic.train.engine import resolve_device


def load_run_model(checkpoint: str | Path, *, device: str | torch.device = "cpu"
                   ) -> tuple[MultiLabelClassifier, RunConfig, list[str]]:
    """The model of a checkpoint (weights as saved: EMA or raw, said in the checkpoint), its config and classes."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    cfg = RunConfig.from_dict(state["config"])
    m = cfg.model
    model = create_model(m.backbone, m.head, len(state["class_names"]), pretrained=False,
                         head_kwargs=m.head_kwargs, backbone_kwargs=m.backbone_kwargs)
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), cfg, list(state["class_names"])


@torch.inference_mode()
def predict_table(model: MultiLabelClassifier, table: Any, *, image_size: int, normalize: bool = True,
                  batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """Sigmoid scores `[N, C]` of `model` on every image of a `LabelledImages` table (evaluation transform)."""
    dcfg = backbone_data_config(model.backbone)
    transform = build_transforms(image_size, train=False, mean=dcfg["mean"], std=dcfg["std"], normalize=normalize)
    loader = DataLoader(ImageDataset(table, transform, bad_images="raise"), batch_size=batch_size,
                        collate_fn=collate_skipping)
    model.eval()
    out = np.zeros((len(table), model.num_classes), dtype=np.float32)
    for batch in loader:
        logits = model(batch["image"].to(device))
        out[batch["index"].numpy()] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def evaluate_checkpoint(checkpoint: str | Path, *, splits: list[str] | None = None, data_root: str | None = None,
                        device: str = "auto", batch_size: int | None = None, threshold: float = 0.5,
                        top_k: int | None = None) -> dict[str, dict[str, float]]:
    """Metrics (mAP CP CR CF1 OP OR OF1, percent) of a checkpoint on `splits` (default: the run's eval splits)."""
    dev = resolve_device(device)
    model, cfg, class_names = load_run_model(checkpoint, device=dev)
    data = cfg.data
    root = data_root or data.root
    results = {}
    for split in splits or [s for s in [data.val_split, *data.eval_splits] if s]:
        table = load_split(data.dataset, root, split, **data.options)
        if table.class_names != class_names:
            raise ValueError(f"split {split!r} of {root} has other classes than the checkpoint {checkpoint}")
        scores = predict_table(model, table, image_size=data.image_size, normalize=data.normalize,
                               batch_size=batch_size or data.eval_batch_size or data.batch_size, device=dev)
        results[split] = metrics.evaluate(scores, table.labels, threshold=threshold, top_k=top_k)
    return results


def load_predictions(run_dir: str | Path, split: str) -> dict[str, np.ndarray]:
    """The saved predictions of a run on `split`: `scores`, `targets`, `image_ids`, `class_names`."""
    path = Path(run_dir) / "predictions" / f"{split}.npz"
    if not path.exists():
        raise FileNotFoundError(f"no predictions for split {split!r}: {path} is missing")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def load_thresholds(run_dir: str | Path) -> tuple[np.ndarray, list[str], str]:
    """Tuned per-class thresholds of a run (`thresholds.json`): values, class names, and the split tuned on."""
    import json

    path = Path(run_dir) / "thresholds.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: train with train.threshold_split set")
    data = json.loads(path.read_text())
    names = list(data["thresholds"])
    return np.array([data["thresholds"][n] for n in names]), names, data["split"]
