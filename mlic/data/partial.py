"""Partial-label simulation: observed labels derived from full ones, for single-positive multi-label learning.

Reference: E. Cole, O. Mac Aodha, T. Lorieul, P. Perona, D. Morris, N. Jojic, "Multi-Label Learning from Single
Positive Labels", CVPR 2021; code ``elijahcole/single-positive-multi-label``, ``preproc/generate_observed_labels.py``
and, for the label-bias variants, ``preproc/biased_labels.py`` (the ``spml-bias`` follow-up, "Understanding Label
Bias in Single Positive Multi-Label Learning", PRs #13/#14).

The observed labels live in `LabelledImages.observed` (int8, {1 observed positive, 0 unknown, -1 observed negative})
beside the untouched true labels, so every metric is still computed on the truth; only losses that declare
``uses_observed`` (and the engine's masking of the others) see the observations.

What the reference does and what `mlic` keeps:

- ``uniform`` (the paper's setting): one ``np.random.RandomState(seed)`` for the whole split; per image, in row order,
  the indices of its positives are shuffled and the first ``num_pos`` kept, then the indices of its negatives are
  shuffled and the first ``num_neg`` kept (the negatives are shuffled even when ``num_neg`` is 0, which consumes the
  generator). `mlic` repeats these draws exactly, so the same label matrix and seed observe the same labels as the
  reference script. ``-1`` for a count means "all of them".
- ``size`` and ``loc`` (the spml-bias follow-up, COCO only there): the observed positive is *sampled*, not chosen
  greedily. ``size`` weighs each present class by the summed area of its objects over the total area of the image's
  objects (COCO's segmentation ``area`` there; box area ``w * h`` here). ``loc`` weighs each object by the inverse of
  the distance from its box centre to the image centre (a distance of 0 becomes 0.0005, as there) and sums the weights
  per class. A larger or more central object is thus more likely, not certain, to give the observed label. The
  reference draws with Python's ``random.choices``; `mlic` draws with the same ``RandomState(seed)`` as ``uniform``
  (``choice`` with probabilities, without replacement when ``num_pos > 1``), so the biased picks are reproducible but
  not byte-identical to the reference's. Positives without any box get weight 0; an image whose positives all weigh 0
  falls back to a uniform pick (as the follow-up's ``empirical`` variant does). The reference's dispatch bugs (``loc``
  versus ``location``) and its ``semantic``/``empirical`` variants, which need a human-study weight table, are not
  reproduced. Observed negatives, if any, are always drawn uniformly.
- ``hidden`` (not in the reference): a fixed fraction of all label entries, drawn uniformly without replacement, is
  hidden (0); every other entry shows its true value (+1 or -1). This is the "partially observed labels" setting.

Images with no positive label keep no observed positive (the reference does the same): the simulation never invents
a positive. A table that already carries an observed matrix (VOC's difficult objects) only has its known entries
sampled: positives where ``observed == 1``, negatives where ``observed == -1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlic.data.table import LabelledImages

MODES: tuple[str, ...] = ("single_positive", "pos_neg", "hidden")
BIASES: tuple[str, ...] = ("uniform", "size", "loc")
#: the reference's distance for an object centred exactly on the image centre (avoids a division by zero)
_ZERO_DISTANCE = 0.0005


def simulate_observed(table: LabelledImages, *, mode: str = "single_positive", seed: int = 1200, num_pos: int = 1,
                      num_neg: int = 0, hidden_fraction: float | None = None, bias: str = "uniform") -> LabelledImages:
    """The table with an observed-label matrix derived from its full labels (which stay as they are).

    Args:
        table: The training split with full labels (and boxes for ``bias`` other than ``uniform``).
        mode: ``"single_positive"`` (one positive per image, the paper's setting), ``"pos_neg"`` (``num_pos``
            positives and ``num_neg`` negatives per image) or ``"hidden"`` (``hidden_fraction`` of all entries
            hidden, the rest observed with their true sign).
        seed: Seed of the `np.random.RandomState` (the reference's 1200 by default); the result is a function of the
            labels (and boxes), the arguments and this seed alone.
        num_pos: Positives observed per image (``-1``: all); must be 1 for ``single_positive``.
        num_neg: Negatives observed per image (``-1``: all); must be 0 for ``single_positive``.
        hidden_fraction: For ``hidden`` only (and required there): the fraction of entries hidden, in [0, 1].
        bias: Which positive is observed: ``"uniform"``, ``"size"`` (larger objects more likely) or ``"loc"``
            (objects nearer the image centre more likely); the last two need boxes, ``loc`` also the images'
            ``width`` and ``height`` in `table.extras`. Not for ``hidden``.

    Returns:
        A new table (`table.with_observed`), with the settings in ``extras["partial"]``.

    Raises:
        ValueError: For an unknown mode or bias, counts or a fraction out of range, arguments that do not apply to
            the mode, or a bias that needs boxes (or image sizes) the table does not have.
    """
    _check_arguments(table, mode, num_pos, num_neg, hidden_fraction, bias)
    rng = np.random.RandomState(seed)
    positive = table.labels == 1
    negative = table.labels == 0
    if table.observed is not None:  # sample only the entries the table itself knows
        positive &= table.observed == 1
        negative &= table.observed == -1
    if mode == "hidden":
        observed = _hide(positive, negative, float(hidden_fraction), rng)  # type: ignore[arg-type]
    else:
        weights = None if bias == "uniform" else _bias_weights(table, bias)
        observed = _observe_counts(positive, negative, num_pos, num_neg, rng, weights)
    result = table.with_observed(observed)
    settings: dict[str, Any] = {"mode": mode, "seed": seed, "bias": bias}
    if mode == "hidden":
        settings["hidden_fraction"] = float(hidden_fraction)  # type: ignore[arg-type]
    else:
        settings.update({"num_pos": num_pos, "num_neg": num_neg})
    result.extras["partial"] = settings
    return result


def _check_arguments(table: LabelledImages, mode: str, num_pos: int, num_neg: int, hidden_fraction: float | None,
                     bias: str) -> None:
    if mode not in MODES:
        raise ValueError(f"Unknown partial-label mode {mode!r}. Available: {', '.join(MODES)}")
    if bias not in BIASES:
        raise ValueError(f"Unknown label bias {bias!r}. Available: {', '.join(BIASES)} (the reference's 'semantic' "
                         "and 'empirical' variants need a human-study weight table and are not provided)")
    if mode == "hidden":
        if hidden_fraction is None:
            raise ValueError("mode='hidden' needs hidden_fraction, the fraction of label entries to hide")
        if not 0.0 <= float(hidden_fraction) <= 1.0:
            raise ValueError(f"hidden_fraction must lie in [0, 1], got {hidden_fraction}")
        if bias != "uniform":
            raise ValueError(f"bias {bias!r} chooses which positive is observed; it does not apply to mode='hidden'")
        if (num_pos, num_neg) != (1, 0):
            raise ValueError("num_pos and num_neg do not apply to mode='hidden' (use hidden_fraction)")
        return
    if hidden_fraction is not None:
        raise ValueError(f"hidden_fraction applies to mode='hidden' only, not to mode={mode!r}")
    for name, value in (("num_pos", num_pos), ("num_neg", num_neg)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < -1:
            raise ValueError(f"{name} must be an integer >= 0, or -1 for all, got {value!r}")
    if mode == "single_positive" and (num_pos, num_neg) != (1, 0):
        raise ValueError(f"mode='single_positive' observes exactly one positive and no negative; got num_pos="
                         f"{num_pos}, num_neg={num_neg} (use mode='pos_neg' for other counts)")
    if bias != "uniform":
        if table.boxes is None:
            raise ValueError(f"bias {bias!r} needs object boxes, but the table {table.source or '(unnamed)'} has "
                             "none; use bias='uniform' or a dataset read with boxes (COCO format, Scenes)")
        if bias == "loc" and not {"width", "height"} <= set(table.extras):
            raise ValueError(f"bias 'loc' needs the images' width and height in the table's extras, which "
                             f"{table.source or 'the table'} lacks")


def _observe_counts(positive: np.ndarray, negative: np.ndarray, num_pos: int, num_neg: int,
                    rng: np.random.RandomState, weights: np.ndarray | None) -> np.ndarray:
    """Per image: `num_pos` positives (uniform or ∝ `weights`) then `num_neg` negatives, the reference's draw order."""
    observed = np.zeros(positive.shape, dtype=np.int8)
    for i in range(positive.shape[0]):
        pos = np.flatnonzero(positive[i])
        if weights is None:
            rng.shuffle(pos)  # the reference shuffles in place and keeps a prefix
            chosen = pos if num_pos == -1 else pos[:num_pos]
        else:
            chosen = _weighted_pick(pos, weights[i, pos], num_pos, rng)
        observed[i, chosen] = 1
        neg = np.flatnonzero(negative[i])
        rng.shuffle(neg)  # drawn even when num_neg == 0, as the reference does
        observed[i, neg if num_neg == -1 else neg[:num_neg]] = -1
    return observed


def _hide(positive: np.ndarray, negative: np.ndarray, fraction: float, rng: np.random.RandomState) -> np.ndarray:
    """Every known entry observed with its sign, except ``round(fraction · N · C)`` entries drawn uniformly."""
    observed = positive.astype(np.int8) - negative.astype(np.int8)
    hidden = rng.permutation(observed.size)[: int(round(fraction * observed.size))]
    observed.reshape(-1)[hidden] = 0
    return observed


def _weighted_pick(candidates: np.ndarray, weights: np.ndarray, count: int, rng: np.random.RandomState) -> np.ndarray:
    """`count` of `candidates` drawn without replacement ∝ `weights` (uniformly if every weight is 0)."""
    k = len(candidates) if count == -1 else min(count, len(candidates))
    if k == 0:
        return candidates[:0]
    total = float(weights.sum())
    if total <= 0:  # no box for any positive: the follow-up's fallback is a uniform pick
        return rng.choice(candidates, size=k, replace=False)
    # rows of zero weight cannot be drawn without replacement past the positive-weight ones: pad with the rest
    nonzero = int((weights > 0).sum())
    first = rng.choice(candidates, size=min(k, nonzero), replace=False, p=weights / total)
    if k <= nonzero:
        return first
    rest = candidates[weights <= 0]
    return np.concatenate([first, rng.choice(rest, size=k - nonzero, replace=False)])


def _bias_weights(table: LabelledImages, bias: str) -> np.ndarray:
    """Per image and class, the follow-up's sampling weight: summed box area (``size``) or inverse distance of the
    box centres to the image centre (``loc``), normalised per image."""
    weights = np.zeros(table.labels.shape, dtype=np.float64)
    assert table.boxes is not None
    for i, boxes in enumerate(table.boxes):
        if len(boxes) == 0:
            continue
        cls = boxes[:, 0].astype(np.int64)
        x, y, w, h = (boxes[:, j].astype(np.float64) for j in range(1, 5))
        if bias == "size":
            per_box = w * h
        else:
            cx, cy = 0.5 * float(table.extras["width"][i]), 0.5 * float(table.extras["height"][i])
            dist = np.hypot(x + 0.5 * w - cx, y + 0.5 * h - cy)
            per_box = 1.0 / np.where(dist == 0, _ZERO_DISTANCE, dist)
        np.add.at(weights[i], cls, per_box)
        total = weights[i].sum()
        if total > 0:
            weights[i] /= total
    return weights
