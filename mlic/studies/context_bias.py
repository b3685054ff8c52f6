"""Contextual bias on any dataset: biased pairs, exclusive vs co-occur AP, conditional false positives, AP by band.

A model that learned a label's usual company instead of the label scores the label high where the company is and low
where it is alone. Singh et al., "Don't Judge an Object by Its Context: Learning to Overcome Contextual Bias"
(CVPR 2020, §3.1) measure this on real data, without any generator that knows the context:

* **bias(b, z)** of a category b towards a co-occurring category z is the mean score of b over the images that hold
  b and z, divided by the mean score of b over the images that hold b without z, from a model trained the standard
  way (`bias_matrix`). For each b, the z with the largest bias among the categories that co-occur with b in at least
  a minimum share of b's *training* images is b's context; the K most biased pairs (K = 20 in the paper) are the
  biased categories (`biased_pairs`). The public reproduction (Kim et al., ReScience C 7(2), 2021,
  github.com/princetonvisualai/ContextualBias) computes the bias on a held-out 20 % of the training images and counts
  a z that is with b in at least 10 % of b's training images, the default `min_share` here; the notebook ranks on
  the validation split and evaluates on the test split, so the pairs are not chosen on the images they are judged
  on. Before any model is trained, `biased_pairs` without scores ranks the pairs by the label statistics alone:
  P(z | b) on the training labels.
* **Exclusive vs co-occur AP** of b for a pair (b, z) (`exclusive_cooccur_ap`): the AP of b over the images with b
  and without z plus every image without b ("exclusive"), and over the images with b and z plus every image without b
  ("co-occur"). A context-biased model has a lower exclusive AP.
* **Conditional false positives** (`conditional_false_positives`), in the spirit of MLC-PAT (ICML 2024): how often b is
  predicted on images where z is present and b absent, against images where both are absent. A model that predicts
  b from z raises the first rate only.
* **Head / medium / tail AP** (`frequency_bands`, `band_ap`): classes split by their number of training images, with
  the band rule a parameter (`BAND_RULES`).

Everything here is a pure function of label matrices and scores (``[N, C]`` arrays, a column per class, any dataset's
reader), apart from `load_predictions` and `train_table`, which read run folders through `mlic.runs.Run`. AP is
`mlic.metrics.average_precision`, by default in its ``"sklearn"`` mode (the value of scikit-learn's
`average_precision_score`, as the reproduction computes it): it groups tied scores, so a bootstrap resample that
repeats an image gives the same AP whatever the order of the repeats. A paired bootstrap over images (the claims
ledger) resamples `rows`: ``mean_pair_ap(scores, labels, pairs, rows=idx)`` for the same `idx` under two methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlic import metrics
from mlic.core.registry import Registry
from mlic.data import LabelledImages, load_split
from mlic.runs import Run

log = logging.getLogger(__name__)

#: the AP convention of this module (see the module docstring)
AP_MODE = "sklearn"
#: the bands, most frequent first
BANDS = ("head", "medium", "tail")

PairsLike = pd.DataFrame | Sequence[tuple[int, int]]


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------
def _labels(labels: Any, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"{name} must be an [N, C] matrix, got shape {y.shape}")
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{name} must be 0/1 (pass unknown entries as a boolean mask)")
    return y.astype(bool)


def _mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    if m.shape != shape:
        raise ValueError(f"{name} must have the shape of the labels {shape}, got {m.shape}")
    return m


def _scores(scores: Any, shape: tuple[int, ...], name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != shape:
        raise ValueError(f"{name} must have the shape of the labels {shape}, got {s.shape}")
    return s


def _pair_columns(pairs: PairsLike) -> tuple[np.ndarray, np.ndarray]:
    """The `b` and `z` columns of a pairs table (or of a list of `(b, z)` column indices) as integer arrays."""
    if isinstance(pairs, pd.DataFrame):
        missing = {"b", "z"} - set(pairs.columns)
        if missing:
            raise ValueError(f"pairs need columns b and z (class indices); missing {sorted(missing)}")
        b, z = pairs["b"].to_numpy(), pairs["z"].to_numpy()
    else:
        arr = np.asarray(list(pairs)).reshape(-1, 2)
        b, z = arr[:, 0], arr[:, 1]
    if len(b) and not (np.issubdtype(b.dtype, np.integer) and np.issubdtype(z.dtype, np.integer)):
        raise ValueError("pairs: b and z must be integer class indices")
    return b.astype(np.int64), z.astype(np.int64)


def _pair_indices(pairs: PairsLike, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """`_pair_columns`, checked against `num_classes`."""
    b, z = _pair_columns(pairs)
    bad = (b < 0) | (b >= num_classes) | (z < 0) | (z >= num_classes)
    if bad.any():
        raise ValueError(f"pairs: class indices {sorted(set(b[bad]) | set(z[bad]))} are outside 0..{num_classes - 1}")
    if (b == z).any():
        raise ValueError("pairs: b and z must differ")
    return b, z


def _pair_frame(pairs: PairsLike, b: np.ndarray, z: np.ndarray) -> pd.DataFrame:
    """`b`, `z` and, when the pairs carry them, `b_name`, `z_name`."""
    out = pd.DataFrame({"b": b, "z": z})
    if isinstance(pairs, pd.DataFrame):
        for column in ("b_name", "z_name"):
            if column in pairs.columns:
                out[column] = pairs[column].to_numpy()
    return out


def _rows(rows: Any, n: int) -> np.ndarray | slice:
    if rows is None:
        return slice(None)
    idx = np.asarray(rows)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise ValueError(f"rows: indices outside 0..{n - 1}")
    return idx.astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------------
# Biased pairs (Singh et al. 2020, §3.1)
# ---------------------------------------------------------------------------------------------------------------------
def cooccurrence_share(labels: Any) -> np.ndarray:
    """P(z | b) on a label matrix: ``[C, C]``, row b, column z, the share of b's images that also hold z.

    NaN on the diagonal and in the rows of classes without images.
    """
    y = _labels(labels).astype(np.float64)
    counts = y.sum(axis=0)
    joint = y.T @ y
    with np.errstate(invalid="ignore", divide="ignore"):
        share = joint / counts[:, None]
    share[counts == 0] = np.nan
    np.fill_diagonal(share, np.nan)
    return share


def bias_matrix(scores: Any, labels: Any, *, mask: Any = None) -> np.ndarray:
    """Singh et al.'s bias(b, z) for every ordered pair: ``[C, C]``, row b, column z.

    bias(b, z) = mean of b's score over the images with b and z / mean of b's score over the images with b and
    without z. NaN where either set is empty, where the second mean is 0, and on the diagonal.

    Args:
        scores: ``[N, C]`` scores (probabilities) of a trained model.
        labels: ``[N, C]`` 0/1 labels of the same images.
        mask: optional ``[N, C]`` booleans, False for unknown entries (VOC's difficult objects): an image whose b is
            unknown counts for no pair of b, and one whose z is unknown for neither set of (b, z).
    """
    y = _labels(labels)
    s = _scores(scores, y.shape)
    m = _mask(mask, y.shape)
    has = (y & m).astype(np.float64)  # known positives
    lacks = (~y & m).astype(np.float64)  # known negatives
    scored = has * s  # b's score where b is a known positive, else 0
    with_sum, with_n = scored.T @ has, has.T @ has
    without_sum, without_n = scored.T @ lacks, has.T @ lacks
    with np.errstate(invalid="ignore", divide="ignore"):
        bias = (with_sum / with_n) / (without_sum / without_n)
    bias[(with_n == 0) | (without_n == 0) | (without_sum == 0)] = np.nan
    np.fill_diagonal(bias, np.nan)
    return bias


def biased_pairs(labels: Any, *, k: int = 20, scores: Any = None, scored_labels: Any = None,
                 scored_mask: Any = None, min_share: float = 0.1,
                 class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The K most biased (b, z) pairs: for each b its most biasing z, then the K largest.

    Args:
        labels: the training labels ``[N, C]``: they decide which z co-occur with b often enough (`min_share`).
        k: pairs kept (the paper's K = 20); fewer when fewer classes have a candidate z.
        scores: a trained model's ``[M, C]`` scores of the images of `scored_labels`; None ranks by the labels alone,
            bias = P(z | b) on `labels`.
        scored_labels: the ``[M, C]`` labels of the scored images (a held-out split); None: the scores are of the
            images of `labels`.
        scored_mask: unknown entries of `scored_labels` (see `bias_matrix`).
        min_share: a candidate z co-occurs with b in at least this share of b's training images (Singh et al. keep
            the frequently co-occurring z; the public reproduction's threshold is 0.1).
        class_names: names of the columns, added as `b_name` and `z_name`.

    Returns:
        One row per pair, most biased first: `b`, `z` (column indices), `b_name`, `z_name` (with `class_names`),
        `share` (P(z | b) on the training labels) and `bias`. ``attrs["ranking"]`` is ``"labels"`` or ``"scores"``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    share = cooccurrence_share(labels)
    num_classes = share.shape[0]
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} label columns")
    if scores is None:
        value, ranking = share, "labels"
    else:
        scored = labels if scored_labels is None else scored_labels
        y = _labels(scored, "scored_labels")
        if y.shape[1] != num_classes:
            raise ValueError(f"scored_labels have {y.shape[1]} columns, the training labels {num_classes}")
        value, ranking = bias_matrix(scores, y, mask=scored_mask), "scores"
    candidate = np.where(share >= min_share, value, np.nan)  # NaN shares fail the test
    rows = []
    for b in range(num_classes):
        if np.isnan(candidate[b]).all():
            continue
        z = int(np.nanargmax(candidate[b]))
        rows.append({"b": b, "z": z, "share": float(share[b, z]), "bias": float(candidate[b, z])})
    frame = pd.DataFrame(rows, columns=["b", "z", "share", "bias"]).astype({"b": np.int64, "z": np.int64})
    frame = frame.sort_values(["bias", "b"], ascending=[False, True], kind="stable").head(k).reset_index(drop=True)
    if class_names is not None:
        frame.insert(2, "b_name", [str(class_names[i]) for i in frame["b"]])
        frame.insert(3, "z_name", [str(class_names[i]) for i in frame["z"]])
    frame.attrs["ranking"] = ranking
    return frame


def in_same_group(pairs: PairsLike, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Per pair, whether b and z lie in one of `groups` (lists of column indices, e.g. Scenes' planted groups)."""
    group_of: dict[int, int] = {}
    for g, members in enumerate(groups):
        for c in members:
            group_of[int(c)] = g
    b, z = _pair_columns(pairs)
    return np.array([bi in group_of and group_of[bi] == group_of.get(zi) for bi, zi in zip(b.tolist(), z.tolist())],
                    dtype=bool)


def with_groups(pairs: pd.DataFrame, groups: Sequence[Sequence[int]] | None) -> pd.DataFrame:
    """`pairs` with an ``in_group`` column (`in_same_group`) when `groups` are known (Scenes), else unchanged."""
    if not groups:
        return pairs
    out = pairs.assign(in_group=in_same_group(pairs, groups))
    out.attrs = dict(pairs.attrs)
    return out


def share_in_groups(pairs: PairsLike, groups: Sequence[Sequence[int]] | None) -> float:
    """The percentage of `pairs` whose b and z lie in one planted group (NaN without groups or pairs)."""
    if not groups or len(pairs) == 0:
        return float("nan")
    return float(100.0 * in_same_group(pairs, groups).mean())


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation of a model on the pairs
# ---------------------------------------------------------------------------------------------------------------------
def _pair_masks(y: np.ndarray, m: np.ndarray, b: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, K]`` masks of the images each pair's exclusive and co-occur AP include (see `exclusive_cooccur_ap`)."""
    has_b, known_b = y[:, b], m[:, b]
    has_z, lacks_z = y[:, z] & m[:, z], ~y[:, z] & m[:, z]
    others = known_b & ~has_b  # every known image without b: the negatives of both
    exclusive = others | (known_b & has_b & lacks_z)
    cooccur = others | (known_b & has_b & has_z)
    return exclusive, cooccur


def exclusive_cooccur_ap(scores: Any, labels: Any, pairs: PairsLike, *, mask: Any = None, rows: Any = None,
                         mode: str = AP_MODE) -> pd.DataFrame:
    """Per pair (b, z), b's AP on its exclusive and on its co-occur images, in points.

    Exclusive: the images with b and without z, plus every image without b. Co-occur: the images with b and z, plus
    every image without b (Singh et al. 2020, §4; the negatives are the same in both). An image whose b is unknown
    (`mask`) is in neither; one with b whose z is unknown is in neither.

    Args:
        scores: ``[N, C]`` scores of one model.
        labels: ``[N, C]`` 0/1 labels of the same images.
        pairs: a `biased_pairs` table (columns `b`, `z`) or a list of ``(b, z)`` column indices.
        mask: optional ``[N, C]`` booleans of the known entries.
        rows: optional image indices (repeats allowed: a bootstrap resample) or a boolean selection.
        mode: the AP convention of `mlic.metrics.average_precision`.

    Returns:
        `b`, `z` (and `b_name`, `z_name` when `pairs` has them), `exclusive_AP`, `cooccur_AP` (NaN where a subset
        has no positive), `exclusive_images` and `cooccur_images` (the positives of b in each).
    """
    y = _labels(labels)
    s = _scores(scores, y.shape)
    m = _mask(mask, y.shape)
    b, z = _pair_indices(pairs, y.shape[1])
    idx = _rows(rows, y.shape[0])
    y, s, m = y[idx], s[idx], m[idx]
    exclusive, cooccur = _pair_masks(y, m, b, z)
    column_scores, column_targets = s[:, b], y[:, b]
    out = _pair_frame(pairs, b, z)
    if len(b):
        out["exclusive_AP"] = 100.0 * metrics.average_precision(column_scores, column_targets, mode=mode,
                                                                mask=exclusive)
        out["cooccur_AP"] = 100.0 * metrics.average_precision(column_scores, column_targets, mode=mode, mask=cooccur)
    else:
        out["exclusive_AP"] = out["cooccur_AP"] = np.empty(0)
    out["exclusive_images"] = (exclusive & column_targets).sum(axis=0).astype(np.int64)
    out["cooccur_images"] = (cooccur & column_targets).sum(axis=0).astype(np.int64)
    return out


def mean_pair_ap(scores: Any, labels: Any, pairs: PairsLike, *, mask: Any = None, rows: Any = None,
                 mode: str = AP_MODE) -> dict[str, float]:
    """The means over pairs of `exclusive_cooccur_ap` (pairs with a NaN left out): `exclusive_AP`, `cooccur_AP`
    and `gap` (co-occur − exclusive), in points. With `rows` a bootstrap resample of images, the statistic a paired
    bootstrap draws (the same `rows` under two methods)."""
    frame = exclusive_cooccur_ap(scores, labels, pairs, mask=mask, rows=rows, mode=mode)
    both = frame[["exclusive_AP", "cooccur_AP"]].dropna()
    if both.empty:
        return {"exclusive_AP": float("nan"), "cooccur_AP": float("nan"), "gap": float("nan")}
    exclusive, cooccur = float(both["exclusive_AP"].mean()), float(both["cooccur_AP"].mean())
    return {"exclusive_AP": exclusive, "cooccur_AP": cooccur, "gap": cooccur - exclusive}


def conditional_false_positives(scores: Any, labels: Any, pairs: PairsLike, *, thresholds: Any = 0.5,
                                mask: Any = None) -> pd.DataFrame:
    """Per pair (b, z), the rate of false positives of b where z is present and where z is absent, in percent.

    In the spirit of MLC-PAT (ICML 2024): among the images without b, b is predicted (score ≥ its threshold) on a
    share `fp_rate_with_z` of those with z and `fp_rate_without_z` of those without z. A model that predicts b from
    its context z raises the first only; `fp_ratio` is their ratio.

    Args:
        scores, labels, pairs, mask: as in `exclusive_cooccur_ap`.
        thresholds: one threshold, or ``[C]`` per-class thresholds (e.g. a run's tuned ones).

    Returns:
        `b`, `z` (and names), `fp_rate_with_z`, `fp_rate_without_z`, `fp_ratio`, `images_with_z`,
        `images_without_z` (the images without b in each set); rates are NaN where a set is empty.
    """
    y = _labels(labels)
    s = _scores(scores, y.shape)
    m = _mask(mask, y.shape)
    b, z = _pair_indices(pairs, y.shape[1])
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (y.shape[1],))
    predicted = s[:, b] >= t[b]
    negative = ~y[:, b] & m[:, b]
    with_z, without_z = negative & y[:, z] & m[:, z], negative & ~y[:, z] & m[:, z]
    n_with, n_without = with_z.sum(axis=0), without_z.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_with = 100.0 * (predicted & with_z).sum(axis=0) / n_with
        rate_without = 100.0 * (predicted & without_z).sum(axis=0) / n_without
        ratio = rate_with / rate_without
    out = _pair_frame(pairs, b, z)
    out["fp_rate_with_z"] = np.where(n_with > 0, rate_with, np.nan)
    out["fp_rate_without_z"] = np.where(n_without > 0, rate_without, np.nan)
    out["fp_ratio"] = np.where((n_with > 0) & (n_without > 0) & (rate_without > 0), ratio, np.nan)
    out["images_with_z"] = n_with.astype(np.int64)
    out["images_without_z"] = n_without.astype(np.int64)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Head / medium / tail
