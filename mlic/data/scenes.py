"""Scenes: the embedded multi-label benchmark, generated on the fly with known truth.

Real multi-label data cannot be downloaded here, so the lab draws its own. Each image shows 1 to `max_objects` objects
on a textured background. The objects are handwritten digits (real glyphs from scikit-learn's digits data set) and
procedurally drawn shapes, 20 labels in all. The images are written in COCO instances format, so they go through the
same reader as real data.

The structure a model can lean on is planted on purpose and kept as truth:

* five scene **contexts**, each with a core **group** of four labels that co-occur and its own background style;
* long-tailed label frequencies (Zipf-like weights across contexts and inside each group);
* three shifted test splits that take apart the two cues a model can lean on (a factorial design):
  **test_bg** draws labels from a context as test does but paints the background of a *different* context (the
  background cue misleads, co-occurrence is intact); **test_cooc** draws labels independently of any context (with
  the training marginals) on the background of the first object's context (the companions are gone, the background
  still fits one object); **test_shift** breaks both (independent labels, a random background). The drops from test
  to test_bg and to test_cooc measure how much a model leans on backgrounds and on co-occurring objects.

The truth kept is every object's tight box (for CAM pointing-game scores), the planted groups (for checking that a
spectral partition recovers them) and each image's context (for gate analyses). A box spans the whole object, the
pixels at least 20% opaque, even where a later object covers part of it (overlaps are limited by `max_overlap`).

Generation is deterministic from the seed, byte for byte: image `i` of split `s` draws from its own generator seeded by
`(seed, split id, i)`, so the output does not depend on how the work is chunked over processes. Identical bytes are
promised for the same platform and library versions (numpy, Pillow, zlib).
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import logging
import math
import os
import statistics
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw
from tqdm.auto import tqdm

from mlic.core import paths
from mlic.core.io import atomic_write_json, atomic_write_text
from mlic.data.coco import load_coco
from mlic.data.sources import DATASETS
from mlic.data.table import LabelledImages

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.1"  # 1.1 added test_bg and test_cooc; the four earlier splits are byte-identical to 1.0

# new splits go at the end: a split's id seeds its images, so the earlier splits keep their bytes
SPLITS: tuple[str, ...] = ("train", "val", "test", "test_shift", "test_bg", "test_cooc")
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
SHIFT_SPLIT = "test_shift"
BACKGROUND_SPLIT = "test_bg"
COOCCURRENCE_SPLIT = "test_cooc"
SHIFTED_SPLITS = (SHIFT_SPLIT, BACKGROUND_SPLIT, COOCCURRENCE_SPLIT)
HELD_OUT_SPLITS = ("test", *SHIFTED_SPLITS)  # drawn with unseen handwriting

DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SHAPE_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "diamond",
    "hexagon",
    "arrow",
    "crescent",
)
CLASS_NAMES: tuple[str, ...] = DIGIT_NAMES + SHAPE_NAMES
NUM_CLASSES = len(CLASS_NAMES)

# Each context: (its name, which is also its background style; its core group, head label first; two base colours).
# Each group mixes two digits and two shapes, so that groups are not just "digits" versus "shapes", and the groups do
# not follow the names' meaning (a label-name embedding should not reveal them).
_CONTEXTS: tuple[tuple[str, tuple[str, ...], tuple[tuple[int, int, int], tuple[int, int, int]]], ...] = (
    ("gradient", ("zero", "star", "seven", "square"), ((60, 95, 160), (165, 190, 220))),
    ("stripes", ("ring", "one", "hexagon", "four"), ((175, 115, 65), (115, 75, 50))),
    ("dots", ("two", "cross", "nine", "crescent"), ((75, 125, 70), (150, 185, 115))),
    ("texture", ("diamond", "three", "circle", "eight"), ((100, 92, 118), (170, 160, 175))),
    ("tint", ("five", "arrow", "six", "triangle"), ((205, 185, 165), (150, 125, 120))),
)
CONTEXT_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _CONTEXTS)
GROUPS: tuple[tuple[int, ...], ...] = tuple(tuple(CLASS_NAMES.index(n) for n in group) for _, group, _ in _CONTEXTS)

GLYPH_HOLDOUT = 0.3  # the last 30% of each digit's samples (in data-set order) are kept for the test splits
_BOX_ALPHA = 51  # a pixel belongs to an object's box where the object's opacity reaches 51/255 = 0.2
_PNG_LEVEL = 1  # zlib level and strategy of the PNG data: run-length matching only, fast and about as small as the
_PNG_STRATEGY = zlib.Z_RLE  # default on noisy pixels
_SUPERSAMPLE = 4  # shapes are drawn this many times larger, then reduced: smooth, anti-aliased edges
_PLACEMENT_TRIES = 8
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RAMP = np.linspace(0, 1, 256, dtype=np.float32)[:, None]
_CHUNK = 250
_CALIBRATION_DRAWS = 40_000


@dataclass(frozen=True)
class ScenesKnobs:
    """Every setting that changes the generated files (the cache key, recorded in `meta.json` and the COCO `info`).

    Attributes:
        image_size: side of the square RGB images, in pixels.
        n_train, n_val, n_test, n_shift: images per split (`n_shift` is each shifted test split: test_shift, test_bg,
            test_cooc).
        context_strength: probability that a label is drawn from the image's context group rather than from all
            labels (exact for the first object; later ones are drawn without replacement from the same mixture).
            Higher means stronger co-occurrence and background cues, hence a bigger test -> test_shift drop.
        object_scale: (lo, hi) object size as a fraction of the image side, drawn uniformly per object. Smaller
            objects are harder to recognise.
        clutter: mean number (Poisson) of distractor scribbles and blobs per image; they are not labels.
        noise: standard deviation of additive Gaussian pixel noise, as a fraction of the 0..255 range.
        max_objects: the most objects (and labels) per image; the least is 1.
        mean_labels: target mean of labels per image (COCO has about 2.9); clipped into [1, max_objects].
        max_overlap: the most an object's box may be covered by another's, as a fraction of the smaller box
            (enforced by rejection sampling with a few tries, else the least-overlapping try is kept).
        label_skew: Zipf exponent of label weights inside each group (0 is uniform; larger is more long-tailed).
        context_skew: Zipf exponent of context probabilities (0 is uniform; larger is more long-tailed).
    """

    image_size: int = 64
    n_train: int = 4000
    n_val: int = 1000
    n_test: int = 1000
    n_shift: int = 1000
    context_strength: float = 0.8
    object_scale: tuple[float, float] = (0.3, 0.5)
    clutter: float = 0.5
    noise: float = 0.03
    max_objects: int = 4
    mean_labels: float = 2.9
    max_overlap: float = 0.3
    label_skew: float = 1.0
    context_skew: float = 0.6

    def __post_init__(self) -> None:
        problems = []
        if self.image_size < 16:
            problems.append(f"image_size must be >= 16, got {self.image_size}")
        for name in ("n_train", "n_val", "n_test", "n_shift"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.context_strength <= 1.0:
            problems.append(f"context_strength must be in [0, 1], got {self.context_strength}")
        lo, hi = self.object_scale
        if not 0.0 < lo <= hi <= 1.0:
            problems.append(f"object_scale must satisfy 0 < lo <= hi <= 1, got {self.object_scale}")
        if self.clutter < 0 or self.noise < 0:
            problems.append(f"clutter and noise must be >= 0, got {self.clutter} and {self.noise}")
        if not 1 <= self.max_objects <= NUM_CLASSES:
            problems.append(f"max_objects must be in [1, {NUM_CLASSES}], got {self.max_objects}")
        if not 0.0 <= self.max_overlap <= 1.0:
            problems.append(f"max_overlap must be in [0, 1], got {self.max_overlap}")
        if self.label_skew < 0 or self.context_skew < 0:
            problems.append("label_skew and context_skew must be >= 0")
        if problems:
            raise ValueError("make_scenes: " + "; ".join(problems))

    @classmethod
    def of(cls, base: ScenesKnobs, **values: Any) -> ScenesKnobs:
        """`base` with `values` replaced, each converted to its field's literal type (so `noise=0` and `noise=0.0`
        write the same JSON); an unknown name is an error naming the valid ones."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"make_scenes: unknown knob(s) {unknown}; valid: {sorted(fields)}")
        merged = {**asdict(base), **values}
        typed = {}
        for name, value in merged.items():
            default = getattr(cls, name, None) if name in fields else None
            if isinstance(default, tuple):
                typed[name] = tuple(float(v) for v in value)
            elif isinstance(default, bool) or default is None:
                typed[name] = value
            else:
                typed[name] = type(default)(value)
        return cls(**typed)

    def split_sizes(self) -> dict[str, int]:
        """Images per split, keyed by split name."""
        return dict(zip(SPLITS, (self.n_train, self.n_val, self.n_test, self.n_shift, self.n_shift, self.n_shift)))

    def to_dict(self) -> dict[str, Any]:
        """The knobs as JSON-ready literals (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class _Plan:
    """What every image needs, derived once from the knobs: sampling weights, count law and glyph pools."""

    seed: int
    knobs: ScenesKnobs
    context_probs: np.ndarray  # [5]
    context_weights: np.ndarray  # [5, 20] label weights given the context
    shift_weights: np.ndarray  # [20] label weights of test_shift, calibrated to the training marginals
    count_probs: np.ndarray  # [max_objects] probability of 1..max_objects labels
    glyph_pools: dict[str, dict[int, np.ndarray]]
    count_cdf: np.ndarray  # cumulative sums of `count_probs`, for fast draws
    context_cdf: np.ndarray  # cumulative sums of `context_probs`


@dataclass(frozen=True)
class _Object:
    label: int
    box: tuple[int, int, int, int]  # x, y, w, h in pixels, tight around the visible object
    glyph: int  # index of the digit sample in scikit-learn's data set; -1 for shapes


# --------------------------------------------------------------------------------------------------------- public API


def make_scenes(
    out_dir: str | Path,
    knobs: ScenesKnobs | None = None,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    **knob_values: Any,
) -> Path:
    """Generate the Scenes benchmark under `out_dir` and return `out_dir` as a Path.

    Writes `images/<split>/<split>_<index:06d>.png`, `annotations/<split>.json` (COCO instances with tight boxes) for
    every split of `SPLITS`, and `meta.json` last (class names, planted groups, contexts, each image's context,
    knobs, label statistics), so a crash never leaves a `meta.json` behind.

    If `out_dir/meta.json` already records the same seed, knobs and generator version, nothing is redone (a cache);
    if it records different ones, a `FileExistsError` names the differences unless `overwrite=True`.

    Difficulty is set by `object_scale`, `clutter`, `noise` (how hard each object is to see) and `context_strength`
    (how much the co-occurrence and background cues help on test, and so how much is lost on test_shift).

    Args:
        out_dir: the dataset root (a relative one resolves against the lab's home, `mlic.core.paths`).
        knobs: every setting that changes the files (`ScenesKnobs`, whose docstring explains each); None: the
            defaults.
        seed: the seed; the same seed and knobs give byte-identical files.
        overwrite: regenerate even when `out_dir` holds a (different or identical) finished dataset.
        progress: show a tqdm progress bar.
        workers: processes that render images; `None` picks up to 2 for large jobs and 1 for small ones. It does not
            change the output.
        **knob_values: single `ScenesKnobs` fields replacing those of `knobs` (``n_train=96``, ``image_size=32``).

    Returns:
        The dataset root.

    Raises:
        ValueError: a knob is out of range.
        FileExistsError: `out_dir` holds a dataset made with other knobs and `overwrite` is False.
    """
    if seed < 0:
        raise ValueError(f"make_scenes: seed must be >= 0, got {seed}")
    knobs = ScenesKnobs.of(knobs or ScenesKnobs(), **knob_values)
    root = paths.resolve(out_dir)
    if _is_cached(root, seed, knobs, overwrite):
        logger.info("Scenes already generated in %s (seed %d); reusing it", root, seed)
        return root
    _remove_previous(root)

    plan = _make_plan(seed, knobs)
    records = _render_all(plan, root, progress=progress, workers=workers)
    for split in SPLITS:
        atomic_write_text(root / "annotations" / f"{split}.json", _dumps_compact(_coco(plan, split, records[split])))
    atomic_write_json(root / "meta.json", _meta(plan, records))
    logger.info("Scenes written to %s: %s", root, knobs.split_sizes())
    return root


@DATASETS.register("scenes")
def scenes_split(root: Path, split: str, **options: Any) -> LabelledImages:
    """Read split `split` of a Scenes dataset under `root` (as written by `make_scenes`) with `load_coco`.

    Per-image `context` and `background` come through `extras` like any COCO image key; the planted truth of
    `meta.json` is added as `extras["scenes"]`: `groups` as column indices of this table (they depend on
    `class_order`), `group_names`, `contexts`, `seed` and `knobs`.

    Args:
        root: the dataset root.
        split: train, val, test or test_shift.
        **options: passed to `load_coco` (`class_order`, `check_files`, ...).
    """
    root = Path(root)
    ann_file = root / "annotations" / f"{split}.json"
    if not ann_file.is_file():
        raise FileNotFoundError(
            f"No Scenes split {split!r} under {root}: {ann_file} is missing; generate the data set with "
            f"`mlic scenes --out {root}` or `mlic.data.make_scenes({str(root)!r})`"
        )
    table = load_coco(ann_file, root / "images" / split, **options)
    meta_path = root / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        column = {name: i for i, name in enumerate(table.class_names)}
        table.extras["scenes"] = {
            "groups": [[column[name] for name in group] for group in meta["group_names"]],
            "group_names": meta["group_names"],
            "contexts": meta["contexts"],
            "seed": meta["seed"],
            "knobs": meta["knobs"],
        }
    return table


def glyph_pools(split: str) -> dict[int, np.ndarray]:
    """Indices into `sklearn.datasets.load_digits()` that `split` may draw each digit from.

    train and val share the first 70% of each digit's samples in data-set order; the test splits use the last 30%.
    The data set lists its writers' samples in sequence, so the held-out tail is mostly unseen handwriting.

    Args:
        split: one of `SPLITS`.

    Returns:
        Digit (0..9) -> sorted sample indices.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    _, targets = _digits()
    held_out = split in HELD_OUT_SPLITS
    pools = {}
    for digit in range(10):
        index = np.flatnonzero(targets == digit)
        cut = len(index) - round(GLYPH_HOLDOUT * len(index))
        pools[digit] = index[cut:] if held_out else index[:cut]
    return pools


def render_object_mask(label: int, size: int, rng: np.random.Generator, glyph: int | None = None) -> Image.Image:
    """An object's opacity patch (a Pillow "L" image, 255 = opaque), about `size` pixels tall, ready to be pasted.

    Args:
        label: class index (0..9 digits, 10..19 shapes).
        size: the object's height in pixels (the patch may be a little larger, for rotation).
        rng: the generator that draws rotation, stroke and aspect.
        glyph: for digits, the sample index in scikit-learn's digits (its class should equal `label`); `None` takes
            the first training sample of that digit.
    """
    if label < 10:
        if glyph is None:
            glyph = int(glyph_pools("train")[label][0])
        return _digit_mask(_glyph_images()[glyph], size, rng)
    return _shape_mask(CLASS_NAMES[label], size, rng)


def object_box(mask: Image.Image) -> tuple[int, int, int, int]:
    """The tight box (x, y, w, h) of an opacity patch: the extent of its pixels with opacity >= 0.2.

    Fainter anti-aliased fringes fall outside the box; the whole patch is returned if no pixel is that opaque.
    """
    bbox = ImageChops.subtract(mask, Image.new("L", mask.size, _BOX_ALPHA - 1)).getbbox()
    if bbox is None:
        return 0, 0, mask.width, mask.height
    left, top, right, bottom = bbox
    return left, top, right - left, bottom - top


def paste_object(
    canvas: Image.Image, mask: Image.Image, colour: tuple[int, int, int], x: int, y: int
) -> tuple[int, int, int, int]:
    """Blend a single-colour object with opacity `mask` into the RGB `canvas`, with the patch's corner at (x, y).

    The patch may stick out of the canvas; only the overlap is drawn.

    Returns:
        The object's tight box (x, y, w, h) in canvas pixels (see `object_box`), clipped to the canvas.
    """
    canvas.paste(colour, (x, y), mask)
    bx, by, bw, bh = object_box(mask)
    left, top = max(x + bx, 0), max(y + by, 0)
    right, bottom = min(x + bx + bw, canvas.width), min(y + by + bh, canvas.height)
    return left, top, max(right - left, 0), max(bottom - top, 0)


# ------------------------------------------------------------------------------------------------- caching and plan


def _is_cached(root: Path, seed: int, knobs: ScenesKnobs, overwrite: bool) -> bool:
    """True when `root` already holds this exact dataset; raises when it holds another one and may not replace it."""
    meta_path = root / "meta.json"
    if overwrite or not meta_path.exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise FileExistsError(f"{meta_path} is not valid JSON ({error}); pass overwrite=True to replace it") from None
    wanted = {"version": GENERATOR_VERSION, "seed": seed, **knobs.to_dict()}
    found = {"version": meta.get("generator_version"), "seed": meta.get("seed"), **meta.get("knobs", {})}
    differences = [
        f"{key}: {found.get(key)!r} there, {value!r} asked" for key, value in wanted.items() if found.get(key) != value
    ]
    if differences:
        raise FileExistsError(
            f"{meta_path} records a Scenes dataset made with other settings ({'; '.join(differences)}); "
            "pass overwrite=True to replace it, or choose another out_dir"
        )
    missing = [split for split in SPLITS if not (root / "annotations" / f"{split}.json").exists()]
    if missing:
        logger.warning("%s: annotations of %s are missing; regenerating", root, missing)
        return False
    return True


def _remove_previous(root: Path) -> None:
    """Remove `meta.json` first, then the files an earlier run wrote (only names this generator uses)."""
    (root / "meta.json").unlink(missing_ok=True)
    for split in SPLITS:
        (root / "annotations" / f"{split}.json").unlink(missing_ok=True)
        for path in sorted((root / "images" / split).glob(f"{split}_*.png")):
            path.unlink()
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)


