"""Frozen-backbone feature cache: backbone features computed once into a memory-mapped file, then head-only epochs.

The cache key hashes the backbone's weights, the image size, the normalisation and the image list, so a changed
model or dataset never reuses stale features. An entry is `<key>.npy` (one row per image of the table) and its
sidecar `<key>.json` (shape, settings, the rows whose image could not be read), written in that order, so an entry
is complete exactly when its sidecar exists.

Any number of processes on one machine may share the cache. An entry is computed by the first process that asks
for it, under the entry's lock (`<key>.lock`, `filelock`); the others wait for the lock and then read what the
first one wrote ("first writer wins, others wait"). The `.npy` is written under a unique temporary name, with its
full size reserved on disk before any row is written (a full disk is a `DiskFullError` rather than a `SIGBUS`
from the memory map), and renamed into place when complete; temporary files that killed writers left behind are
removed when their entry's lock is free.

Unreadable images follow the dataset's policy: under `bad_images="raise"` extraction stops at the first one; under
`"skip"` their rows stay zero, are listed in the sidecar and reported to the caller, who leaves them out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mlic.core.errors import BadImageError
from mlic.core.io import TEMPORARY_GLOB, atomic_path, atomic_write_json, is_no_space
from mlic.data.dataset import ImageDataset, check_readable, collate_skipping
from mlic.data.table import LabelledImages

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """`$MLIC_CACHE/features`, by default `~/.cache/mlic/features`."""
    return Path(os.environ.get("MLIC_CACHE", Path.home() / ".cache" / "mlic")) / "features"


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """A hash of every tensor of the backbone's state dict (names, shapes and values)."""
    return state_fingerprint(backbone.state_dict())


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of named tensors (names, shapes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(fingerprint: str, table: LabelledImages, settings: dict[str, Any]) -> str:
    """The key of one split's features: the `fingerprint` of the weights that compute them (`backbone_fingerprint`,
    or a cut's frozen prefix), the preprocessing `settings` and the images.

    Each image counts by path, size and modification time, so regenerated or replaced images at the same paths
    (e.g. Scenes made again with other settings) get new features instead of stale ones.
    """
    digest = hashlib.blake2b(digest_size=12)
    digest.update(fingerprint.encode())
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
                     skipped: list[int] | None = None,
                     extract: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.memmap:
    """Run `extract` (default `model.forward_features`; a cut's `model.forward_prefix`) over `dataset`
    (evaluation transform) into a float16 memmap at `out_file`.

    Unreadable images follow `dataset.bad_images`: `"raise"` stops at the first, `"skip"` leaves its row zero and
    appends the row to `skipped`. The file appears at `out_file` only when complete.

    Raises:
        TooManyBadImagesError: no image of the dataset could be read.
        DiskFullError: the disk cannot hold the features (nothing is left behind).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skipping)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    bad_rows: list[int] = []
    bad_paths: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with atomic_path(out_file) as tmp:
            storage: np.memmap | None = None
            with torch.inference_mode():
                for batch in _progress(loader, progress, f"features → {out_file.name}"):
                    bad_rows += batch["skipped_rows"]
                    bad_paths += batch["skipped"]
                    if "image" not in batch:
                        continue
                    feats = (extract or model.forward_features)(batch["image"].to(device)).float().cpu().numpy()
                    if storage is None:
                        storage = _open_reserved(tmp, (len(dataset), *feats.shape[1:]))
                    storage[batch["index"].numpy()] = feats.astype(np.float16)
            if storage is None:  # an empty table, or no image could be read
                check_readable(dataset.table, bad_paths, split=None, max_fraction=1.0)
                raise AssertionError("unreachable: check_readable raises for an empty or unreadable table")
            storage.flush()
            del storage
    finally:
        model.train(was_training)
    if skipped is not None:
        skipped += sorted(bad_rows)
    return np.load(out_file, mmap_mode="r")


def _open_reserved(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A float16 `.npy` memmap of `shape` at `path`, its blocks reserved on disk first: writing into a sparse memory
    map on a full disk kills the process with SIGBUS, a reservation fails with ENOSPC instead."""
    storage = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - macOS, Windows
        return storage
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if is_no_space(err):
            raise  # `atomic_path` turns it into a DiskFullError naming the entry and removes the file
        log.debug("cannot reserve %s on disk (%s); writing it sparse", path, err)  # file system without fallocate
    finally:
        os.close(fd)
    return storage


def cached_features(model: torch.nn.Module, dataset: ImageDataset, *, settings: dict[str, Any],
                    cache_dir: Path | None = None, device: torch.device, batch_size: int = 64,
                    num_workers: int = 0, progress: bool = True, skipped: list[int] | None = None,
                    train_from: str | None = None) -> np.memmap:
    """Features of `dataset` from the cache, computing and storing them on a miss (safe across processes): the
    backbone's features, or with `train_from` the output of the model's frozen prefix before that module (keyed by
    the prefix's own tensors, so a model trained from the cut finds the entries it trained on).

    Args:
        skipped: a list to fill with the rows whose image could not be read (their features are zeros); a cached
            entry with such rows raises `BadImageError` under `bad_images="raise"`.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if train_from is None:
        fingerprint = backbone_fingerprint(model.backbone)
    else:  # a cut's entry depends on the frozen prefix alone, not on the trained suffix
        settings = {**settings, "train_from": train_from}
        fingerprint = state_fingerprint(model.cut.frozen_state())
    key = cache_key(fingerprint, dataset.table, settings)
    data_file, info_file = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temporaries(cache_dir)
    found = _read_entry(data_file, info_file)
    if found is None:
        with _entry_lock(cache_dir, key, data_file):
            found = _read_entry(data_file, info_file)  # another process may have written it while we waited
            if found is None:
                log.info("computing features for %d images into %s", len(dataset), data_file)
                bad_rows: list[int] = []
                features = extract_features(model, dataset, data_file, device=device, batch_size=batch_size,
                                            num_workers=num_workers, progress=progress, skipped=bad_rows,
                                            extract=None if train_from is None else model.forward_prefix)
                atomic_write_json(info_file, {"shape": list(features.shape), "dtype": "float16",
                                              "settings": settings, "source": dataset.table.source,
                                              "images": len(dataset), "skipped_rows": bad_rows})
                found = features, bad_rows
    else:
        log.info("feature cache hit %s", data_file)
    features, bad_rows = found
    if bad_rows and dataset.bad_images == "raise":
        path = dataset.table.paths[bad_rows[0]]
        raise BadImageError(path, f"cannot be read ({len(bad_rows)} unreadable image(s) in this split, recorded in "
                                  f"{info_file})")
    if skipped is not None:
        skipped += bad_rows
    return features


def _read_entry(data_file: Path, info_file: Path) -> tuple[np.memmap, list[int]] | None:
    """A complete cache entry (features, unreadable rows), or None."""
    if not (info_file.exists() and data_file.exists()):
        return None
    info = json.loads(info_file.read_text())
    return np.load(data_file, mmap_mode="r"), [int(r) for r in info.get("skipped_rows", [])]


@contextlib.contextmanager
def _entry_lock(cache_dir: Path, key: str, data_file: Path) -> Iterator[None]:
    """Hold the lock of one cache entry; logs when another process holds it (it is computing the entry)."""
    lock = filelock.FileLock(cache_dir / f"{key}.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.info("another process is computing %s; waiting for it", data_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def remove_abandoned_temporaries(cache_dir: Path) -> list[Path]:
    """Delete the temporary files of entries whose lock is free: their writers were killed mid-write (a live writer
    holds its entry's lock)."""
    removed = []
    for tmp in cache_dir.glob(TEMPORARY_GLOB):
        key = tmp.name.lstrip(".").split(".", 1)[0]
        lock = filelock.FileLock(cache_dir / f"{key}.lock")
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            continue
        try:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        finally:
            lock.release()
    if removed:
        log.info("%s: removed %d temporary file(s) left by interrupted feature extraction", cache_dir, len(removed))
    return removed


class FeatureDataset(Dataset):
    """Cached features with the table's targets: items `<key>` (`features`: the backbone's; `cut`: a cut's prefix
    output), `target`, `index` (and `observed`).

    `rows` are the table rows to serve (default: all); rows whose image could not be read are left out this way.
    Positions (`0 .. len - 1`) select among `rows`; `index` is always the table row.
    """

    def __init__(self, features: np.ndarray, table: LabelledImages, *, rows: Sequence[int] | None = None,
                 key: str = "features") -> None:
        if len(features) != len(table):
            raise ValueError(f"{len(features)} feature rows for {len(table)} images")
        self.features = features
        self.table = table
        self.key = key
        self.rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.targets = torch.from_numpy(table.labels.astype(np.float32))
        self.observed = None if table.observed is None else torch.from_numpy(table.observed.astype(np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = int(self.rows[position])
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
        """One batch per group of positions (e.g. a rank's shards from a `ShardedBatchSampler`)."""
        for positions in index_batches:
            idx = np.sort(self.rows[np.asarray(positions, dtype=np.int64)])
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