# ---------------------------------------------------------------------------------------------------------------------
#: band rules: name → function of (training images per class, many, few) returning each class's band
BAND_RULES: Registry[np.ndarray] = Registry("band rule")


@BAND_RULES.register("counts")
def _bands_by_counts(counts: np.ndarray, many: int = 100, few: int = 20) -> np.ndarray:
    """The long-tail literature's fixed thresholds: head > `many`, tail < `few`, medium in between (inclusive)."""
    return np.where(counts > many, "head", np.where(counts < few, "tail", "medium"))


@BAND_RULES.register("terciles")
def _bands_by_terciles(counts: np.ndarray, many: int = 100, few: int = 20) -> np.ndarray:
    """Thirds by rank of the training count (most frequent third: head); ties in count are broken by column order,
    and with C not divisible by 3 the head and medium bands get the extra classes (`numpy.array_split`)."""
    order = np.argsort(-counts, kind="stable")
    bands = np.empty(len(counts), dtype=object)
    for name, part in zip(BANDS, np.array_split(order, 3)):
        bands[part] = name
    return bands.astype(str)


@BAND_RULES.register("auto")
def _bands_auto(counts: np.ndarray, many: int = 100, few: int = 20) -> np.ndarray:
    """`counts` when each of the three bands gets a class, else `terciles` (a small dataset, where every class has
    more than `many` images or fewer than `few`, would otherwise put all its classes in one band)."""
    fixed = _bands_by_counts(counts, many, few)
    return fixed if set(fixed) == set(BANDS) else _bands_by_terciles(counts, many, few)


