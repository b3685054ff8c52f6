"""Reader of the PASCAL VOC devkit layout (`ImageSets/Main`, `Annotations/*.xml`, `JPEGImages`) into `LabelledImages`.

VOC marks some objects `difficult`; the field disagrees on what they mean for image labels, so the policy is explicit:

- `"ignore"` (default, the VOC evaluation rule and ML-GCN's `{-1, 0, +1}` targets): a class present in an image only
  through difficult objects is neither positive nor negative. `labels` holds 0 there and `observed` holds 0
  ("unknown"); `observed` is +1 where a non-difficult object is present and −1 where the class is absent. Losses and
  metrics that honour `observed` skip the unknown entries; those that ignore it see a negative.
- `"positive"`: difficult objects count like any other. `observed` is `None` (all observed).
- `"negative"`: difficult objects are dropped, so a difficult-only class is a negative. `observed` is `None`.

Boxes follow the labels: difficult objects' boxes are kept only under `"positive"`.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlic.core.errors import DataFormatError
from mlic.data.sources import DATASETS
from mlic.data.table import LabelledImages

logger = logging.getLogger(__name__)

DifficultPolicy = Literal["ignore", "positive", "negative"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}


def load_voc(
    root: str | Path,
    split: str,
    *,
    difficult: DifficultPolicy = "ignore",
    year: str | int | None = None,
) -> LabelledImages:
    """Read split `split` (e.g. `trainval`, `test`) of a VOC year folder into a label table with boxes.

    Args:
        root: the year folder (`VOCdevkit/VOC2007`), or `VOCdevkit` itself when `year` is given.
        split: the name of `ImageSets/Main/<split>.txt`.
        difficult: what a `difficult` object means for the image's labels (see the module docstring).
        year: picks `root/VOC<year>` when `root` is the devkit folder.

    Returns:
        The table in the 20 standard VOC classes' alphabetical order; image ids are the file stems; boxes are
        `[k, 5]` float32 (class index, x, y, w, h) in 0-based pixels (VOC's 1-based inclusive `xmin..xmax` becomes
        `x = xmin − 1`, `w = xmax − xmin + 1`); `observed` is set only under `difficult="ignore"`; `extras` holds
        `width` and `height` when every file has a `<size>`.

    Raises:
        FileNotFoundError: the split file is absent.
        DataFormatError: broken XML, an object without `<name>`, an unknown class, a bad box, a listed id without XML.
    """
    if difficult not in ("ignore", "positive", "negative"):
        raise ValueError(f"difficult must be 'ignore', 'positive' or 'negative', got {difficult!r}")
    root = Path(root).absolute()
    if year is not None and root.name != f"VOC{year}":
        root = root / f"VOC{year}"
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"VOC split file {split_file} not found (expected the devkit layout "
                                f"<root>/ImageSets/Main/<split>.txt, <root>/Annotations, <root>/JPEGImages)")
    ids = _read_split(split_file)

    n, c = len(ids), len(VOC_CLASSES)
    present = np.zeros((n, c), dtype=bool)  # a non-difficult object of the class is in the image
    present_difficult = np.zeros((n, c), dtype=bool)  # a difficult object of the class is in the image
    boxes: list[np.ndarray] = []
    sizes: list[tuple[int, int] | None] = []
    for i, image_id in enumerate(ids):
        xml_file = root / "Annotations" / f"{image_id}.xml"
        if not xml_file.is_file():
            raise DataFormatError(split_file, "Annotations",
                                  f"image id {image_id!r} is listed in {split_file} but {xml_file} does not exist")
        objects, size = _parse_xml(xml_file)
        sizes.append(size)
        kept = []
        for cls, is_difficult, box in objects:
            (present_difficult if is_difficult else present)[i, cls] = True
            if box is not None and (difficult == "positive" or not is_difficult):
                kept.append((cls, *box))
        boxes.append(np.asarray(kept, dtype=np.float32).reshape(-1, 5))

    observed = None
    if difficult == "positive":
        labels = present | present_difficult
    else:
        labels = present
        if difficult == "ignore":
            observed = np.where(present, 1, np.where(present_difficult, 0, -1)).astype(np.int8)
    extras: dict[str, Any] = {}
    known = [s for s in sizes if s is not None]
    if n and len(known) == n:
        extras["width"] = np.array([s[0] for s in known], dtype=np.int64)
        extras["height"] = np.array([s[1] for s in known], dtype=np.int64)
    return LabelledImages(
        paths=[root / "JPEGImages" / f"{image_id}.jpg" for image_id in ids],
        labels=labels.astype(np.uint8),
        class_names=list(VOC_CLASSES),
        image_ids=ids,
        boxes=boxes,
        observed=observed,
        extras=extras,
        source=str(split_file),
    )


def _read_split(split_file: Path) -> list[str]:
    """Image ids of a split file; the first token of each line, so per-class files (`000005 -1`) also work."""
    ids = []
    for line in _read_text(split_file).splitlines():
        tokens = line.split()
        if tokens:
            ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataFormatError(split_file, "id", f"image id {dup!r} is listed more than once")
    return ids


def _parse_xml(xml_file: Path) -> tuple[list[tuple[int, bool, tuple[float, ...] | None]], tuple[int, int] | None]:
    """Objects of one annotation file as (class index, difficult, (x, y, w, h) or None), and (width, height)."""
    try:
        tree = ET.parse(xml_file)
    except ET.ParseError as e:
        raise DataFormatError(xml_file, "<xml>", f"broken XML: {e}") from None
    ann = tree.getroot()
    objects = []
    for k, obj in enumerate(ann.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataFormatError(xml_file, "name", f"object {k} has no <name>")
        if name not in _CLASS_INDEX:
            raise DataFormatError(xml_file, "name", f"object {k} has unknown class {name!r}; "
                                                    f"VOC classes are {', '.join(VOC_CLASSES)}")
        is_difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
        objects.append((_CLASS_INDEX[name], is_difficult, _box(obj, xml_file, k)))
    size = None
    w, h = ann.findtext("size/width"), ann.findtext("size/height")
    if w is not None and h is not None:
        try:
            size = (int(float(w)), int(float(h)))
        except ValueError:
            raise DataFormatError(xml_file, "size", f"width {w!r} / height {h!r} are not numbers") from None
    return objects, size


def _box(obj: ET.Element, xml_file: Path, k: int) -> tuple[float, ...] | None:
    """An object's `<bndbox>` as 0-based (x, y, w, h); `None` when the object has no box."""
    bndbox = obj.find("bndbox")
    if bndbox is None:
        return None
    coords = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = bndbox.findtext(tag)
        try:
            coords.append(float(text or ""))
        except ValueError:
            raise DataFormatError(xml_file, tag, f"object {k} has bndbox {tag} {text!r}, expected a number") from None
    xmin, ymin, xmax, ymax = coords
    return xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0


def _read_text(path: Path) -> str:
    """A text file's contents (a UTF-8 byte-order mark dropped); a `DataFormatError` naming it if not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, "<text>", f"not UTF-8 text ({err.reason} at byte {err.start})") from None


@DATASETS.register("voc")
def voc_split(root: Path, split: str, **options: Any) -> LabelledImages:
    """Read split `split` of the VOC devkit year folder `root` (or `VOCdevkit` with `year=`) with `load_voc`."""
    return load_voc(root, split, **options)