def _make_plan(seed: int, knobs: ScenesKnobs) -> _Plan:
    """Derive the sampling laws from the knobs.

    A label's weight given context c mixes the context's group (Zipf weights inside it) with probability
    `context_strength` and every label's overall popularity (context probability × in-group weight) otherwise.
    """
    context_probs = _zipf(len(CONTEXT_NAMES), knobs.context_skew)
    in_group = _zipf(len(GROUPS[0]), knobs.label_skew)
    group_weights = np.zeros((len(GROUPS), NUM_CLASSES))
    for context, group in enumerate(GROUPS):
        group_weights[context, list(group)] = in_group
    base = context_probs @ group_weights  # each label's overall popularity; sums to 1
    context_weights = knobs.context_strength * group_weights + (1.0 - knobs.context_strength) * base
    count_probs = _count_probs(knobs.max_objects, knobs.mean_labels)
    shift_weights = _calibrate_shift_weights(context_probs, context_weights, count_probs)
    pools = {split: glyph_pools(split) for split in SPLITS}
    return _Plan(
        seed=seed,
        knobs=knobs,
        context_probs=context_probs,
        context_weights=context_weights,
        shift_weights=shift_weights,
        count_probs=count_probs,
        glyph_pools=pools,
        count_cdf=np.cumsum(count_probs),
        context_cdf=np.cumsum(context_probs),
    )


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _count_probs(max_objects: int, mean_labels: float) -> np.ndarray:
    """P(k labels), k = 1..max_objects, of the form exp(t k) with t chosen so that the mean is `mean_labels`."""
    k = np.arange(1, max_objects + 1, dtype=np.float64)
    if max_objects == 1:
        return np.ones(1)
    target = min(max(mean_labels, 1.0 + 1e-3), max_objects - 1e-3)
    if target != mean_labels:
        logger.warning(
            "mean_labels %.3f is out of reach with max_objects=%d; using %.3f", mean_labels, max_objects, target
        )
    lo, hi = -60.0, 60.0
    for _ in range(100):
        t = (lo + hi) / 2
        p = np.exp(t * k - (t * k).max())
        lo, hi = (t, hi) if (p @ k) / p.sum() < target else (lo, t)
    return p / p.sum()