def frequency_bands(counts: Any, *, rule: str = "auto", many: int = 100, few: int = 20) -> np.ndarray:
    """Each class's band (``"head"``, ``"medium"`` or ``"tail"``) from its number of training images.

    Args:
        counts: ``[C]`` training images per class (`LabelledImages.label_frequencies`).
        rule: a name of `BAND_RULES`: ``"counts"`` (head > `many`, tail < `few`, the long-tail defaults 100 and 20),
            ``"terciles"`` (thirds by rank) or ``"auto"`` (counts, or terciles when a band would be empty).
        many, few: the thresholds of ``"counts"``.
    """
    c = np.asarray(counts)
    if c.ndim != 1:
        raise ValueError(f"counts must be one number per class, got shape {c.shape}")
    if few > many:
        raise ValueError(f"few ({few}) must not exceed many ({many})")
    return np.asarray(BAND_RULES.get(rule)(c, many, few), dtype=str)


def band_ap(scores: Any, labels: Any, counts: Any, *, mask: Any = None, rule: str = "auto", many: int = 100,
            few: int = 20, mode: str = AP_MODE) -> pd.DataFrame:
    """mAP (points) of the head, medium and tail classes (`frequency_bands`), over the classes with a positive.

    Returns:
        One row per band, head first: `band`, `classes`, `min_train_images`, `max_train_images`, `mAP`
        (NaN for an empty band or one without positives).
    """
    y = _labels(labels)
    s = _scores(scores, y.shape)
    c = np.asarray(counts)
    if c.shape != (y.shape[1],):
        raise ValueError(f"counts must have one entry per class ({y.shape[1]}), got shape {c.shape}")
    bands = frequency_bands(c, rule=rule, many=many, few=few)
    ap = 100.0 * metrics.average_precision(s, y, mode=mode, mask=mask)
    rows = []
    for band in BANDS:
        members = bands == band
        finite = ap[members][~np.isnan(ap[members])]
        rows.append({"band": band, "classes": int(members.sum()),
                     "min_train_images": int(c[members].min()) if members.any() else 0,
                     "max_train_images": int(c[members].max()) if members.any() else 0,
                     "mAP": float(finite.mean()) if finite.size else float("nan")})
    out = pd.DataFrame(rows)
    out.attrs["rule"] = band_rule_used(c, rule=rule, many=many, few=few)
    return out


