"""`LabelledImages`: the one in-memory form every dataset reader produces and every later stage consumes.

A reader turns a dataset's own on-disk format (COCO JSON, VOC XML, NUS-WIDE lists, CSV, Scenes) into this table;
nothing downstream knows which format the data came from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class LabelledImages:
    """Image paths with their label matrix and optional boxes, observed-label mask and per-image extras.

    Attributes:
        paths: image file paths, one per row.
        labels: `N×C` uint8 matrix of true labels in {0, 1}.
        class_names: the `C` class names, in column order.
        image_ids: a stable identifier per image (COCO id, VOC file stem, ...), stored with predictions.
        boxes: per image, a float32 array `[k, 5]` of (class index, x, y, w, h) in pixels; `None` if unknown.
        observed: `N×C` int8 matrix in {1 observed positive, 0 unknown, −1 observed negative} for partial-label
            training; `None` means every label is observed.
        extras: per-image arrays of length N (e.g. Scenes' `context`), or dataset-level metadata.
        source: where the table was read from, for messages.
    """

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    image_ids: list[str] = field(default_factory=list)
    boxes: list[np.ndarray] | None = None
    observed: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        self.paths = [p if isinstance(p, Path) else Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.uint8)
        if not self.image_ids:
            self.image_ids = [p.stem for p in self.paths]
        n, c = len(self.paths), len(self.class_names)
        if self.labels.shape != (n, c):
            raise ValueError(f"{self.source or 'LabelledImages'}: labels have shape {self.labels.shape}, "
                             f"expected ({n}, {c}) for {n} images and {c} classes")
        if self.labels.size and self.labels.max() > 1:
            raise ValueError(f"{self.source or 'LabelledImages'}: labels must be 0 or 1")
        if len(self.image_ids) != n:
            raise ValueError(f"{self.source or 'LabelledImages'}: {len(self.image_ids)} image ids for {n} images")
        if self.boxes is not None and len(self.boxes) != n:
            raise ValueError(f"{self.source or 'LabelledImages'}: {len(self.boxes)} box lists for {n} images")
        if self.observed is not None:
            self.observed = np.asarray(self.observed, dtype=np.int8)
            if self.observed.shape != (n, c):
                raise ValueError(f"{self.source or 'LabelledImages'}: observed has shape {self.observed.shape}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: Sequence[int] | np.ndarray) -> LabelledImages:
        """Rows `index` (integer positions or a boolean mask) as a new table; per-image extras follow."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        n = len(self)
        extras = {k: (np.asarray(v)[idx] if _is_per_image(v, n) else v) for k, v in self.extras.items()}
        return LabelledImages(
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            image_ids=[self.image_ids[i] for i in idx],
            boxes=None if self.boxes is None else [self.boxes[i] for i in idx],
            observed=None if self.observed is None else self.observed[idx],
            extras=extras,
            source=self.source,
        )

    def evaluation_mask(self) -> np.ndarray | None:
        """`[N, C]` booleans of the entries that count in evaluation: the observed ones (VOC's difficult objects
        under `difficult="ignore"` are unknown, neither positive nor negative); None when every entry counts."""
        return None if self.observed is None else self.observed != 0

    def with_observed(self, observed: np.ndarray) -> LabelledImages:
        """The same table with an observed-label matrix attached (for partial / single-positive training)."""
        table = self.subset(np.arange(len(self)))
        table.observed = np.asarray(observed, dtype=np.int8)
        table.__post_init__()
        return table

    def label_frequencies(self) -> np.ndarray:
        """Number of images carrying each label, shape `[C]`."""
        return self.labels.sum(axis=0, dtype=np.int64)

    def labels_per_image(self) -> np.ndarray:
        """Number of labels of each image, shape `[N]`."""
        return self.labels.sum(axis=1, dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """A few numbers that describe the table: images, classes, labels per image, empty images, rarest class."""
        per_image = self.labels_per_image()
        freq = self.label_frequencies()
        return {
            "images": len(self),
            "classes": self.num_classes,
            "labels_per_image": float(per_image.mean()) if len(self) else 0.0,
            "images_without_labels": int((per_image == 0).sum()),
            "classes_without_images": int((freq == 0).sum()),
            "min_class_count": int(freq.min()) if freq.size else 0,
            "max_class_count": int(freq.max()) if freq.size else 0,
        }


def _is_per_image(value: Any, n: int) -> bool:
    return isinstance(value, (np.ndarray, list, tuple)) and len(value) == n


def summary_table(tables: dict[str, LabelledImages]) -> Any:
    """One row of `LabelledImages.summary()` per split, for a notebook's data overview."""
    import pandas as pd

    return pd.DataFrame([{"split": name, **table.summary()} for name, table in tables.items()])


def missing_images(table: LabelledImages) -> list[int]:
    """Rows of `table` whose image file does not exist (one directory listing per folder, not one stat per file)."""
    listed: dict[Path, set[str]] = {}
    missing = []
    for row, path in enumerate(table.paths):
        folder = path.parent
        if folder not in listed:
            try:
                listed[folder] = set(os.listdir(folder))
            except OSError:
                listed[folder] = set()
        if path.name not in listed[folder]:
            missing.append(row)
    return missing
