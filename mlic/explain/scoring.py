"""Explanations scored against the truth on data with boxes (Scenes, COCO): for each (image, positive label) the
*pointing game* (is the map's maximum inside a box of that label?) and *energy* (the map's share inside those
boxes), and — the quantitative form of CPSD's Figure 1 — *companion energy*: the share on the boxes of the image's
**other** labels (outside the label's own boxes). `area` and `companion_area` are what a uniform map scores: the
chance levels. Then the same for several models and splits, and the pairs a figure shows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pytorch_grad_cam.utils.image import scale_cam_image

from mlic.data.table import LabelledImages
from mlic.explain.cams import _as_pairs
from mlic.explain.models import ExplainedModel

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Truth: pairs, boxes, pointing game, energy
# ---------------------------------------------------------------------------------------------------------------------
def positive_pairs(table: LabelledImages, rows: Sequence[int] | np.ndarray | None = None,
                   labels: Sequence[int] | None = None) -> np.ndarray:
    """`[P, 2]` (table row, label) of every positive label of `rows` (default: all), optionally only `labels`."""
    rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
    sub = table.labels[rows].astype(bool)
    if labels is not None:
        keep = np.zeros(table.num_classes, dtype=bool)
        keep[np.asarray(labels, dtype=np.int64)] = True
        sub = sub & keep
    r, c = np.nonzero(sub)
    return np.stack([rows[r], c], axis=1).astype(np.int64)


def sample_rows(table: LabelledImages, n: int, *, seed: int = 0) -> np.ndarray:
    """`n` image rows drawn without replacement (all when `n` is 0 or larger than the table), sorted."""
    if n <= 0 or n >= len(table):
        return np.arange(len(table))
    return np.sort(np.random.default_rng(seed).choice(len(table), size=n, replace=False))


def image_sizes(table: LabelledImages, rows: Sequence[int]) -> np.ndarray:
    """`[n, 2]` (width, height) in pixels of `rows`: the COCO `width`/`height` extras, else read from the files."""
    rows = np.asarray(rows, dtype=np.int64)
    width, height = table.extras.get("width"), table.extras.get("height")
    if isinstance(width, np.ndarray) and isinstance(height, np.ndarray) and len(width) == len(table):
        return np.stack([width[rows], height[rows]], axis=1).astype(np.float64)
    from PIL import Image

    out = np.zeros((len(rows), 2))
    for i, r in enumerate(rows):
        with Image.open(table.paths[r]) as image:
            out[i] = image.size
    return out


def box_masks(boxes: np.ndarray, image_wh: tuple[float, float], size: tuple[int, int], *,
              tolerance: float = 0.0) -> dict[int, np.ndarray]:
    """Per class, the union of its boxes as a boolean `[H, W]` mask on a map of `size` (squish-resized image).

    A map pixel belongs to a box when its centre, mapped back to image pixels, lies inside the box (x, y, w, h in
    image pixels) grown by `tolerance` pixels on each side; a box too thin to hold a centre keeps the pixel under its
    own centre.
    """
    h, w = size
    width, height = image_wh
    xs = (np.arange(w) + 0.5) * (width / w)
    ys = (np.arange(h) + 0.5) * (height / h)
    out: dict[int, np.ndarray] = {}
    for row in np.asarray(boxes, dtype=np.float64).reshape(-1, 5):
        c, bx, by, bw, bh = int(row[0]), *row[1:]
        inside_x = (xs >= bx - tolerance) & (xs < bx + bw + tolerance)
        inside_y = (ys >= by - tolerance) & (ys < by + bh + tolerance)
        mask = inside_y[:, None] & inside_x[None, :]
        if not mask.any():
            cy = min(int((by + bh / 2) * h / height), h - 1)
            cx = min(int((bx + bw / 2) * w / width), w - 1)
            mask[max(cy, 0), max(cx, 0)] = True
        out[c] = out[c] | mask if c in out else mask
    return out


def pointing_game(maps: np.ndarray, pairs: Any, table: LabelledImages, *, tolerance: float = 0.0) -> pd.DataFrame:
    """Score maps of (table row, label) pairs against the table's boxes; one row per pair.

    Columns: ``row``, ``image_id``, ``label`` (column), ``class``, ``hit`` (the map's maximum — first in row-major
    order on ties — lies in a box of the label), ``energy`` (share of the map's sum inside the label's boxes),
    ``companion_energy`` (share inside boxes of the image's other positive labels, outside the label's own),
    ``background_energy`` (the rest), ``area`` and ``companion_area`` (the same shares for a uniform map: chance
    levels), ``companions`` (number of other positive labels), ``flat`` (a constant map: scored as uniform).

    Raises:
        ValueError: if the table has no boxes.
    """
    if table.boxes is None:
        raise ValueError(f"{table.source or 'the table'} has no boxes: the pointing game needs them")
    pairs = _as_pairs(pairs)
    maps = np.asarray(maps, dtype=np.float64)
    size = maps.shape[-2:]
    sizes = image_sizes(table, pairs[:, 0])
    rows = []
    cache: dict[int, dict[int, np.ndarray]] = {}
    for i, (r, c) in enumerate(pairs):
        if r not in cache:
            cache[int(r)] = box_masks(table.boxes[r], tuple(sizes[i]), size, tolerance=tolerance)
        masks = cache[int(r)]
        own = masks.get(int(c), np.zeros(size, dtype=bool))
        others = [int(o) for o in np.flatnonzero(table.labels[r]) if o != c]
        companion = np.zeros(size, dtype=bool)
        for o in others:
            if o in masks:
                companion |= masks[o]
        companion &= ~own
        m = np.maximum(maps[i], 0)
        total = m.sum()
        flat = bool(m.max() - m.min() <= 1e-12)
        area, companion_area = own.mean(), companion.mean()
        if total <= 0 or flat:
            energy, companion_energy = area, companion_area
        else:
            energy, companion_energy = m[own].sum() / total, m[companion].sum() / total
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        rows.append({"row": int(r), "image_id": table.image_ids[r], "label": int(c), "class": table.class_names[c],
                     "hit": bool(own[y, x]), "energy": float(energy), "companion_energy": float(companion_energy),
                     "background_energy": float(1.0 - energy - companion_energy), "area": float(area),
                     "companion_area": float(companion_area), "companions": len(others), "flat": flat})
    return pd.DataFrame(rows, columns=["row", "image_id", "label", "class", "hit", "energy", "companion_energy",
                                       "background_energy", "area", "companion_area", "companions", "flat"])


def random_maps(shape: tuple[int, ...], *, seed: int = 0, smooth: int = 0) -> np.ndarray:
    """Uniform random maps `[P, H, W]` in [0, 1] (the pointing game's chance baseline); `smooth` > 0 upsamples a
    coarse `smooth × smooth` random grid instead, like a CAM of that resolution."""
    rng = np.random.default_rng(seed)
    if smooth <= 0:
        return rng.random(shape).astype(np.float32)
    coarse = rng.random((shape[0], smooth, smooth)).astype(np.float32)
    return scale_cam_image(coarse, (shape[-1], shape[-2]))


_SCORE_COLUMNS = ("hit", "energy", "companion_energy", "area", "companion_area")


def summarize_pointing(frame: pd.DataFrame, *, by: Sequence[str] = ("model", "split")) -> pd.DataFrame:
    """Overall scores per group (e.g. model × split), means over pairs: ``pointing`` (hit rate, %), ``energy``
    (%), ``companion_energy`` (%, over pairs with at least one companion), chance levels ``pointing_chance`` /
    ``energy_chance`` (= label box area) and ``companion_chance``, ``pointing_macro`` (mean over labels) and
    ``pairs``."""
    by = [b for b in by if b in frame.columns]
    groups = frame.groupby(by, sort=False) if by else [((), frame)]
    rows = []
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        with_company = part[part["companions"] > 0]
        rows.append({**dict(zip(by, key)), "pairs": len(part),
                     "pointing": 100 * part["hit"].mean(), "pointing_chance": 100 * part["area"].mean(),
                     "pointing_macro": 100 * part.groupby("label")["hit"].mean().mean(),
                     "energy": 100 * part["energy"].mean(), "energy_chance": 100 * part["area"].mean(),
                     "companion_energy": 100 * with_company["companion_energy"].mean() if len(with_company)
                     else float("nan"),
                     "companion_chance": 100 * with_company["companion_area"].mean() if len(with_company)
                     else float("nan"),
                     "companion_pairs": len(with_company)})
    return pd.DataFrame(rows)


def per_label_pointing(frame: pd.DataFrame, *, by: Sequence[str] = ("model", "split")) -> pd.DataFrame:
    """`summarize_pointing` per label (one row per group × class)."""
    by = [b for b in by if b in frame.columns]
    out = summarize_pointing(frame, by=[*by, "class"])
    return out.drop(columns=["pointing_macro"])


# ---------------------------------------------------------------------------------------------------------------------
# Several models, several splits
# ---------------------------------------------------------------------------------------------------------------------
def score_models(models: Mapping[str, ExplainedModel], tables: Mapping[str, LabelledImages], *,
                 method: str = "gradcam", target_layer: str | int | None = None, max_images: int = 200,
                 seed: int = 0, batch_size: int = 32, tolerance: float = 0.0) -> pd.DataFrame:
    """Pointing game and energies of every model on the same (image, positive label) pairs of every split.

    `max_images` images per split are drawn once (seeded) and shared by all models, so rows line up across models.
    Returns `pointing_game`'s columns plus ``model``, ``split``, ``score`` (the pair's sigmoid score); the hooked
    layer's name is in ``attrs["layer"]``.
    """
    frames = []
    layer = ""
    for split, table in tables.items():
        pairs = positive_pairs(table, sample_rows(table, max_images, seed=seed))
        for name, model in models.items():
            result = model.explain_table(table, pairs, method=method, target_layer=target_layer,
                                         batch_size=batch_size)
            frame = pointing_game(result.maps, pairs, table, tolerance=tolerance)
            frame.insert(0, "split", split)
            frame.insert(0, "model", name)
            frame["score"] = result.scores
            frames.append(frame)
            layer = layer or result.layer
            log.info("%s on %s: %d pairs, pointing %.1f%%", name, split, len(frame), 100 * frame["hit"].mean())
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out.attrs["layer"] = layer  # the hooked layer's name, for titles
    return out


def pointing_metrics(summary: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """Every model's numbers of a `summarize_pointing(by=model, split)` table for `mlic.report.record`:
    ``{model: {split: {pointing, energy, companion_energy}}}`` (percent); the first model's is the headline."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for _, row in summary.iterrows():
        out.setdefault(str(row["model"]), {})[str(row["split"])] = {
            key: round(float(row[key]), 3) for key in ("pointing", "energy", "companion_energy")}
    return out