def band_rule_used(counts: Any, *, rule: str = "auto", many: int = 100, few: int = 20) -> str:
    """The rule ``"auto"`` resolves to on `counts` (``"counts"`` or ``"terciles"``); other rules as given."""
    if rule != "auto":
        return rule
    fixed = frequency_bands(counts, rule="counts", many=many, few=few)
    return "counts" if set(fixed) == set(BANDS) else "terciles"


# ---------------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """The saved predictions of several runs on one split, rows aligned by image id (the first run's order)."""

    split: str
    scores: dict[str, np.ndarray]
    targets: np.ndarray
    image_ids: np.ndarray
    class_names: list[str]
    mask: np.ndarray | None = None
    run_dirs: dict[str, str] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.scores)


def load_predictions(run_dirs: Mapping[str, Any], split: str) -> Predictions:
    """Every run's saved predictions of `split` (`mlic.runs.Run.predictions`), aligned on the first run's images.

    Sources that are not single run folders (a CPSD teacher family: a list of part runs) are skipped with a log
    line. The runs must share the class names and the image ids; otherwise a ValueError names the run.
    """
    folders = {str(name): str(path) for name, path in run_dirs.items() if isinstance(path, (str, Path))}
    for name in set(map(str, run_dirs)) - set(folders):
        log.info("%s is not a single run folder (a teacher family?): left out of the context-bias study", name)
    if not folders:
        raise ValueError("no run folders given")
    scores: dict[str, np.ndarray] = {}
    first: dict[str, np.ndarray] | None = None
    for name, folder in folders.items():
        saved = Run(folder).predictions(split)
        if first is None:
            first = saved
            scores[name] = np.asarray(saved["scores"], dtype=np.float64)
            continue
        if list(saved["class_names"]) != list(first["class_names"]):
            raise ValueError(f"{folder}: its classes differ from those of {next(iter(folders.values()))}")
        order = _align(first["image_ids"], saved["image_ids"], folder, split)
        scores[name] = np.asarray(saved["scores"], dtype=np.float64)[order]
    assert first is not None
    return Predictions(split=split, scores=scores, targets=np.asarray(first["targets"]),
                       image_ids=np.asarray(first["image_ids"]), class_names=[str(c) for c in first["class_names"]],
                       mask=first.get("mask"), run_dirs=folders)