def _top_k_inclusion(log_weights: np.ndarray, counts: np.ndarray, gumbel: np.ndarray) -> np.ndarray:
    """Which labels each draw picks: the `counts[i]` largest keys `log_weights[i] + gumbel[i]` (Gumbel top-k).

    Taking the k largest Gumbel-perturbed log-weights samples k labels without replacement, each next one with
    probability proportional to its weight among those left.
    """
    order = np.argsort(-(log_weights + gumbel), axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[-1]), axis=-1)
    return ranks < counts[:, None]


def _calibrate_shift_weights(
    context_probs: np.ndarray, context_weights: np.ndarray, count_probs: np.ndarray
) -> np.ndarray:
    """Context-free label weights whose without-replacement draws match the training label frequencies.

    The training frequencies are estimated by Monte Carlo with a fixed internal seed (they depend only on the knobs),
    then the weights are corrected multiplicatively a few times on common random numbers.
    """
    rng = np.random.default_rng(20240601)
    n = _CALIBRATION_DRAWS
    counts = rng.choice(np.arange(1, len(count_probs) + 1), size=n, p=count_probs)
    contexts = rng.choice(len(context_probs), size=n, p=context_probs)
    with np.errstate(divide="ignore"):
        log_context = np.log(context_weights)
    target = _top_k_inclusion(log_context[contexts], counts, rng.gumbel(size=(n, NUM_CLASSES))).mean(0)
    gumbel = rng.gumbel(size=(n, NUM_CLASSES))
    weights = np.maximum(target, 1e-6)
    for _ in range(4):
        found = _top_k_inclusion(np.log(weights), counts, gumbel).mean(0)
        weights *= np.maximum(target, 1e-6) / np.maximum(found, 1e-6)
        weights /= weights.sum()
    return weights


