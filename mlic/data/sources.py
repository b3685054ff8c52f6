"""The registry of dataset readers: `load_split(dataset, root, split, **options) -> LabelledImages`.

Each reader module registers a function `(root, split, **options)` that finds the split's files under `root` in that
dataset's usual layout and calls the format reader (`load_coco`, `load_voc`, ...). Configs name readers by string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlic.core.registry import Registry
from mlic.data.table import LabelledImages

DATASETS: Registry[LabelledImages] = Registry("dataset")


def load_split(dataset: str, root: str | Path, split: str, **options: Any) -> LabelledImages:
    """Read split `split` of the dataset stored under `root` with the reader registered as `dataset`."""
    return DATASETS.create(dataset, root=Path(root), split=split, **options)
