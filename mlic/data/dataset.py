"""Torch datasets over `LabelledImages`, the transforms of the papers' recipes (torchvision v2), and the
bad-image policy.

Train transform (ASL / ML-Decoder / CPSD recipe): squish resize to (S, S), horizontal flip, Cutout of half the side
with a random colour, RandAugment, then float conversion and the backbone's normalisation. Evaluation: squish resize
and normalisation only. A missing or undecodable image is skipped, counted and logged with its path
(`bad_images="skip"`), or raises `BadImageError` (`bad_images="raise"`). Skipping has a limit: a split none of
whose images could be read, or more than `max_bad_fraction` of them, fails with `TooManyBadImagesError`, which says
how many were skipped and in which folder the images were looked for (`check_readable`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mlic.core.errors import BadImageError, TooManyBadImagesError
from mlic.data.table import LabelledImages

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "raise")


class Cutout(torch.nn.Module):
    """Cutout as in the ASL recipe: one rectangle of `factor`·(H, W), centred at a uniformly random pixel, clipped to
    the image and filled with a random colour. Works on uint8 `[C, H, W]` tensors."""

    def __init__(self, factor: float = 0.5) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.factor <= 0:
            return image
        _, h, w = image.shape
        ch, cw = int(h * self.factor + 0.5), int(w * self.factor + 0.5)
        cy, cx = int(torch.randint(h, ()).item()), int(torch.randint(w, ()).item())
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
        colour = torch.randint(0, 256, (image.shape[0], 1, 1), dtype=torch.uint8)
        image = image.clone()
        image[:, y0:y1, x0:x1] = colour.to(image.dtype)
        return image


def build_transforms(image_size: int, *, train: bool, mean: Sequence[float], std: Sequence[float],
                     randaugment: bool = True, cutout: float = 0.5, hflip: bool = True,
                     normalize: bool = True) -> v2.Compose:
    """The train or evaluation transform on uint8 image tensors.

    Args:
        image_size: side S of the squish resize (aspect ratio is not kept, as in every MLIC reference).
        train: add flip, Cutout and RandAugment.
        mean, std: normalisation from the backbone's timm data config.
        randaugment, cutout, hflip: the train augmentations (cutout is the fraction of each side; 0 disables).
        normalize: apply mean/std (the ASL family trains on [0, 1] pixels without it).
    """
    steps: list[Any] = [v2.Resize((image_size, image_size), antialias=True)]
    if train:
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        if cutout > 0:
            steps.append(Cutout(cutout))
        if randaugment:
            steps.append(v2.RandAugment())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)


def read_image(path: str) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor `[3, H, W]`; raise `BadImageError` naming the path."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except FileNotFoundError as err:
        raise BadImageError(path, "file not found") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(path, f"cannot decode image ({type(err).__name__}: {err})") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ImageDataset(Dataset):
    """Images of a `LabelledImages` table as dicts: `image`, `target` (float [C]), `index`, and `observed` when the
    table carries an observed-label matrix.

    With `bad_images="skip"` an unreadable image yields `None`; `collate_skipping` drops it and reports its path
    in the batch's `skipped` list, so the training loop can count them.
    """

    def __init__(self, table: LabelledImages, transform: v2.Compose, *, bad_images: str = "skip",
                 cache_decoded: bool = False) -> None:
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}")
        self.table = table
        self.transform = transform
        self.bad_images = bad_images
        self.targets = torch.from_numpy(table.labels.astype(np.float32))
        self.observed = None if table.observed is None else torch.from_numpy(table.observed.astype(np.float32))
        self._cache: dict[int, torch.Tensor] | None = {} if cache_decoded else None

    def __len__(self) -> int:
        return len(self.table)

    def _decoded(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = read_image(str(self.table.paths[index]))
        if self._cache is not None:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            image = self._decoded(index)
        except BadImageError as err:
            if self.bad_images == "raise":
                raise
            log.warning("skipping bad image %s", err)
            return {"skipped": str(self.table.paths[index]), "index": index}
        item = {"image": self.transform(image), "target": self.targets[index], "index": index}
        if self.observed is not None:
            item["observed"] = self.observed[index]
        return item


def collate_skipping(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack good items into a batch; paths of skipped images go to `batch["skipped"]`, their rows to
    `batch["skipped_rows"]`."""
    skipped = [it["skipped"] for it in items if "skipped" in it]
    good = [it for it in items if "skipped" not in it]
    batch: dict[str, Any] = {"skipped": skipped, "skipped_rows": [it["index"] for it in items if "skipped" in it]}
    if not good:
        return batch
    batch["image"] = torch.stack([it["image"] for it in good])
    batch["target"] = torch.stack([it["target"] for it in good])
    batch["index"] = torch.tensor([it["index"] for it in good], dtype=torch.long)
    if "observed" in good[0]:
        batch["observed"] = torch.stack([it["observed"] for it in good])
    return batch


def check_readable(table: LabelledImages, skipped: Collection[str], *, split: str | None,
                   max_fraction: float) -> None:
    """Fail when a split has no image, none could be read, or more than `max_fraction` of them were skipped.

    Args:
        table: the split's table.
        skipped: paths of its images that were skipped (missing or undecodable).
        split: the split's name, for the message (None: the table is named by its source).
        max_fraction: the largest share of skipped images allowed (`data.max_bad_fraction`).

    Raises:
        TooManyBadImagesError: naming the count, the share, the folder(s) the images were looked for in and an
            example path.
    """
    n, k = len(table), len(skipped)
    what = f"split {split!r}" if split is not None else f"the table of {table.source or 'unknown source'}"
    if n == 0:
        raise TooManyBadImagesError(table.source or str(split), f"{what} has no images")
    if k == 0 or (k < n and k <= max_fraction * n):
        return
    examples = sorted(skipped)
    folders = sorted({str(Path(p).parent) for p in examples})
    looked = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more folders" if len(folders) > 3 else "")
    where = f"looked in {looked}"
    if k == n:
        problem = (f"no image of {what} could be read: all {n} were skipped as missing or undecodable; "
                   f"{where}; e.g. {examples[0]}. Is data.root the dataset's folder?")
    else:
        problem = (f"{k} of {n} images of {what} ({100 * k / n:.1f}%) were skipped as missing or "
                   f"undecodable, more than data.max_bad_fraction={max_fraction} allows; {where}; e.g. "
                   f"{examples[0]}. Fix or remove them, or raise data.max_bad_fraction")
    raise TooManyBadImagesError(table.source or folders[0], problem)
