"""Inference with trained models: scores on a dataset table, the metrics of a checkpoint on dataset splits
(`mlic eval`), predictions on one's own images (`mlic predict`), and network inputs for a few images. One evaluation
loop for every caller."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mlic import metrics
from mlic.core.errors import BadImageError, DataFormatError
from mlic.data.dataset import ImageDataset, build_transforms, collate_skipping, read_image
from mlic.data.sources import load_split
from mlic.data.table import LabelledImages
from mlic.models import backbone_data_config
from mlic.models.classifier import MultiLabelClassifier
from mlic.runs import Run, checkpoint_of, load_model
from mlic.train.engine import resolve_device

log = logging.getLogger(__name__)


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
                        top_k: int | None = None, mode: str = "noninterp") -> dict[str, dict[str, float]]:
    """Metrics (mAP CP CR CF1 OP OR OF1, percent) of a checkpoint (or run folder) on `splits` (default: the run's
    validation and evaluation splits); `mode` is the AP convention (`voc_interp` for Query2Label's numbers)."""
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
        results[split] = metrics.evaluate(scores, table.labels, threshold=threshold, top_k=top_k, mode=mode,
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


# ---------------------------------------------------------------------------------------------------------------------
# Predictions on one's own images
# ---------------------------------------------------------------------------------------------------------------------
#: file extensions a folder input is searched for (recursively, case-insensitive)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: columns of a prediction table before the per-class scores
PREDICTION_COLUMNS = ("path", "labels", "error")
DEFAULT_THRESHOLD = 0.5


@dataclass
class InferenceModel:
    """A trained model with what inference needs: class names, the evaluation preprocessing, tuned thresholds.

    Attributes:
        model: the classifier, in eval mode.
        class_names: the C classes, in output order.
        image_size: side of the squish resize.
        normalize: apply the backbone's mean/std (the ASL family uses [0, 1] pixels).
        mean, std: the backbone's normalisation (timm's data config).
        thresholds: tuned per-class thresholds `[C]` of the run (`thresholds.json`), or None.
        threshold_split: the split they were tuned on.
        checkpoint: the checkpoint file loaded.
    """

    model: MultiLabelClassifier
    class_names: list[str]
    image_size: int
    normalize: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    thresholds: np.ndarray | None = None
    threshold_split: str | None = None
    checkpoint: Path | None = None

    def transform(self) -> v2.Compose:
        """The evaluation transform the run was evaluated with (squish resize, [0, 1], mean/std)."""
        return build_transforms(self.image_size, train=False, mean=self.mean, std=self.std, normalize=self.normalize)


def load_inference_model(path: str | Path | Run, *, device: str | torch.device = "cpu") -> InferenceModel:
    """A run folder or checkpoint file as an `InferenceModel`; a run's tuned thresholds travel with it (also when
    the path is one of the run's checkpoint files)."""
    checkpoint = checkpoint_of(path.path if isinstance(path, Run) else path)
    model, cfg, class_names = load_model(checkpoint, device=device)
    dcfg = backbone_data_config(model.backbone)
    loaded = InferenceModel(model=model, class_names=class_names, image_size=cfg.data.image_size,
                            normalize=cfg.data.normalize, mean=tuple(dcfg["mean"]), std=tuple(dcfg["std"]),
                            checkpoint=checkpoint)
    run = _run_of(checkpoint)
    if run is not None and run.thresholds_file.is_file():
        values, names, split = run.thresholds()
        if names != class_names:
            raise ValueError(f"{run.thresholds_file}: its classes differ from the checkpoint's {checkpoint}")
        loaded.thresholds, loaded.threshold_split = values.astype(np.float32), split
    return loaded


def _run_of(checkpoint: Path) -> Run | None:
    """The run folder `checkpoint` belongs to, if any (asked of `Run`, which alone knows the layout)."""
    resolved = checkpoint.resolve()
    for folder in list(resolved.parents)[:3]:
        run = Run(folder)
        if any(p.resolve() == resolved for p in run.checkpoints()):
            return run
    return None


def image_paths(inputs: str | Path | Iterable[str | Path], *, image_dir: str | Path | None = None) -> list[Path]:
    """The images of `inputs`: image files, folders (searched recursively for `IMAGE_EXTENSIONS`), a dataset CSV
    (its `path` column, relative to the CSV's folder or `image_dir`) or a COCO instances JSON (its images'
    `file_name`s, relative to `image_dir`, else the COCO or Scenes image folder of that annotation file).

    A file that is neither a CSV, a JSON nor a folder is taken as an image, so an unreadable one still gets a row.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                log.warning("%s: no images (%s) in this folder", item, " ".join(IMAGE_EXTENSIONS))
            paths.extend(found)
        elif item.suffix.lower() == ".csv":
            paths.extend(_csv_paths(item, image_dir))
        elif item.suffix.lower() == ".json":
            paths.extend(_coco_paths(item, image_dir))
        elif not item.exists():
            raise FileNotFoundError(f"{item}: no such image, folder, CSV or COCO file")
        else:
            paths.append(item)
    return paths


def _csv_paths(csv_file: Path, image_dir: str | Path | None) -> list[Path]:
    base = Path(image_dir) if image_dir is not None else csv_file.parent
    with open(csv_file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in [f.strip() for f in reader.fieldnames]:
            raise DataFormatError(csv_file, "path", f"missing column; the header has {reader.fieldnames}")
        column = next(f for f in reader.fieldnames if f.strip() == "path")
        return [base / row[column].strip() for row in reader if (row.get(column) or "").strip()]


def _coco_paths(ann_file: Path, image_dir: str | Path | None) -> list[Path]:
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
        names = [str(image["file_name"]) for image in data["images"]]
    except json.JSONDecodeError as err:
        raise DataFormatError(ann_file, "images", f"not valid JSON ({err})") from None
    except (KeyError, TypeError) as err:
        raise DataFormatError(ann_file, "images", f"expected a COCO file with images[].file_name ({err})") from None
    if image_dir is None:
        split = ann_file.stem.removeprefix("instances_")
        root = ann_file.parent.parent
        candidates = [root / split, root / "images" / split, ann_file.parent]
        image_dir = next((c for c in candidates if c.is_dir() and names and (c / names[0]).exists()), candidates[0])
    return [Path(image_dir) / name for name in names]


class _PredictionImages(Dataset):
    """Images by path through the evaluation transform; an unreadable one yields its error instead."""

    def __init__(self, paths: Sequence[Path], transform: v2.Compose) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return {"index": index, "image": self.transform(read_image(str(self.paths[index])))}
        except BadImageError as err:
            return {"index": index, "error": err.problem}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [it for it in items if "image" in it]
    return {"index": [it["index"] for it in good], "image": torch.stack([it["image"] for it in good]) if good else None,
            "errors": {it["index"]: it["error"] for it in items if "error" in it}}


def predict(model: str | Path | Run | InferenceModel, inputs: str | Path | Iterable[str | Path], *,
            threshold: float | None = None, top_k: int | None = None, batch_size: int = 32,
            device: str | torch.device = "auto", num_workers: int = 0, image_dir: str | Path | None = None,
            progress: bool = False) -> pd.DataFrame:
    """Scores of every class and the predicted label set for each image of `inputs`.

    The scores are the sigmoid outputs of the evaluation path the run used (squish resize, normalisation), so they
    equal the run's `predictions/<split>.npz` for the same images (to float32 rounding for a run trained end to
    end; a run evaluated from the float16 feature cache was scored on rounded features, which differ by about
    5e-5 for a query2label head).

    Args:
        model: a run folder, a checkpoint file, a `Run`, or an `InferenceModel`.
        inputs: image files, folders, a dataset CSV or a COCO JSON, or a list of them (see `image_paths`).
        threshold: one threshold for every class; default: the run's tuned per-class thresholds
            (`thresholds.json`) when it has them, else 0.5.
        top_k: predict each image's k highest-scoring classes instead of thresholding.
        batch_size, device, num_workers: the evaluation loop's (`device="auto"`: CUDA when present).
        image_dir: folder the paths of a CSV / COCO input are relative to.
        progress: show a progress bar.

    Returns:
        One row per image, in input order: `path`, `labels` (the predicted classes joined by `|`, as the CSV
        reader reads them), `error` (empty, or why the image could not be read: its scores are then NaN), and one
        float column per class. `attrs["decision"]` says how labels were chosen, `attrs["class_names"]` the classes.
    """
    if threshold is not None and top_k is not None:
        raise ValueError("give a threshold or top_k, not both")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    loaded = model if isinstance(model, InferenceModel) else load_inference_model(model, device=dev)
    net = loaded.model.to(dev).eval()
    names = loaded.class_names
    clashes = sorted(set(names) & set(PREDICTION_COLUMNS))
    if clashes:
        raise ValueError(f"class names {clashes} clash with the prediction table's own columns {PREDICTION_COLUMNS}")
    paths = image_paths(inputs, image_dir=image_dir)
    scores = np.full((len(paths), len(names)), np.nan, dtype=np.float32)
    errors = [""] * len(paths)
    loader = DataLoader(_PredictionImages(paths, loaded.transform()), batch_size=batch_size, collate_fn=_collate,
                        num_workers=num_workers)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="predict", unit="batch")
    with torch.inference_mode():
        for batch in loader:
            for index, problem in batch["errors"].items():
                errors[index] = problem
                log.warning("%s: %s", paths[index], problem)
            if batch["image"] is not None:
                scores[batch["index"]] = torch.sigmoid(net(batch["image"].to(dev)).float()).cpu().numpy()
    chosen, decision = _decide(scores, loaded, threshold=threshold, top_k=top_k)
    labels = ["|".join(n for n, on in zip(names, row) if on) for row in chosen]
    table = pd.DataFrame({"path": [str(p) for p in paths], "labels": labels, "error": errors})
    table = pd.concat([table, pd.DataFrame(scores, columns=names)], axis=1)
    table.attrs.update({"decision": decision, "class_names": list(names)})
    return table


def _decide(scores: np.ndarray, loaded: InferenceModel, *, threshold: float | None, top_k: int | None
            ) -> tuple[np.ndarray, str]:
    """Boolean `[N, C]` predicted labels and a sentence saying how they were chosen (NaN rows predict nothing)."""
    valid = ~np.isnan(scores).any(axis=1, keepdims=True)
    if top_k is not None:
        k = min(top_k, scores.shape[1])
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=1, kind="stable")[:, :k]
        chosen = np.zeros(scores.shape, dtype=bool)
        np.put_along_axis(chosen, order, True, axis=1)
        return chosen & valid, f"top {k} classes per image"
    if threshold is not None:
        limit, decision = np.full(scores.shape[1], threshold, dtype=np.float32), f"threshold {threshold}"
    elif loaded.thresholds is not None:
        limit = loaded.thresholds
        decision = f"per-class thresholds tuned on {loaded.threshold_split} (thresholds.json)"
    else:
        limit, decision = np.full(scores.shape[1], DEFAULT_THRESHOLD, dtype=np.float32), "threshold 0.5"
    return (np.nan_to_num(scores, nan=-np.inf) >= limit[None, :]) & valid, decision


def write_predictions(table: pd.DataFrame, path: str | Path) -> None:
    """Write a `predict` table atomically: `.csv` as is, `.json` as records with `labels` as a list and `scores` as
    a class → score mapping (null for an unreadable image)."""
    from mlic.core.io import atomic_path, atomic_write_json

    path = Path(path)
    names = table.attrs.get("class_names") or [c for c in table.columns if c not in PREDICTION_COLUMNS]
    if path.suffix.lower() == ".json":
        records = [{"path": row["path"], "labels": [n for n in row["labels"].split("|") if n],
                    "error": row["error"] or None,
                    "scores": None if row["error"] else {n: float(row[n]) for n in names}}
                   for _, row in table.iterrows()]
        atomic_write_json(path, {"decision": table.attrs.get("decision"), "class_names": names,
                                 "predictions": records})
    elif path.suffix.lower() == ".csv":
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    else:
        raise ValueError(f"{path}: the output must be a .csv or .json file")