# --------------------------------------------------------------------------------------------------------- rendering


def _render_all(plan: _Plan, root: Path, *, progress: bool, workers: int | None) -> dict[str, list]:
    """Render every split in chunks (in this process or a pool) and return each image's record, in index order."""
    sizes = plan.knobs.split_sizes()
    jobs = [(split, start, min(start + _CHUNK, n)) for split, n in sizes.items() for start in range(0, n, _CHUNK)]
    total = sum(sizes.values())
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if total >= 2000 else 1
    records: dict[str, list] = {split: [] for split in SPLITS}
    splits, starts, stops = zip(*jobs) if jobs else ((), (), ())
    with tqdm(total=total, desc="Scenes", unit="img", disable=not progress) as bar, _mapper(workers) as run:
        for split, chunk in zip(splits, run(_render_chunk, repeat(plan), repeat(str(root)), splits, starts, stops)):
            records[split].extend(chunk)  # map keeps job order, and jobs run through each split in index order
            bar.update(len(chunk))
    return records


@contextmanager
def _mapper(workers: int) -> Iterator[Callable[..., Iterator]]:
    """`map`, spread over `workers` processes when that is more than one and processes can be started here."""
    if workers <= 1:
        yield map
        return
    try:
        pool = ProcessPoolExecutor(max_workers=workers)
    except (OSError, NotImplementedError) as error:  # e.g. no POSIX semaphores in some sandboxes
        logger.warning("cannot start %d render processes (%s); rendering in this process", workers, error)
        yield map
        return
    _glyph_images()  # loaded once before the workers start, so forked workers inherit them
    with pool:
        yield pool.map


