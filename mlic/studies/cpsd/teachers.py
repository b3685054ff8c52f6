"""CPSD's teachers: each part's logits on the training images, in eval mode, merged to global label order and
cached per family (the student's loss reads the cache, `mlic.losses.distill`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mlic.core.io import atomic_save_npz
from mlic.data.table import LabelledImages
from mlic.inference import predict_table
from mlic.runs import Run, load_model, torch_threads
from mlic.studies.cpsd.partition import Partition
from mlic.train.engine import resolve_device


@torch.inference_mode()
def predict_logits(checkpoint: str | Path, table: LabelledImages, *, device: str = "cpu",
                   batch_size: int | None = None) -> np.ndarray:
    """Logits ``[N, C_run]`` of a run's saved weights on every image of `table`, in eval mode, evaluation transform.

    With a frozen backbone (or a cut) the backbone features (or the prefix's output) come from the cache the run
    trained on (same key: backbone weights, preprocessing, image list, cut), and only the head (or the suffix and
    the head) runs.
    """
    dev = resolve_device(device)
    model, cfg, _ = load_model(checkpoint, device=dev)
    data = cfg.data
    batch_size = batch_size or data.eval_batch_size or data.batch_size
    train_from = cfg.model.train_from
    if not (cfg.model.freeze_backbone or train_from):
        return predict_table(model, table, image_size=data.image_size, normalize=data.normalize,
                             batch_size=batch_size, device=dev, num_workers=cfg.runtime.num_workers, logits=True)
    from mlic.data.dataset import ImageDataset, build_transforms
    from mlic.data.features import cached_features
    from mlic.models import backbone_data_config

    dcfg = backbone_data_config(model.backbone)
    mean, std = list(dcfg["mean"]), list(dcfg["std"])
    images = ImageDataset(table, build_transforms(data.image_size, train=False, mean=mean, std=std,
                                                  normalize=data.normalize), bad_images="raise")
    settings = {"image_size": data.image_size, "normalize": data.normalize, "mean": mean, "std": std}
    feats = cached_features(model, images, settings=settings, device=dev, batch_size=batch_size,
                            num_workers=cfg.runtime.num_workers, progress=False, train_from=train_from)
    out = np.zeros((len(table), model.num_classes), dtype=np.float32)
    for start in range(0, len(table), batch_size):
        chunk = torch.from_numpy(np.asarray(feats[start:start + batch_size], dtype=np.float32)).to(dev)
        logits = model(chunk, from_cut=True) if train_from else model.forward_head(chunk)
        out[start:start + len(chunk)] = logits.float().cpu().numpy()
    return out


def merge_part_logits(part_logits: Sequence[np.ndarray], groups: Sequence[Sequence[int]],
                      num_classes: int) -> np.ndarray:
    """Scatter each part's logits ``[N, |part|]`` to its global label columns: ρ of seed 001, Eq. 5.

    Raises:
        ValueError: if the parts do not cover every label exactly once or a part's width is wrong.
    """
    covered = np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]) if groups else np.zeros(0, int)
    if sorted(covered.tolist()) != list(range(num_classes)):
        raise ValueError(f"parts must cover the {num_classes} labels exactly once, got {sorted(covered.tolist())}")
    n = len(part_logits[0])
    merged = np.full((n, num_classes), np.nan, dtype=np.float32)
    for logits, group in zip(part_logits, groups, strict=True):
        logits = np.asarray(logits)
        if logits.shape != (n, len(group)):
            raise ValueError(f"part logits of shape {logits.shape} for a part of {len(group)} labels and {n} images")
        merged[:, np.asarray(group, dtype=np.int64)] = logits
    return merged


def _teachers_digest(run_dirs: Sequence[Path], assign: Sequence[int]) -> str:
    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps(list(assign)).encode())
    for run_dir in run_dirs:
        stat = Run(run_dir).checkpoint("best").stat()
        digest.update(f"{run_dir}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def logits_digest(files: dict[str, str]) -> str:
    """One digest of several teacher-logits files (their recorded teacher digests)."""
    digest = hashlib.blake2b(digest_size=12)
    for name, path in sorted(files.items()):
        with np.load(path, allow_pickle=False) as cached:
            digest.update(f"{name}:{cached['digest']}".encode())
    return digest.hexdigest()


def cache_teacher_logits(partition: Partition, run_dirs: Sequence[Path], table: LabelledImages, out_file: Path, *,
                         device: str = "cpu", threads: int | None = None) -> Path:
    """Merged logits of a teacher family on `table`, written to `out_file` (reused while the teachers are unchanged).

    The file holds ``logits`` ``[N, C]``, ``image_ids``, ``class_names``, ``assign`` and a ``digest`` of the
    teachers' best checkpoints; the student's loss reads it (`mlic.losses.distill`).
    """
    digest = _teachers_digest(run_dirs, partition.assign)
    if out_file.exists():
        with np.load(out_file, allow_pickle=False) as cached:
            if "digest" in cached.files and str(cached["digest"]) == digest and len(cached["image_ids"]) == len(table):
                return out_file
    if list(table.class_names) != partition.class_names:
        raise ValueError("the table's classes differ from the partition's")
    with torch_threads(threads):
        parts = [predict_logits(Run(d).checkpoint("best"), table, device=device) for d in run_dirs]
    merged = merge_part_logits(parts, partition.groups, len(partition.class_names))
    atomic_save_npz(out_file, logits=merged, image_ids=np.asarray([str(i) for i in table.image_ids]),
                    class_names=np.asarray(partition.class_names), assign=np.asarray(partition.assign),
                    digest=np.asarray(digest))
    return out_file