def pick_figure_pairs(frame: pd.DataFrame, *, label: str = "", n: int = 4, model: str = "", split: str = "",
                      min_pairs: int = 0) -> pd.DataFrame:
    """Pairs for CPSD's Figure 4: images of one label that also hold other labels, those where `model` (default:
    the first) puts the most energy on the companions first — where a model finds "mouse" by looking at the laptop.

    Args:
        frame: `score_models` rows.
        label: class name; empty → the label with the highest mean companion energy under `model` among labels with
            at least `min_pairs` (default `n`) such pairs.
        n: pairs returned.
        model: the model whose companion energy ranks the pairs.
        split: restrict to a split (default: the first).
    """
    model = model or str(frame["model"].iloc[0])
    split = split or str(frame["split"].iloc[0])
    rows = frame[(frame["model"] == model) & (frame["split"] == split) & (frame["companions"] > 0)]
    if rows.empty:
        rows = frame[(frame["model"] == model) & (frame["split"] == split)]
    if not label:
        counts = rows.groupby("class")["companion_energy"].agg(["mean", "size"])
        eligible = counts[counts["size"] >= (min_pairs or n)]
        label = str((eligible if len(eligible) else counts)["mean"].idxmax())
    chosen = rows[rows["class"] == label].sort_values("companion_energy", ascending=False, kind="stable")
    return chosen.head(n)[["split", "row", "image_id", "label", "class"]].reset_index(drop=True)