def _render_chunk(plan: _Plan, root: str, split: str, start: int, stop: int) -> list:
    """Render and write images `start..stop-1` of `split`; return (context, background, objects) for each."""
    records = []
    image_dir = Path(root) / "images" / split
    for index in range(start, stop):
        pixels, record = _render_image(plan, split, index)
        (image_dir / f"{split}_{index:06d}.png").write_bytes(_png_bytes(pixels))
        records.append(record)
    return records


def _png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an RGB uint8 image as a minimal PNG (8-bit RGB, no row filter, fast fixed deflate settings).

    Pillow's encoder tries every row filter and costs about three times as long on these small noisy images; this
    writer is plain standard PNG, deterministic, and read back by Pillow and torchvision alike.
    """
    height, width, _ = pixels.shape
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # each row starts with filter type 0 ("none")
    rows[:, 1:] = pixels.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no interlace
    deflate = zlib.compressobj(_PNG_LEVEL, zlib.DEFLATED, 15, 8, _PNG_STRATEGY)
    data = deflate.compress(rows.tobytes()) + deflate.flush()
    chunks = [_png_chunk(b"IHDR", header), _png_chunk(b"IDAT", data), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _render_image(plan: _Plan, split: str, index: int) -> tuple[np.ndarray, tuple[int, int, list[_Object]]]:
    """One image: context and labels, background, clutter, objects, noise. Uses only its own seeded generator."""
    knobs = plan.knobs
    rng = np.random.default_rng([plan.seed, _SPLIT_IDS[split], index])
    context, background, labels = _sample_labels(plan, split, rng)
    canvas, luma = _background(background, knobs.image_size, rng)
    for _ in range(rng.poisson(knobs.clutter)):
        _draw_distractor(canvas, luma, rng)
    objects = _place_objects(canvas, luma, labels, plan, split, rng)
    pixels = np.asarray(canvas)
    if knobs.noise > 0:
        pixels = _add_noise(pixels, knobs.noise, rng)
    return pixels, (context, background, objects)


@lru_cache(maxsize=1)
def _gaussian_quantiles() -> np.ndarray:
    """The 256 standard-normal quantiles at (k + 0.5) / 256: a random byte through this table is a Gaussian draw."""
    normal = statistics.NormalDist()
    return np.array([normal.inv_cdf((k + 0.5) / 256) for k in range(256)])


def _add_noise(pixels: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add zero-mean Gaussian noise of standard deviation `sigma` × 255 (discretised to 256 quantiles, so cut at
    2.7 sigma, and rounded to whole grey levels): several times faster than `standard_normal` on float images."""
    offsets = np.rint(_gaussian_quantiles() * (sigma * 255.0)).astype(np.int16)
    index = np.frombuffer(rng.bytes(pixels.size), dtype=np.uint8).reshape(pixels.shape)
    noisy = pixels.astype(np.int16) + np.take(offsets, index)
    return np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)


