"""Reader of a generic `path,labels` CSV into `LabelledImages`, for datasets that come as a simple table.

The header must hold `path` and `labels` (other columns are ignored); a UTF-8 byte-order mark is allowed. A row's
labels are separated by `|` or by whitespace; a row with no labels is an all-negative image.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlic.core.errors import DataFormatError
from mlic.data.sources import DATASETS
from mlic.data.table import LabelledImages

logger = logging.getLogger(__name__)

_REQUIRED = ("path", "labels")


def load_csv(
    csv_file: str | Path,
    image_dir: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    separator: str | None = None,
) -> LabelledImages:
    """Read a `path,labels` CSV into a label table.

    Args:
        csv_file: the CSV; its header names the columns, `path` and `labels` are required.
        image_dir: folder the `path` column is relative to.
        class_names: the classes in column order; `None` takes the sorted set of all labels in the file.
        separator: what splits the `labels` cell; `None` picks `|` if any cell holds one, else whitespace (so a
            label name with a space needs `|`). `" "` means any whitespace.

    Returns:
        The table; image ids are the `path` cells as written.

    Raises:
        DataFormatError: a missing column, an empty `path`, or a label not in the given `class_names` (the message
            gives the data row and the file line).
    """
    csv_file = Path(csv_file)
    image_dir = Path(image_dir).absolute()
    rows = _read_rows(csv_file)
    if separator is None:
        separator = "|" if any("|" in labels for _, labels, _ in rows) else " "
    split = str.split if separator.isspace() else (lambda s: s.split(separator))
    row_labels = [[t.strip() for t in split(labels) if t.strip()] for _, labels, _ in rows]

    if class_names is None:
        names = sorted({t for tokens in row_labels for t in tokens})
    else:
        names = [str(c) for c in class_names]
        if len(set(names)) != len(names):
            raise ValueError(f"class_names has duplicates: {names}")
    index = {name: j for j, name in enumerate(names)}

    labels = np.zeros((len(rows), len(names)), dtype=np.uint8)
    for i, tokens in enumerate(row_labels):
        for t in tokens:
            j = index.get(t)
            if j is None:
                line = rows[i][2]
                raise DataFormatError(csv_file, "labels", f"row {i + 1} (line {line}): label {t!r} is not one of "
                                                          f"the class names {names}")
            labels[i, j] = 1
    return LabelledImages(
        paths=[image_dir / path for path, _, _ in rows],
        labels=labels,
        class_names=names,
        image_ids=[path for path, _, _ in rows],
        source=str(csv_file),
    )


def _read_rows(csv_file: Path) -> list[tuple[str, str, int]]:
    """(path, labels cell, file line number) per data row."""
    try:
        return _parse_rows(csv_file)
    except UnicodeDecodeError as err:
        raise DataFormatError(csv_file, "<text>", f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise DataFormatError(csv_file, "<csv>", f"not a readable CSV: {err}") from None


def _parse_rows(csv_file: Path) -> list[tuple[str, str, int]]:
    with open(csv_file, newline="", encoding="utf-8-sig") as f:  # a byte-order mark (Excel's "CSV UTF-8") is not data
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataFormatError(csv_file, "path", "empty file, expected a header with 'path' and 'labels'")
        header = [h.strip() for h in header]
        for column in _REQUIRED:
            if column not in header:
                raise DataFormatError(csv_file, column, f"missing column; the header has {header}")
        ip, il = header.index("path"), header.index("labels")
        rows = []
        for record in reader:
            if not record or all(not cell.strip() for cell in record):
                continue
            path = record[ip].strip() if ip < len(record) else ""
            if not path:
                raise DataFormatError(csv_file, "path", f"line {reader.line_num}: empty path")
            labels = record[il] if il < len(record) else ""
            rows.append((path, labels, reader.line_num))
    return rows


@DATASETS.register("csv")
def csv_split(root: Path, split: str, **options: Any) -> LabelledImages:
    """Read `root/{split}.csv`, image paths relative to `root`, with `load_csv`."""
    return load_csv(Path(root) / f"{split}.csv", root, **options)