def disagreements(frame: pd.DataFrame, *, n: int = 4, split: str = "", key: str = "energy") -> pd.DataFrame:
    """The (image, label) pairs where the models' maps disagree most: the largest range of `key` across models
    (energy by default) on `split` (default: the last split). One row per pair with each model's `key`."""
    split = split or str(frame["split"].iloc[-1])
    part = frame[frame["split"] == split]
    wide = part.pivot_table(index=["row", "label", "class", "image_id"], columns="model", values=key)
    if wide.shape[1] < 2:
        wide["spread"] = 0.0
    else:
        wide["spread"] = wide.max(axis=1) - wide.min(axis=1)
    wide = wide.sort_values("spread", ascending=False, kind="stable").head(n).reset_index()
    wide.insert(0, "split", split)
    wide.columns.name = None
    return wide


def comparison_examples(models: Mapping[str, ExplainedModel], table: LabelledImages, pairs: Any, *,
                        method: str = "gradcam", target_layer: str | int | None = None) -> dict[str, Any]:
    """What `mlic.plots.cam_comparison` draws: the images of (table row, label) `pairs` and every model's map.

    Returns:
        ``images`` `[P, S, S, 3]` in [0, 1], ``maps`` (model → `[P, S, S]`), ``scores`` (model → `[P]`),
        ``pairs``, ``class_names``, ``labels`` `[P, C]` (truth of each image), and ``boxes``: per pair, the image's
        boxes `[k, 5]` scaled to the `S × S` map (class, x, y, w, h).
    """
    pairs = _as_pairs(pairs)
    first = next(iter(models.values()))
    size = first.image_size
    _, images = first.inputs(table, pairs[:, 0]) if len(pairs) else (None, np.zeros((0, size, size, 3)))
    maps, scores = {}, {}
    for name, model in models.items():
        result = model.explain_table(table, pairs, method=method, target_layer=target_layer)
        if result.maps.shape[-1] != size:  # models of another input size: resample to the shown one
            result.maps = scale_cam_image(result.maps, (size, size))
        maps[name], scores[name] = result.maps, result.scores
    boxes = []
    sizes = image_sizes(table, pairs[:, 0]) if len(pairs) else np.zeros((0, 2))
    for (r, _), (w, h) in zip(pairs, sizes):
        b = np.asarray(table.boxes[r] if table.boxes is not None else np.zeros((0, 5)), dtype=np.float64).copy()
        b = b.reshape(-1, 5)
        b[:, [1, 3]] *= size / w
        b[:, [2, 4]] *= size / h
        boxes.append(b)
    return {"images": images, "maps": maps, "scores": scores, "pairs": pairs, "class_names": list(table.class_names),
            "labels": table.labels[pairs[:, 0]] if len(pairs) else np.zeros((0, table.num_classes)),
            "boxes": boxes, "method": method}
