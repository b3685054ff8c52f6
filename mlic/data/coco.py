"""Reader of COCO instances JSON (2014 and 2017 share the format) into `LabelledImages`.

An image's labels are the categories of its annotations. Class order is a choice the reference repositories disagree
on: ASL / ML-Decoder / Query2Label sort by category id, ML-GCN / CPSD sort by category name (`person` is then 49).
The Scenes benchmark is written in this format too, so its per-image extras (e.g. `context`) come through `extras`.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlic.core.errors import BadImageError, DataFormatError
from mlic.data.sources import DATASETS
from mlic.data.table import LabelledImages, missing_images

logger = logging.getLogger(__name__)

ClassOrder = Literal["id", "alpha"]
MissingPolicy = Literal["warn", "raise", "drop"]

# Per-image keys of the official files that are provenance, not data: not worth an array of 120k strings.
_SKIP_IMAGE_KEYS = frozenset({"id", "file_name", "license", "coco_url", "flickr_url", "date_captured"})


def load_coco(
    ann_file: str | Path,
    image_dir: str | Path,
    *,
    class_order: ClassOrder = "id",
    keep_empty: bool = True,
    include_crowd: bool = True,
    check_files: bool = False,
    missing: MissingPolicy = "warn",
) -> LabelledImages:
    """Read a COCO instances file into a label table with boxes.

    Args:
        ann_file: the instances JSON (`images`, `annotations`, `categories`).
        image_dir: folder the images' `file_name`s are relative to.
        class_order: `"id"` sorts classes by category id (ASL, Query2Label), `"alpha"` by name (ML-GCN, CPSD).
        keep_empty: keep images without annotations as all-negative rows; `False` drops them, as ASL does.
        include_crowd: count `iscrowd=1` annotations as labels and boxes (all reference repositories do).
        check_files: look for every image on disk; what happens to absent ones is `missing`.
        missing: `"warn"` logs how many are absent and which, `"raise"` raises `BadImageError`, `"drop"` removes
            their rows (with a log line).

    Returns:
        The table: image ids are the COCO ids as strings, boxes are `[k, 5]` float32 (class index, x, y, w, h) in
        pixels, scalar per-image keys present on every image (e.g. `width`, `height`, Scenes' `context`) are in
        `extras` as arrays.

    Raises:
        DataFormatError: invalid JSON, a missing key or field, a duplicate or unknown id.
        BadImageError: `check_files` with `missing="raise"` and an image absent.
    """
    if class_order not in ("id", "alpha"):
        raise ValueError(f"class_order must be 'id' or 'alpha', got {class_order!r}")
    if missing not in ("warn", "raise", "drop"):
        raise ValueError(f"missing must be 'warn', 'raise' or 'drop', got {missing!r}")
    ann_file = Path(ann_file)
    image_dir = Path(image_dir).absolute()
    with _gc_paused():
        table = _build(ann_file, image_dir, class_order, keep_empty, include_crowd)
    if check_files:
        table = _check_files(table, missing)
    return table


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of JSON objects are made: it halves the load time, since
    every collection would walk the whole, still growing, acyclic structure."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _build(
    ann_file: Path, image_dir: Path, class_order: ClassOrder, keep_empty: bool, include_crowd: bool
) -> LabelledImages:
    """Parse and check the file, then assemble labels, boxes and extras (see `load_coco`)."""
    data = _read_json(ann_file)

    cat_ids, class_names = _categories(data["categories"], ann_file, class_order)
    img_ids, file_names = _images(data["images"], ann_file)
    ann_img, ann_cat, ann_box, crowd = _annotations(data["annotations"], ann_file)
    img_ids, ann_img = _common_dtype(img_ids, ann_img)
    cat_ids, ann_cat = _common_dtype(cat_ids, ann_cat)

    rows = _lookup(img_ids, ann_img, ann_file, "image_id", "images")
    cols = _lookup(cat_ids, ann_cat, ann_file, "category_id", "categories")
    if not include_crowd:
        rows, cols = rows[~crowd], cols[~crowd]
        ann_box = None if ann_box is None else ann_box[~crowd]

    n, c = len(img_ids), len(class_names)
    labels = np.zeros((n, c), dtype=np.uint8)
    labels[rows, cols] = 1
    boxes = _group_boxes(rows, cols, ann_box, n)

    extras = _image_extras(data["images"])
    image_ids = [str(i) for i in img_ids.tolist()]
    if not keep_empty:  # filter before building the table: `subset` would rebuild 120k paths once more
        keep = np.flatnonzero(labels.any(axis=1))
        labels, file_names, image_ids = labels[keep], [file_names[i] for i in keep], [image_ids[i] for i in keep]
        boxes = None if boxes is None else [boxes[i] for i in keep]
        extras = {k: v[keep] for k, v in extras.items()}
    base = str(image_dir)
    return LabelledImages(
        paths=[os.path.join(base, f) for f in file_names],  # strings: the table makes each a Path once
        labels=labels,
        class_names=class_names,
        image_ids=image_ids,
        boxes=boxes,
        extras=extras,
        source=str(ann_file),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, "<json>", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataFormatError(path, "<json>", f"not UTF-8 text: {e}") from None
    if not isinstance(data, dict):
        raise DataFormatError(path, "<json>", f"top level is a {type(data).__name__}, expected an object")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataFormatError(path, key, f"missing top-level key (keys present: {sorted(data)})")
        if not isinstance(data[key], list):
            raise DataFormatError(path, key, f"expected a list, got {type(data[key]).__name__}")
    return data


def _entry_error(path: Path, section: str, entries: list[Any], fields: tuple[str, ...]) -> DataFormatError:
    """Locate the first entry of `section` that lacks one of `fields` (the slow path, run only after a failure)."""
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return DataFormatError(path, section, f"{section}[{i}] is a {type(entry).__name__}, expected an object")
        for name in fields:
            if name not in entry:
                ident = f" (id {entry['id']})" if "id" in entry else ""
                return DataFormatError(path, name, f"{section}[{i}]{ident} has no {name!r}")
    return DataFormatError(path, section, "malformed entry")


def _id_array(values: list[Any], path: Path, field: str, section: str) -> np.ndarray:
    """Ids as an int64 array, or as strings when a file uses string ids; a fractional number (`3.7`), a boolean, a
    null or any other value is a `DataFormatError` naming the entry (never truncated to an integer)."""
    array = np.asarray(values)
    if array.dtype.kind in "biuf":  # numpy reads True among integers as 1: find booleans first
        flag = next((i for i, v in enumerate(values) if v is True or v is False), None)
        if flag is not None:
            raise DataFormatError(path, field, f"{section}[{flag}] has {field} {values[flag]!r}, expected an integer")
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if not bad.any():
            return array.astype(np.int64)  # 3.0 is the integer 3
        i = int(np.flatnonzero(bad)[0])
        raise DataFormatError(path, field, f"{section}[{i}] has {field} {values[i]!r}, expected an integer")
    for i, value in enumerate(values):  # strings, or a mix (the slow path)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataFormatError(path, field, f"{section}[{i}] has {field} {value!r}, expected an integer or a "
                                               "string")
    return np.asarray([str(v) for v in values])


def _common_dtype(ids: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make the ids and the references to them comparable (strings on both sides if either is)."""
    if (ids.dtype.kind == "U") != (refs.dtype.kind == "U"):
        return ids.astype(str), refs.astype(str)
    return ids, refs


def _categories(cats: list[Any], path: Path, class_order: ClassOrder) -> tuple[np.ndarray, list[str]]:
    """Category ids in column order and the matching class names."""
    try:
        raw_ids = [cat["id"] for cat in cats]
        names = [str(cat["name"]) for cat in cats]
    except (KeyError, TypeError):
        raise _entry_error(path, "categories", cats, ("id", "name")) from None
    ids = _id_array(raw_ids, path, "id", "categories")
    if not names:
        raise DataFormatError(path, "categories", "no categories")
    _check_unique(ids, path, "category")
    order = np.argsort(ids, kind="stable") if class_order == "id" else sorted(range(len(names)), key=names.__getitem__)
    return ids[order], [names[i] for i in order]


def _images(images: list[Any], path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        raw_ids = [im["id"] for im in images]
        files = [im["file_name"] for im in images]
    except (KeyError, TypeError):
        raise _entry_error(path, "images", images, ("id", "file_name")) from None
    ids = _id_array(raw_ids, path, "id", "images")
    bad = next((i for i, name in enumerate(files) if type(name) is not str or not name), None)
    if bad is not None:
        raise DataFormatError(path, "file_name", f"images[{bad}] (id {raw_ids[bad]!r}) has file_name "
                                                 f"{files[bad]!r}, expected a non-empty path")
    _check_unique(ids, path, "image")
    return ids, files


def _check_unique(ids: np.ndarray, path: Path, what: str) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        raise DataFormatError(path, "id", f"{what} id {uniq[counts > 1][0]} appears more than once in '{what}s'")


def _annotations(anns: list[Any], path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Image ids, category ids, boxes (`None` if no annotation has a `bbox`) and crowd flags of the annotations."""
    try:  # one light comprehension per field is faster than one loop building tuples (fewer objects, less GC)
        img = [a["image_id"] for a in anns]
        cat = [a["category_id"] for a in anns]
    except (KeyError, TypeError):
        raise _entry_error(path, "annotations", anns, ("image_id", "category_id")) from None
    if not anns:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), None, np.zeros(0, bool)
    bbox = [a.get("bbox") for a in anns]
    crowd = [a.get("iscrowd", 0) for a in anns]
    has_box = np.fromiter((b is not None for b in bbox), dtype=bool, count=len(bbox))
    boxes: np.ndarray | None = None
    if has_box.all():
        try:
            boxes = np.fromiter(itertools.chain.from_iterable(bbox), dtype=np.float32).reshape(len(bbox), 4)
            if not all(type(b) is list and len(b) == 4 for b in bbox):
                boxes = None
        except (ValueError, TypeError):
            boxes = None
        if boxes is None:
            bad = next((i for i, b in enumerate(bbox) if not _is_xywh(b)), 0)
            raise DataFormatError(path, "bbox", f"annotations[{bad}] bbox is {bbox[bad]!r}, expected [x, y, w, h]")
    elif has_box.any():
        bad = int(np.flatnonzero(~has_box)[0])
        raise DataFormatError(path, "bbox", f"annotations[{bad}] has no 'bbox' while other annotations do")
    return (_id_array(img, path, "image_id", "annotations"), _id_array(cat, path, "category_id", "annotations"),
            boxes, np.asarray(crowd, dtype=bool))


def _is_xywh(box: Any) -> bool:
    return (isinstance(box, (list, tuple)) and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box))


def _lookup(ids: np.ndarray, refs: np.ndarray, path: Path, field: str, section: str) -> np.ndarray:
    """Positions in `ids` of each annotation's reference `refs`; a reference to no id is a DataFormatError."""
    order = np.argsort(ids, kind="stable")
    keys = ids[order]
    pos = np.minimum(np.searchsorted(keys, refs), len(keys) - 1)
    found = keys[pos] == refs if len(keys) else np.zeros(len(refs), dtype=bool)
    if not found.all():
        bad = int(np.flatnonzero(~found)[0])
        raise DataFormatError(path, field, f"annotations[{bad}] refers to {field} {refs[bad].item()!r}, "
                                           f"which is not in {section!r}")
    return order[pos]


def _group_boxes(rows: np.ndarray, cols: np.ndarray, xywh: np.ndarray | None, n: int) -> list[np.ndarray] | None:
    """Split the annotation boxes per image: a list of `n` float32 arrays `[k, 5]` (class index, x, y, w, h)."""
    if xywh is None:
        return None
    table = np.concatenate([cols.astype(np.float32)[:, None], xywh], axis=1)
    order = np.argsort(rows, kind="stable")
    table = table[order]
    ends = np.cumsum(np.bincount(rows, minlength=n)).tolist()
    return [table[start:end] for start, end in zip([0, *ends[:-1]], ends)]


def _image_extras(images: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Scalar per-image keys present on every image, as arrays (Scenes writes `context`, COCO has width/height)."""
    if not images:
        return {}
    common = set(images[0]) - _SKIP_IMAGE_KEYS
    for im in images:
        if not common:
            return {}
        common.intersection_update(im.keys())
    extras = {}
    for key in sorted(common):
        values = [im[key] for im in images]
        if all(isinstance(v, (bool, int, float, str)) for v in values):
            extras[key] = np.asarray(values)
    return extras


def _check_files(table: LabelledImages, missing: MissingPolicy) -> LabelledImages:
    """Apply the `missing` policy to images not on disk (`missing_images`)."""
    absent = np.zeros(len(table), dtype=bool)
    absent[missing_images(table)] = True
    n_absent = int(absent.sum())
    if not n_absent:
        return table
    names = [str(table.paths[i]) for i in np.flatnonzero(absent)[:5]]
    shown = ", ".join(names) + (", ..." if n_absent > len(names) else "")
    if missing == "raise":
        raise BadImageError(names[0], f"image listed in {table.source} is absent ({n_absent} of {len(table)} absent: "
                                      f"{shown})")
    if missing == "drop":
        logger.warning("%s: dropping %d of %d images absent from disk: %s", table.source, n_absent, len(table), shown)
        return table.subset(~absent)
    logger.warning("%s: %d of %d images are absent from disk: %s", table.source, n_absent, len(table), shown)
    return table


@DATASETS.register("coco")
def coco_split(root: Path, split: str, **options: Any) -> LabelledImages:
    """Find split `split` under `root`: the COCO layout, else the Scenes layout, and read it with `load_coco`.

    COCO layout: `root/annotations/instances_{split}.json` with images in `root/{split}/` (split like `train2014`).
    Scenes layout: `root/annotations/{split}.json` with images in `root/images/{split}/`.
    """
    root = Path(root)
    candidates = [
        (root / "annotations" / f"instances_{split}.json", root / split),
        (root / "annotations" / f"{split}.json", root / "images" / split),
    ]
    for ann_file, image_dir in candidates:
        if ann_file.is_file():
            return load_coco(ann_file, image_dir, **options)
    tried = ", ".join(str(a) for a, _ in candidates)
    raise FileNotFoundError(f"No COCO annotation file for split {split!r} under {root}; tried {tried}")