def _sample_labels(plan: _Plan, split: str, rng: np.random.Generator) -> tuple[int, int, list[int]]:
    """Draw (context, background style, distinct labels).

    test_shift and test_cooc have no context (-1: labels independent of any context, with the training marginals);
    test_shift's background is random, test_cooc's that of its first object's context; test_bg draws labels from a
    context and paints another context's background. The draws of train, val, test and test_shift are those of
    generator 1.0, in the same order.
    """
    count = 1 + _draw_index(plan.count_cdf, rng)
    n_contexts = len(CONTEXT_NAMES)
    if split in (SHIFT_SPLIT, COOCCURRENCE_SPLIT):
        context, weights = -1, plan.shift_weights
        background = int(rng.integers(n_contexts)) if split == SHIFT_SPLIT else -1
    else:
        context = _draw_index(plan.context_cdf, rng)
        background, weights = context, plan.context_weights[context]
        if split == BACKGROUND_SPLIT:  # any context but the one the labels came from
            background = (context + 1 + int(rng.integers(n_contexts - 1))) % n_contexts
    count = min(count, int(np.count_nonzero(weights)))
    with np.errstate(divide="ignore"):
        keys = np.log(weights) + rng.gumbel(size=NUM_CLASSES)
    labels = [int(label) for label in np.argsort(-keys, kind="stable")[:count]]
    if background < 0:  # test_cooc: the background of the group the first object belongs to
        background = next(c for c, group in enumerate(GROUPS) if labels[0] in group)
    return context, background, labels


def _draw_index(cdf: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn with the probabilities whose cumulative sums are `cdf` (faster than `rng.choice` with `p`)."""
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)


def _place_objects(
    canvas: Image.Image, luma: np.ndarray, labels: list[int], plan: _Plan, split: str, rng: np.random.Generator
) -> list[_Object]:
    """Render each label's object, find it a spot that overlaps earlier ones little, and paint it."""
    knobs = plan.knobs
    size = knobs.image_size
    placed: list[_Object] = []
    for label in labels:
        glyph = -1
        if label < 10:
            pool = plan.glyph_pools[split][label]
            glyph = int(pool[rng.integers(len(pool))])
        height = max(6, round(size * rng.uniform(*knobs.object_scale)))
        mask = render_object_mask(label, height, rng, glyph)
        bx, by, bw, bh = object_box(mask)
        bw, bh = min(bw, size), min(bh, size)
        best, best_overlap = (0, 0), math.inf
        for _ in range(_PLACEMENT_TRIES):
            x, y = int(rng.integers(size - bw + 1)), int(rng.integers(size - bh + 1))
            overlap = max((_overlap((x, y, bw, bh), other.box) for other in placed), default=0.0)
            if overlap < best_overlap:
                best, best_overlap = (x, y), overlap
            if overlap <= knobs.max_overlap:
                break
        x, y = best
        canvas.paste(_object_colour(_box_mean(luma, x, y, bw, bh), rng), (x - bx, y - by), mask)
        placed.append(_Object(label, (x, y, bw, bh), glyph))
    return placed


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection of two (x, y, w, h) boxes as a fraction of the smaller one."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / max(min(a[2] * a[3], b[2] * b[3]), 1)


def _box_mean(luma: np.ndarray, x: int, y: int, w: int, h: int) -> float:
    """Mean of the map `luma` under the box (x, y, w, h), clipped to the map (128 where nothing is left)."""
    region = luma[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)]
    if region.size == 0:
        return 128.0
    return float(np.add.reduce(region, axis=None)) / region.size


