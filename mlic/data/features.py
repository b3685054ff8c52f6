"""Frozen-backbone feature cache: backbone features computed once into a memory-mapped file, then head-only epochs.

The cache key hashes the backbone's weights, the image size, the normalisation and the image list, so a changed
model or dataset never reuses stale features. The `.npy` file is written under a temporary name and its sidecar
`.json` last, so an interrupted extraction is recomputed rather than half-read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mlic.core.io import atomic_write_json
from mlic.data.dataset import ImageDataset, collate_skipping
from mlic.data.table import LabelledImages

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """`$MLIC_CACHE/features`, by default `~/.cache/mlic/features`."""
    return Path(os.environ.get("MLIC_CACHE", Path.home() / ".cache" / "mlic")) / "features"


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """A hash of every tensor of the backbone's state dict (names, shapes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(backbone: torch.nn.Module, table: LabelledImages, settings: dict[str, Any]) -> str:
    """The key of one split's features for one backbone and preprocessing.

    Each image counts by path, size and modification time, so regenerated or replaced images at the same paths
    (e.g. Scenes made again with other settings) get new features instead of stale ones.
    """
    digest = hashlib.blake2b(digest_size=12)
    digest.update(backbone_fingerprint(backbone).encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in table.paths:
        try:
            stat = os.stat(path)
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError:  # unreadable: the dataset reports it when the features are computed
            digest.update(str(path).encode())
    return digest.hexdigest()


def extract_features(model: torch.nn.Module, dataset: ImageDataset, out_file: Path, *, device: torch.device,
                     batch_size: int = 64, num_workers: int = 0, progress: bool = True,
                     extract: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.memmap:
    """Run `extract` (default `model.forward_features`; a cut's `model.forward_prefix`) over `dataset`
    (evaluation transform) into a float16 memmap at `out_file`.

    Unreadable images are an error here: a cached row must exist for every image of the table.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skipping)
    tmp = out_file.with_suffix(".partial.npy")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    storage: np.memmap | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _progress(loader, progress, f"features → {out_file.name}"):
                if batch["skipped"]:
                    raise OSError(f"cannot cache features: unreadable image(s) {batch['skipped']}")
                feats = (extract or model.forward_features)(batch["image"].to(device)).float().cpu().numpy()
                if storage is None:
                    storage = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                                        shape=(len(dataset), *feats.shape[1:]))
                idx = batch["index"].numpy()
                storage[idx] = feats.astype(np.float16)
    finally:
        model.train(was_training)
    if storage is None:
        raise ValueError(f"no images to extract features from for {out_file}")
    storage.flush()
    del storage
    os.replace(tmp, out_file)
    return np.load(out_file, mmap_mode="r")


def cached_features(model: torch.nn.Module, dataset: ImageDataset, *, settings: dict[str, Any],
                    cache_dir: Path | None = None, device: torch.device, batch_size: int = 64,
                    num_workers: int = 0, progress: bool = True, train_from: str | None = None) -> np.memmap:
    """Features of `dataset` from the cache, computing and storing them on a miss: the backbone's features, or
    with `train_from` the output of the model's frozen prefix before that module (part of the key)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if train_from is not None:
        settings = {**settings, "train_from": train_from}
    key = cache_key(model.backbone, dataset.table, settings)
    data_file, info_file = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if info_file.exists() and data_file.exists():
        log.info("feature cache hit %s", data_file)
        return np.load(data_file, mmap_mode="r")
    log.info("computing features for %d images into %s", len(dataset), data_file)
    features = extract_features(model, dataset, data_file, device=device, batch_size=batch_size,
                                num_workers=num_workers, progress=progress,
                                extract=None if train_from is None else model.forward_prefix)
    atomic_write_json(info_file, {"shape": list(features.shape), "dtype": "float16", "settings": settings,
                                  "source": dataset.table.source, "images": len(dataset)})
    return features


class FeatureDataset(Dataset):
    """Cached features with the table's targets: items `<key>` (`features`: the backbone's; `cut`: a cut's prefix
    output), `target`, `index` (and `observed`)."""

    def __init__(self, features: np.ndarray, table: LabelledImages, *, key: str = "features") -> None:
        if len(features) != len(table):
            raise ValueError(f"{len(features)} feature rows for {len(table)} images")
        self.features = features
        self.table = table
        self.key = key
        self.targets = torch.from_numpy(table.labels.astype(np.float32))
        self.observed = None if table.observed is None else torch.from_numpy(table.observed.astype(np.float32))

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {self.key: torch.from_numpy(np.asarray(self.features[index], dtype=np.float32)),
                "target": self.targets[index], "index": index}
        if self.observed is not None:
            item["observed"] = self.observed[index]
        return item

    def batches(self, batch_size: int, *, order: np.ndarray | None = None) -> Iterable[dict[str, Any]]:
        """Batches sliced from the memmap in `order` (much faster than per-item collation for head-only epochs).

        Rows inside a batch are read in sorted order for memmap locality; which rows form a batch follows `order`.
        """
        order = np.arange(len(self)) if order is None else np.asarray(order)
        return self.batches_from(order[start:start + batch_size] for start in range(0, len(order), batch_size))

    def batches_from(self, index_batches: Iterable[Sequence[int]]) -> Iterable[dict[str, Any]]:
        """One batch per group of row indices (e.g. a rank's shards from a `ShardedBatchSampler`)."""
        for rows in index_batches:
            idx = np.sort(np.asarray(rows, dtype=np.int64))
            batch: dict[str, Any] = {
                self.key: torch.from_numpy(np.asarray(self.features[idx], dtype=np.float32)),
                "target": self.targets[idx],
                "index": torch.from_numpy(idx).long(),
                "skipped": [],
            }
            if self.observed is not None:
                batch["observed"] = self.observed[idx]
            yield batch


def _progress(iterable: Iterable[Any], enabled: bool, desc: str) -> Iterable[Any]:
    return tqdm(iterable, desc=desc, leave=False, disable=not enabled, mininterval=1.0)