def _align(reference: np.ndarray, ids: np.ndarray, folder: str, split: str) -> np.ndarray:
    """The positions in `ids` of each image of `reference` (a ValueError naming `folder` when the sets differ)."""
    ref, other = [str(i) for i in reference], [str(i) for i in ids]
    if sorted(ref) != sorted(other):
        raise ValueError(f"{folder}: its {split} predictions cover other images than the first run's "
                         f"({len(other)} vs {len(ref)} images)")
    position = {image: i for i, image in enumerate(other)}
    return np.asarray([position[image] for image in ref], dtype=np.int64)


def saved_split(run_dirs: Mapping[str, Any], candidates: Sequence[str]) -> str:
    """The first of `candidates` (empty names skipped) whose predictions every run folder of `run_dirs` saved: the
    held-out split that ranks the pairs (e.g. ``["val", "test"]``: val when the runs saved it, else test)."""
    folders = [Run(p) for p in run_dirs.values() if isinstance(p, (str, Path))]
    names = [c for c in candidates if c]
    for split in names:
        if all(run.predictions_file(split).is_file() for run in folders):
            return split
    raise FileNotFoundError(f"no split of {names} has saved predictions in every run: "
                            f"{', '.join(str(r.path) for r in folders)}")


#: where the thresholds of the conditional false positives come from: name → f(predictions, method, default, tuning)
THRESHOLD_SOURCES: Registry[np.ndarray] = Registry("threshold source")


