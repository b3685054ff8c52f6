"""Reader of the official NUS-WIDE release layout into `LabelledImages`.

The release stores one label file per concept and split (`Groundtruth/TrainTestLabels/Labels_<c>_<Split>.txt`, one
0/1 per line) aligned line by line with the split's image list (`ImageList/<Split>Imagelist.txt`, Windows paths
such as `actor\\0001_2124494179.jpg` relative to `root/Flickr/`). The label matrix is assembled column by column.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlic.core.errors import DataFormatError
from mlic.data.sources import DATASETS
from mlic.data.table import LabelledImages

logger = logging.getLogger(__name__)

_SPLITS = {"train": "Train", "test": "Test"}


def load_nuswide(root: str | Path, split: str, *, concepts: str | Sequence[str] = "81") -> LabelledImages:
    """Read split `split` (`"train"` or `"test"`) of an official NUS-WIDE release folder.

    Args:
        root: the folder holding `Concepts81.txt`, `ImageList/`, `Groundtruth/TrainTestLabels/` and `Flickr/`.
        split: `"train"` or `"test"`.
        concepts: `"81"` reads the 81 concepts of `Concepts81.txt`; another string is a concept-list file (relative
            to `root` or absolute); a sequence of names picks those concepts, in that order.

    Returns:
        The table; image ids are the image paths relative to `Flickr/` (`actor/0001_2124494179.jpg`), since file
        names alone are only unique within a folder.

    Raises:
        FileNotFoundError: a list or label file is absent.
        DataFormatError: a label file whose line count differs from the image list, or a value other than 0 or 1.
    """
    if split not in _SPLITS:
        raise ValueError(f"NUS-WIDE split must be 'train' or 'test', got {split!r}")
    root = Path(root).absolute()
    names = _concept_names(root, concepts)
    list_file = root / "ImageList" / f"{_SPLITS[split]}Imagelist.txt"
    rel_paths = _read_image_list(list_file)

    n = len(rel_paths)
    labels = np.zeros((n, len(names)), dtype=np.uint8)
    label_dir = root / "Groundtruth" / "TrainTestLabels"
    for j, name in enumerate(names):
        labels[:, j] = _read_label_file(label_dir / f"Labels_{name}_{_SPLITS[split]}.txt", n, list_file)
    flickr = root / "Flickr"
    return LabelledImages(
        paths=[flickr / p for p in rel_paths],
        labels=labels,
        class_names=names,
        image_ids=rel_paths,
        source=str(list_file),
    )


def _concept_names(root: Path, concepts: str | Sequence[str]) -> list[str]:
    if isinstance(concepts, str):
        concept_file = root / "Concepts81.txt" if concepts == "81" else root / concepts
        if not concept_file.is_file():
            raise FileNotFoundError(f"NUS-WIDE concept list {concept_file} not found")
        names = [line.strip() for line in _read_text(concept_file).splitlines() if line.strip()]
        source = concept_file
    else:
        names = [str(c) for c in concepts]
        source = root
    if not names:
        raise DataFormatError(source, "concepts", "no concept names")
    if len(set(names)) != len(names):
        dup = next(c for c in names if names.count(c) > 1)
        raise DataFormatError(source, "concepts", f"concept {dup!r} is listed more than once")
    return names


def _read_image_list(list_file: Path) -> list[str]:
    r"""Image paths relative to `Flickr/`, with `/` separators (`actor\0001.jpg` and `C:\...\Flickr\actor\0001.jpg`)."""
    if not list_file.is_file():
        raise FileNotFoundError(f"NUS-WIDE image list {list_file} not found")
    rel = []
    for line in _read_text(list_file).splitlines():
        line = line.strip().replace("\\", "/")
        if not line:
            continue
        marker = line.rfind("Flickr/")
        rel.append(line[marker + len("Flickr/"):] if marker >= 0 else line.lstrip("/"))
    return rel


def _read_label_file(label_file: Path, n: int, list_file: Path) -> np.ndarray:
    """One concept's 0/1 column, checked against the image list's length."""
    if not label_file.is_file():
        raise FileNotFoundError(f"NUS-WIDE label file {label_file} not found")
    tokens = label_file.read_bytes().split()
    if len(tokens) != n:
        raise DataFormatError(label_file, "labels", f"{len(tokens)} values for the {n} images of {list_file}")
    values = np.array(tokens, dtype="S")
    ones = values == b"1"
    bad = ~(ones | (values == b"0"))
    if bad.any():
        idx = int(np.flatnonzero(bad)[0])
        line = _line_of_token(label_file, idx)
        raise DataFormatError(label_file, "labels", f"line {line}: value {tokens[idx].decode(errors='replace')!r} "
                                                    f"is not 0 or 1")
    return ones.astype(np.uint8)


def _line_of_token(path: Path, index: int) -> int:
    """1-based line number of the `index`-th whitespace-separated token (error path only)."""
    seen = 0
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        seen += len(line.split())
        if seen > index:
            return number
    return number


def _read_text(path: Path) -> str:
    """A text file's contents (a UTF-8 byte-order mark dropped); a `DataFormatError` naming it if not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, "<text>", f"not UTF-8 text ({err.reason} at byte {err.start})") from None


@DATASETS.register("nuswide")
def nuswide_split(root: Path, split: str, **options: Any) -> LabelledImages:
    """Read split `split` (`train` / `test`) of the official NUS-WIDE release under `root` with `load_nuswide`."""
    return load_nuswide(root, split, **options)
