"""Label-subset views of a dataset: the same images with only some columns, as a registered reader.

A CPSD teacher learns a sub-task: every training image, the targets restricted to one part of the labels. The view
is a reader (`label_subset`) wrapping any other, so a teacher is an ordinary `RunConfig` (``data.dataset:
label_subset``, ``data.options: {base, classes, base_options}``) whose checkpoint `mlic eval` reads like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlic.data.sources import DATASETS, load_split
from mlic.data.table import LabelledImages


def restrict_labels(table: LabelledImages, classes: Sequence[str]) -> LabelledImages:
    """The same images with only the columns `classes` (in that order): a teacher's sub-task.

    Every image is kept — one without any of the classes becomes all-negative, as in the reference. Boxes of other
    classes are dropped and the rest re-indexed; the observed-label mask follows the columns; dataset-level extras
    are kept under ``extras["parent"]`` (their label indices refer to the full table) and the global column of each
    kept class is in ``extras["label_subset"]``.

    Raises:
        ValueError: if a class is unknown or repeated.
    """
    column = {name: i for i, name in enumerate(table.class_names)}
    unknown = [c for c in classes if c not in column]
    if unknown or len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"label_subset: classes must be distinct names of {table.source or 'the table'}; "
                         f"unknown {unknown}, got {list(classes)}")
    cols = np.asarray([column[c] for c in classes], dtype=np.int64)
    new_index = np.full(table.num_classes, -1, dtype=np.int64)
    new_index[cols] = np.arange(len(cols))
    boxes = None
    if table.boxes is not None:
        boxes = []
        for b in table.boxes:
            b = np.asarray(b, dtype=np.float32).reshape(-1, 5)
            kept = b[new_index[b[:, 0].astype(np.int64)] >= 0] if len(b) else b
            if len(kept):
                kept = kept.copy()
                kept[:, 0] = new_index[kept[:, 0].astype(np.int64)]
            boxes.append(kept)
    n = len(table)
    per_image = {k: v for k, v in table.extras.items() if isinstance(v, (np.ndarray, list, tuple)) and len(v) == n}
    parent = {k: v for k, v in table.extras.items() if k not in per_image}
    extras = {**per_image, "parent": parent, "label_subset": {"classes": list(classes), "columns": cols.tolist()}}
    return LabelledImages(paths=list(table.paths), labels=table.labels[:, cols], class_names=list(classes),
                          image_ids=list(table.image_ids), boxes=boxes,
                          observed=None if table.observed is None else table.observed[:, cols],
                          extras=extras, source=f"{table.source} [labels: {len(cols)} of {table.num_classes}]")


@DATASETS.register("label_subset")
def label_subset_split(root: Path, split: str, *, base: str, classes: Sequence[str],
                       base_options: dict[str, Any] | None = None) -> LabelledImages:
    """Reader wrapper: split `split` of dataset `base` under `root`, restricted to the columns `classes`.

    Config form (a CPSD teacher): ``data: {dataset: label_subset, root: ..., options: {base: scenes, classes: [...],
    base_options: {...}}}``. Registered with the other readers when `mlic.data` is imported.
    """
    return restrict_labels(load_split(base, root, split, **(base_options or {})), list(classes))