def _object_colour(luminance: float, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random hue, dark where the background is light (mean `luminance` > 125) and light where it is dark: objects
    stand out, and their colour says nothing about their label."""
    value = rng.uniform(0.05, 0.35) if luminance > 125 else rng.uniform(0.8, 1.0)
    red, green, blue = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.9), value)
    return round(red * 255), round(green * 255), round(blue * 255)


# ------------------------------------------------------------------------------------------------------- backgrounds


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in units of the image side, 0..1."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return axis[:, None], axis[None, :]


def _gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.float32(np.cos(angle)) * (x - 0.5) + np.float32(np.sin(angle)) * (y - 0.5)
    return t / np.float32(1.42) + np.float32(0.5)


def _stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    angle, period, phase = rng.uniform(0, np.pi), rng.uniform(0.1, 0.22), rng.uniform(0, 2 * np.pi)
    along = np.float32(np.cos(angle)) * x + np.float32(np.sin(angle)) * y
    wave = np.sin(along * np.float32(2 * np.pi / period) + np.float32(phase))
    return np.clip(wave * np.float32(2.5), -1, 1) * np.float32(0.5) + np.float32(0.5)


def _dots(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    spacing = rng.uniform(0.12, 0.2)
    radius = spacing * rng.uniform(0.18, 0.32)
    oy, ox = rng.uniform(0, spacing, size=2)
    dy = np.mod(y - np.float32(oy), np.float32(spacing)) - np.float32(spacing / 2)
    dx = np.mod(x - np.float32(ox), np.float32(spacing)) - np.float32(spacing / 2)
    distance = np.sqrt(dy * dy + dx * dx)
    return np.clip((np.float32(radius) - distance) * np.float32(size) + np.float32(0.5), 0, 1)


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    cells = int(rng.integers(3, 7))
    coarse = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
    fine = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return np.clip(fine, 0, 1)


def _tint(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    return ((y - np.float32(cy)) ** 2 + (x - np.float32(cx)) ** 2) * np.float32(rng.uniform(0.8, 1.6))


# Background style -> function (size, rng) giving a float32 map t in about [0, 1] that mixes the palette's two colours.
_BACKGROUND_STYLES: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "gradient": _gradient,
    "stripes": _stripes,
    "dots": _dots,
    "texture": _texture,
    "tint": _tint,
}


def _background(context: int, size: int, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """The context's background and its luminance map.

    The style draws a map in [0, 1] that mixes the context's two palette colours, each jittered per image; the map is
    quantised to 256 levels and coloured through a lookup table, which keeps this cheap.
    """
    _, _, palette = _CONTEXTS[context]
    first, second = (
        np.asarray(colour, dtype=np.float32) + rng.uniform(-25, 25, size=3).astype(np.float32) for colour in palette
    )
    t = _BACKGROUND_STYLES[CONTEXT_NAMES[context]](size, rng)
    level = np.clip(t * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)
    lut = np.clip(first + _RAMP * (second - first) + np.float32(0.5), 0, 255).astype(np.uint8)  # [256, 3]
    return Image.fromarray(np.take(lut, level, axis=0)), np.take(lut @ _LUMA, level)


def _draw_distractor(canvas: Image.Image, luma: np.ndarray, rng: np.random.Generator) -> None:
    """A small scribble or irregular blob in an object-like colour: something that is not a label."""
    size = canvas.width
    patch = max(4, round(0.4 * size))  # distractors stay within a patch of 40% of the image side
    mask = Image.new("L", (patch, patch), 0)
    draw = ImageDraw.Draw(mask)
    centre = np.full(2, patch / 2)
    if rng.random() < 0.5:
        points = centre + np.clip(rng.normal(0, 0.08 * size, size=(int(rng.integers(3, 6)), 2)), -patch / 2, patch / 2)
        draw.line(
            [tuple(p) for p in points], fill=255, width=max(1, round(size * rng.uniform(0.015, 0.035))), joint="curve"
        )
    else:
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = rng.uniform(0.03, 0.08, size=n) * size
        points = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        draw.polygon([tuple(p) for p in points], fill=255)
    x, y = (int(v) for v in rng.uniform(-0.1, 0.7, size=2) * size)
    canvas.paste(_object_colour(_box_mean(luma, x, y, patch, patch), rng), (x, y), mask)


# ---------------------------------------------------------------------------------------------------------- objects


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: glyphs as uint8 ink [n, 12, 12] (8×8 plus a blank border of 2) and
    their digits."""
    from sklearn.datasets import load_digits

    data = load_digits()
    glyphs = np.pad(np.rint(data.images * (255.0 / 16.0)), ((0, 0), (2, 2), (2, 2))).astype(np.uint8)
    return glyphs, data.target.astype(np.int64)


@lru_cache(maxsize=1)
def _glyph_images() -> tuple[Image.Image, ...]:
    """The padded glyphs as Pillow images, made once."""
    return tuple(Image.fromarray(glyph) for glyph in _digits()[0])


def _digit_mask(glyph: Image.Image, height: int, rng: np.random.Generator) -> Image.Image:
    """Upsample a padded 12×12 glyph smoothly so its 8×8 core is `height` pixels tall (random width and slant)."""
    width = max(4, round(height * rng.uniform(0.7, 0.95)))
    scaled = glyph.resize((round(width * 12 / 8), round(height * 12 / 8)), Image.Resampling.BICUBIC)
    return scaled.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR)