@THRESHOLD_SOURCES.register("fixed")
def _fixed_thresholds(predictions: Predictions, name: str, default: float, tuning: Predictions | None) -> np.ndarray:
    """One threshold for every class."""
    return np.full(len(predictions.class_names), float(default))


@THRESHOLD_SOURCES.register("run")
def _run_thresholds(predictions: Predictions, name: str, default: float, tuning: Predictions | None) -> np.ndarray:
    """The run's tuned thresholds (`thresholds.json`), else the fixed one."""
    run = Run(predictions.run_dirs[name])
    if not run.thresholds_file.is_file():
        log.info("%s has no tuned thresholds: %.2f is used", run.path, default)
        return _fixed_thresholds(predictions, name, default, tuning)
    values, names, _ = run.thresholds()
    lookup = dict(zip(names, values))
    return np.array([lookup.get(c, default) for c in predictions.class_names], dtype=np.float64)


@THRESHOLD_SOURCES.register("tuned")
def _tuned_thresholds(predictions: Predictions, name: str, default: float, tuning: Predictions | None) -> np.ndarray:
    """Per class, the F1-optimal threshold on another split's predictions (`mlic.metrics.tune_thresholds`)."""
    if tuning is None:
        raise ValueError("thresholds 'tuned' need the predictions of a split to tune on")
    if tuning.split == predictions.split:
        log.warning("thresholds tuned on %s, the split they are reported on", tuning.split)
    return metrics.tune_thresholds(tuning.scores[name], tuning.targets, default=default, mask=tuning.mask)


