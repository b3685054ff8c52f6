"""The registry of dataset readers: `load_split(dataset, root, split, **options) -> LabelledImages`.

Each reader module registers a function `(root, split, **options)` that finds the split's files under `root` in that
dataset's usual layout and calls the format reader (`load_coco`, `load_voc`, ...). Configs name readers by string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlic.core import paths
from mlic.core.registry import Registry
from mlic.data.table import LabelledImages

DATASETS: Registry[LabelledImages] = Registry("dataset")


def load_split(dataset: str, root: str | Path, split: str, **options: Any) -> LabelledImages:
    """Read split `split` of the dataset stored under `root` with the reader registered as `dataset`.

    A relative `root` resolves against the lab's home (`mlic.core.paths`: ``MLIC_HOME`` or the repository root), so
    it names the same folder from a notebook, papermill and the CLI.

    Raises:
        FileNotFoundError: the reader's, naming the absolute path it looked for (and, for a relative `root`, the
            folder it was taken relative to).
    """
    folder = paths.resolve(root)
    try:
        return DATASETS.create(dataset, root=folder, split=split, **options)
    except FileNotFoundError as err:
        if folder == Path(root):
            raise
        raise FileNotFoundError(f"{err} ('{root}' is relative to {paths.home_rule()})") from err