def _shape_mask(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw shape `name` filling a `size`×`size` patch, supersampled for smooth edges."""
    big = size * _SUPERSAMPLE
    image = Image.new("L", (big, big), 0)
    _SHAPE_DRAWERS[name](ImageDraw.Draw(image), big / 2, big / 2 * 0.96, rng)
    return image.reduce(_SUPERSAMPLE)


def _rotated(unit: Sequence[tuple[float, float]], angle: float, centre: float, radius: float) -> list[tuple]:
    """Scale a unit outline so its farthest vertex sits at `radius`, rotate it by `angle` and centre it."""
    scale = radius / max(math.hypot(x, y) for x, y in unit)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    return [(centre + x * cos - y * sin, centre + x * sin + y * cos) for x, y in unit]


def _fill_or_outline(draw: ImageDraw.ImageDraw, points: list[tuple], radius: float, rng: np.random.Generator) -> None:
    """Half the time filled, else an outline whose stroke is 14-28% of the radius (drawn inside the outline)."""
    if rng.random() < 0.5:
        draw.polygon(points, fill=255)
    else:
        draw.polygon(points, outline=255, width=max(1, round(radius * rng.uniform(0.14, 0.28))))


@lru_cache(maxsize=16)
def _regular(n: int, start: float = 0.0) -> tuple[tuple[float, float], ...]:
    """The vertices of a regular `n`-gon on the unit circle, the first at angle `start`."""
    return tuple((math.cos(start + 2 * math.pi * i / n), math.sin(start + 2 * math.pi * i / n)) for i in range(n))


def _draw_circle(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    """Always a filled disc (an outlined one would be a ring)."""
    draw.ellipse([c - r, c - r, c + r, c + r], fill=255)


def _draw_ring(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    """An annulus whose band is 28-42% of the radius."""
    draw.ellipse([c - r, c - r, c + r, c + r], outline=255, width=max(1, round(r * rng.uniform(0.28, 0.42))))


def _draw_square(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    """Tilted by at most 20 degrees, so it never turns into a diamond."""
    unit = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    _fill_or_outline(draw, _rotated(unit, rng.uniform(-0.35, 0.35), c, r), r, rng)


def _draw_triangle(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    _fill_or_outline(draw, _rotated(_regular(3, -math.pi / 2), rng.uniform(0, 2 * math.pi), c, r), r, rng)


def _draw_star(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    inner = rng.uniform(0.38, 0.5)
    scale = [1.0, inner] * 5  # outer and inner vertices alternate
    unit = [(s * x, s * y) for s, (x, y) in zip(scale, _regular(10, -math.pi / 2))]
    _fill_or_outline(draw, _rotated(unit, rng.uniform(0, 2 * math.pi), c, r), r, rng)


def _draw_cross(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    a = rng.uniform(0.2, 0.3)
    unit = [(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1), (-a, -1), (-a, -a), (-1, -a), (-1, a), (-a, a), (-a, 1)]
    _fill_or_outline(draw, _rotated(unit, rng.uniform(0, math.pi / 2), c, r), r, rng)


def _draw_diamond(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    """A rhombus taller than wide, tilted by at most 20 degrees."""
    w = rng.uniform(0.55, 0.7)
    _fill_or_outline(draw, _rotated([(0, -1), (w, 0), (0, 1), (-w, 0)], rng.uniform(-0.35, 0.35), c, r), r, rng)


def _draw_hexagon(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    _fill_or_outline(draw, _rotated(_regular(6), rng.uniform(0, math.pi / 3), c, r), r, rng)


def _draw_arrow(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    unit = [(-1, -0.2), (0.15, -0.2), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.2), (-1, 0.2)]
    _fill_or_outline(draw, _rotated(unit, rng.uniform(0, 2 * math.pi), c, r), r, rng)


def _draw_crescent(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    """A filled disc with an offset disc cut out of it."""
    draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    angle, shift, cut = rng.uniform(0, 2 * math.pi), r * rng.uniform(0.4, 0.55), r * rng.uniform(0.8, 0.9)
    cx, cy = c + shift * math.cos(angle), c + shift * math.sin(angle)
    draw.ellipse([cx - cut, cy - cut, cx + cut, cy + cut], fill=0)


_SHAPE_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, float, float, np.random.Generator], None]] = {
    "circle": _draw_circle,
    "square": _draw_square,
    "triangle": _draw_triangle,
    "star": _draw_star,
    "cross": _draw_cross,
    "ring": _draw_ring,
    "diamond": _draw_diamond,
    "hexagon": _draw_hexagon,
    "arrow": _draw_arrow,
    "crescent": _draw_crescent,
}


# ------------------------------------------------------------------------------------------------------------ output


def _coco(plan: _Plan, split: str, records: list) -> dict[str, Any]:
    """The split's COCO instances dictionary (image ids are index + 1, annotation ids count from 1)."""
    size = plan.knobs.image_size
    images, annotations = [], []
    for index, (context, background, objects) in enumerate(records):
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": f"{split}_{index:06d}.png",
                "width": size,
                "height": size,
                "context": context,
                "background": background,
            }
        )
        for obj in objects:
            x, y, w, h = obj.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.label + 1,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                    "glyph": obj.glyph,
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "digit" if i < 10 else "shape"}
        for i, name in enumerate(CLASS_NAMES)
    ]
    info = {
        "description": "mlic Scenes: synthetic multi-label benchmark with planted co-occurrence",
        "version": GENERATOR_VERSION,
        "split": split,
        "seed": plan.seed,
        "knobs": plan.knobs.to_dict(),
    }
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _label_matrix(records: list) -> np.ndarray:
    matrix = np.zeros((len(records), NUM_CLASSES), dtype=np.uint8)
    for row, (_, _, objects) in enumerate(records):
        matrix[row, [obj.label for obj in objects]] = 1
    return matrix


def _stats(records: list) -> dict[str, Any]:
    """Labels per image, label frequencies (fraction of images) and the share of labels from the image's group."""
    if len(records) == 0:
        return {"n_images": 0}
    labels = _label_matrix(records)
    in_group = [
        sum(obj.label in GROUPS[context] for obj in objects) / len(objects)
        for context, _, objects in records
        if context >= 0
    ]
    frequency = labels.mean(0)
    return {
        "n_images": len(records),
        "mean_labels": round(float(labels.sum(1).mean()), 4),
        "label_frequency": [round(float(f), 4) for f in frequency],
        "label_frequency_min": round(float(frequency.min()), 4),
        "label_frequency_max": round(float(frequency.max()), 4),
        "in_group_fraction": round(float(np.mean(in_group)), 4) if in_group else None,
    }


def _meta(plan: _Plan, records: dict[str, list]) -> dict[str, Any]:
    return {
        "generator": "mlic.data.scenes",
        "generator_version": GENERATOR_VERSION,
        "seed": plan.seed,
        "knobs": plan.knobs.to_dict(),
        "class_names": list(CLASS_NAMES),
        "supercategories": ["digit"] * 10 + ["shape"] * 10,
        "contexts": list(CONTEXT_NAMES),
        "context_probs": [round(float(p), 6) for p in plan.context_probs],
        "groups": [list(group) for group in GROUPS],
        "group_names": [[CLASS_NAMES[i] for i in group] for group in GROUPS],
        "count_probs": [round(float(p), 6) for p in plan.count_probs],
        "shift_label_weights": [round(float(w), 6) for w in plan.shift_weights],
        "glyph_holdout": GLYPH_HOLDOUT,
        "box_alpha_threshold": _BOX_ALPHA / 255,
        "splits": {
            split: {"n_images": len(rows), "context": [r[0] for r in rows], "background": [r[1] for r in rows]}
            for split, rows in records.items()
        },
        "stats": {split: _stats(rows) for split, rows in records.items()},
    }


def _dumps_compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":")) + "\n"