def method_thresholds(predictions: Predictions, *, source: str = "fixed", default: float = 0.5,
                      tuning: Predictions | None = None) -> dict[str, np.ndarray]:
    """Per method, ``[C]`` thresholds from `source` (a name of `THRESHOLD_SOURCES`); `tuning`: the predictions of
    the split the ``"tuned"`` thresholds are tuned on (not the reported one)."""
    compute = THRESHOLD_SOURCES.get(source)
    return {name: compute(predictions, name, default, tuning) for name in predictions.methods}


def reference_method(methods: Sequence[str], preferred: str = "") -> str:
    """The method whose scores rank the pairs: `preferred` when given, else ``baseline`` when present, else the
    first."""
    if preferred:
        if preferred not in methods:
            raise ValueError(f"reference method {preferred!r} is not among the runs: {', '.join(methods)}")
        return preferred
    return "baseline" if "baseline" in methods else methods[0]


def train_table(run_dir: str | Path) -> LabelledImages:
    """The training split of a run's dataset (`mlic.runs.Run.config`): the labels that decide co-occurrence shares
    and frequency bands. A label-subset run (a CPSD teacher) reads its base dataset."""
    data = Run(run_dir).config.data
    dataset, options = data.dataset, dict(data.options)
    if dataset == "label_subset":
        dataset, options = options["base"], dict(options.get("base_options") or {})
    return load_split(dataset, data.root, data.train_split, **options)


# ---------------------------------------------------------------------------------------------------------------------
# Every method at once (what the notebook shows)
# ---------------------------------------------------------------------------------------------------------------------
def _per_method(predictions: Predictions, compute: Callable[[str, np.ndarray], pd.DataFrame]) -> pd.DataFrame:
    frames = [compute(name, s).assign(method=name) for name, s in predictions.scores.items()]
    frame = pd.concat(frames, ignore_index=True)
    return frame[["method", *[c for c in frame.columns if c != "method"]]]


def evaluate_methods(predictions: Predictions, pairs: pd.DataFrame, train_counts: Any, *,
                     thresholds: Mapping[str, Any] | None = None, band_rule: str = "auto", many: int = 100,
                     few: int = 20) -> dict[str, pd.DataFrame]:
    """Every method of `predictions` on the same `pairs`: ``pair_ap`` (per method and pair), ``summary`` (per
    method: mean exclusive and co-occur AP and their gap, mean conditional false-positive rates, mAP per band),
    ``false_positives`` (per method and pair) and ``bands`` (per method and band)."""
    thresholds = dict(thresholds or {})
    y, m = predictions.targets, predictions.mask
    pair_ap = _per_method(predictions, lambda name, s: exclusive_cooccur_ap(s, y, pairs, mask=m))
    false_pos = _per_method(predictions, lambda name, s: conditional_false_positives(
        s, y, pairs, thresholds=thresholds.get(name, 0.5), mask=m))
    bands = _per_method(predictions, lambda name, s: band_ap(s, y, train_counts, mask=m, rule=band_rule, many=many,
                                                             few=few))
    bands.attrs["rule"] = band_rule_used(train_counts, rule=band_rule, many=many, few=few)
    rows = []
    for name, s in predictions.scores.items():
        fp = false_pos[false_pos["method"] == name]
        band_map = bands[bands["method"] == name].set_index("band")["mAP"]
        rows.append({"method": name, **mean_pair_ap(s, y, pairs, mask=m),
                     "fp_rate_with_z": float(fp["fp_rate_with_z"].mean()),
                     "fp_rate_without_z": float(fp["fp_rate_without_z"].mean()),
                     **{f"{band}_mAP": float(band_map[band]) for band in BANDS}})
    return {"pair_ap": pair_ap, "summary": pd.DataFrame(rows), "false_positives": false_pos, "bands": bands}


def method_metrics(summary: pd.DataFrame, split: str) -> dict[str, dict[str, dict[str, float]]]:
    """`evaluate_methods`' summary as `mlic.report.record(methods=...)`: ``{method: {split: {metric: value}}}``,
    NaN values left out."""
    out = {}
    for row in summary.to_dict("records"):
        values = {k: float(v) for k, v in row.items() if k != "method" and np.isfinite(v)}
        out[str(row["method"])] = {split: values}
    return out


def headline(summary: pd.DataFrame, method: str, split: str, *, pairs_in_group: Mapping[str, float] | None = None
             ) -> dict[str, dict[str, float]]:
    """The reference method's row of `evaluate_methods`' summary, plus the share of pairs inside planted groups
    (e.g. ``{"label_pairs_in_group": 100.0}``), as `mlic.report.record(metrics=...)`; NaN values left out."""
    values = method_metrics(summary[summary["method"] == method], split)[method][split]
    values.update({k: float(v) for k, v in (pairs_in_group or {}).items() if np.isfinite(v)})
    return {split: values}

