"""Single-positive multi-label learning: the comparison loop and the analyses its notebook draws.

- `compare_losses(base_cfg, losses, seeds, partial=...)` trains one run per loss and seed on observed labels simulated
  from the training split (`mlic.data.partial`), the full-label ``bce`` as the upper bound, and returns one row per run
  (metrics on the true labels of every split, plus how many hidden training positives the classifier recovers) and,
  for ROLE, the label estimator's agreement with the hidden truth per epoch.
- `recovery(scores, labels, observed)`: over the entries a method never saw (observed 0), how its scores at a
  threshold agree with the truth: how many hidden positives it recovers, the precision of what it flags.
- `observed_summary(table)`: what a simulation kept (observed positives per image, share of the true positives).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlic.core.config import RunConfig
from mlic.data.table import LabelledImages
from mlic.runs import Run, run_grid
from mlic.stats import over_seeds

log = logging.getLogger(__name__)

#: the single-positive losses of the paper (with ``role``), and ``bce`` trained on full labels as the upper bound
SPML_LOSSES: tuple[str, ...] = ("bce", "an", "an_ls", "wan", "epr", "role")
FULL_LABEL_LOSSES: tuple[str, ...] = ("bce",)
RECOVERY_KEYS: tuple[str, ...] = ("accuracy", "hidden_recall", "precision", "mean_abs_error")


def hidden_positives(labels: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Boolean ``[N, C]``: true positives that the observed matrix does not reveal (observed 0)."""
    return (np.asarray(labels) == 1) & (np.asarray(observed) == 0)


def recovery(scores: np.ndarray, labels: np.ndarray, observed: np.ndarray, *, threshold: float = 0.5
             ) -> dict[str, float]:
    """How scores at `threshold` agree with the truth over the unobserved entries (observed 0).

    Returns:
        ``hidden_positives`` and ``recovered`` (counts), ``hidden_recall`` (recovered / hidden positives),
        ``precision`` (true positives among the unobserved entries scored positive), ``accuracy`` (over the
        unobserved entries) and ``mean_abs_error`` (mean |score − truth| there). Ratios of empty sets are 0.
    """
    scores, labels, observed = np.asarray(scores, dtype=np.float64), np.asarray(labels), np.asarray(observed)
    if not scores.shape == labels.shape == observed.shape:
        raise ValueError(f"scores, labels and observed must share a shape, got {scores.shape}, {labels.shape}, "
                         f"{observed.shape}")
    truth = labels == 1
    unknown = observed == 0
    predicted = scores >= threshold
    hidden = truth & unknown
    flagged = predicted & unknown
    n_unknown, n_hidden, n_flagged = int(unknown.sum()), int(hidden.sum()), int(flagged.sum())
    recovered = int((predicted & hidden).sum())
    return {
        "hidden_positives": float(n_hidden),
        "recovered": float(recovered),
        "hidden_recall": recovered / max(n_hidden, 1),
        "precision": int((flagged & truth).sum()) / max(n_flagged, 1),
        "accuracy": int(((predicted == truth) & unknown).sum()) / max(n_unknown, 1),
        "mean_abs_error": float(np.abs(scores - truth)[unknown].sum()) / max(n_unknown, 1),
    }


def observed_summary(table: LabelledImages) -> dict[str, float]:
    """What an observed-label matrix keeps of the truth: observed positives and negatives per image, the share of
    true positives observed, images without any observed positive, and invented positives (observed 1 on a true 0;
    a simulation must leave none)."""
    if table.observed is None:
        raise ValueError("the table has no observed-label matrix")
    obs, labels = table.observed, table.labels
    n = max(len(table), 1)
    return {
        "observed_pos_per_image": float((obs == 1).sum()) / n,
        "observed_neg_per_image": float((obs == -1).sum()) / n,
        "true_pos_per_image": float(labels.sum()) / n,
        "share_of_positives_observed": float((obs == 1).sum()) / max(int(labels.sum()), 1),
        "images_without_observed_positive": float(((obs == 1).sum(axis=1) == 0).sum()),
        "invented_positives": float(((obs == 1) & (labels == 0)).sum()),
    }


def observed_share_by_class(tables: dict[str, LabelledImages]) -> pd.DataFrame:
    """Long table (variant, label, share): per class, the share of its true positives that are observed, for each
    simulated variant (e.g. bias uniform / size / loc)."""
    rows = []
    for variant, table in tables.items():
        if table.observed is None:
            raise ValueError(f"{variant}: the table has no observed-label matrix")
        pos = table.labels.sum(axis=0)
        seen = (table.observed == 1).sum(axis=0)
        for c, name in enumerate(table.class_names):
            rows.append({"variant": variant, "label": name, "share": seen[c] / pos[c] if pos[c] else np.nan})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- ROLE's estimator in a run folder
def _loss_state(run_dir: str | Path) -> dict[str, Any]:
    return Run(run_dir).state("last")["loss_state"]


def estimator_scores(run_dir: str | Path) -> np.ndarray:
    """ROLE's label estimates ``sigmoid(θ)`` ``[N, C]`` at the end of a run (from ``checkpoints/last.pt``; the
    estimator of the last epoch, not of the epoch whose classifier was kept as best)."""
    state = _loss_state(run_dir)
    if "estimator_logits" not in state:
        raise ValueError(f"{run_dir}: the run's loss has no label estimator (not a ROLE run)")
    return 1.0 / (1.0 + np.exp(-state["estimator_logits"].float().numpy().astype(np.float64)))


def estimator_by_epoch(run_dir: str | Path, labels: np.ndarray, observed: np.ndarray, *,
                       threshold: float = 0.5) -> pd.DataFrame:
    """ROLE's agreement with the hidden truth at the end of each epoch (epoch 0: the initialisation).

    Needs a run trained with ``loss.kwargs.track_truth``: the loss recorded the agreement before every training
    step, so the end of epoch ``e`` is the record before the first step of epoch ``e + 1``; the end of the last
    epoch is computed from the final estimator in ``last.pt``. Columns: ``epoch`` and `RECOVERY_KEYS`.
    """
    history = _loss_state(run_dir).get("_extra_state", {}).get("history", [])
    epochs = len(Run(run_dir).history)
    if not history or epochs == 0:
        raise ValueError(f"{run_dir}: no estimator history; train ROLE with loss.kwargs "
                         "{'track_truth': True}")
    if len(history) % epochs:
        raise ValueError(f"{run_dir}: {len(history)} recorded steps do not split into {epochs} equal epochs")
    per_epoch = len(history) // epochs
    rows = [{"epoch": e, **{k: history[e * per_epoch][k] for k in RECOVERY_KEYS}} for e in range(epochs)]
    final = recovery(estimator_scores(run_dir), labels, observed, threshold=threshold)
    rows.append({"epoch": epochs, **{k: final[k] for k in RECOVERY_KEYS}})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- the comparison
def loss_variants(losses: list[str] | tuple[str, ...], *, track_truth: bool = True) -> dict[str, dict[str, Any]]:
    """Config overrides per loss: the single-positive losses train on the observed labels (``data.partial`` as in
    the base config); ``bce`` is trained on the full labels (``data.partial`` None), the upper bound. ROLE records
    its estimator's agreement with the truth when `track_truth`."""
    unknown = sorted(set(losses) - set(SPML_LOSSES))
    if unknown:
        raise ValueError(f"unknown single-positive loss(es) {unknown}; choose from {list(SPML_LOSSES)}")
    variants: dict[str, dict[str, Any]] = {}
    for name in losses:
        overrides: dict[str, Any] = {"loss.name": name, "loss.kwargs": {}}
        if name in FULL_LABEL_LOSSES:
            overrides["data.partial"] = None
        if name == "role" and track_truth:
            overrides["loss.kwargs"] = {"track_truth": True}
        variants[name] = overrides
    return variants


def observed_training_table(cfg: RunConfig, partial: dict[str, Any]) -> LabelledImages:
    """The training split of `cfg` with the observed labels `partial` simulates, as the engine builds it."""
    from mlic.data.partial import simulate_observed
    from mlic.data.sources import load_split

    data = cfg.data
    table = load_split(data.dataset, data.root, data.train_split, **dict(data.options))
    if data.max_train_images is not None and data.max_train_images < len(table):
        table = table.subset(np.arange(data.max_train_images))
    return simulate_observed(table, **partial)


def compare_losses(base_cfg: RunConfig, losses: list[str] | tuple[str, ...], seeds: list[int] | tuple[int, ...], *,
                   partial: dict[str, Any], threshold: float = 0.5, workers: int = 1
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every loss with every seed (`mlic.runs.run_grid`) and measure what each recovers.

    The training split is added to the evaluated splits, so each run's training-split predictions hold its training
    scores; with the simulated observed labels they give the classifier's `recovery` of the hidden positives.

    Args:
        base_cfg: The shared config (recipe, data, model); `partial` is set as its ``data.partial``.
        losses: Names from `SPML_LOSSES`.
        seeds: Training seeds (weights, data order, ROLE's initialisation); the observation seed is `partial`'s.
        partial: Keyword arguments of `mlic.data.partial.simulate_observed`.
        threshold: The score threshold of `recovery`.
        workers: runs trained at once.

    Returns:
        ``(runs, estimator)``: one row per run with `run_grid`'s columns (``variant`` is the loss), the classifier's
        ``recovered`` / ``hidden_recall`` / ``precision`` on the training split (and ``estimator_hidden_recall``,
        ``estimator_precision`` for ROLE); and one row per ROLE run and epoch (`estimator_by_epoch`) with its
        ``seed``.
    """
    train_split = base_cfg.data.train_split
    splits = list(base_cfg.data.eval_splits)
    base = base_cfg.updated({"data.partial": dict(partial),
                             "data.eval_splits": splits + ([train_split] if train_split not in splits else [])})
    observed_table = observed_training_table(base, partial)
    position = {image_id: i for i, image_id in enumerate(observed_table.image_ids)}
    runs = run_grid(base, loss_variants(losses), seeds, workers=workers)
    extra, curves = [], []
    for row in runs.itertuples():
        run = Run(row.run_dir)
        predictions = run.predictions(train_split)
        # the evaluated split is the whole training split; with data.max_train_images only its first rows trained
        ids = [str(i) for i in predictions["image_ids"]]
        trained = np.asarray([i in position for i in ids])
        order = np.asarray([position[i] for i in ids if i in position], dtype=np.int64)
        labels, observed = observed_table.labels[order], observed_table.observed[order]
        found = recovery(predictions["scores"][trained], labels, observed, threshold=threshold)
        values = {k: found[k] for k in ("hidden_positives", "recovered", "hidden_recall", "precision")}
        if row.variant == "role":
            est = recovery(estimator_scores(run.path), observed_table.labels, observed_table.observed,
                           threshold=threshold)
            values.update({"estimator_hidden_recall": est["hidden_recall"], "estimator_precision": est["precision"]})
            if run.config.loss.kwargs.get("track_truth"):
                curve = estimator_by_epoch(run.path, observed_table.labels, observed_table.observed,
                                           threshold=threshold)
                curves.append(curve.assign(seed=int(row.seed)))
        extra.append(values)
    runs = pd.concat([runs, pd.DataFrame(extra, index=runs.index)], axis=1)
    estimator = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
        columns=["epoch", *RECOVERY_KEYS, "seed"])
    return runs, estimator


def summarise(runs: pd.DataFrame, splits: list[str] | tuple[str, ...], *, metric: str = "mAP") -> pd.DataFrame:
    """Mean and standard deviation over seeds per loss: ``<metric>_<split>`` for each split and the training-set
    ``hidden_recall`` (percent), in the order the losses were trained."""
    columns = [f"{split}/{metric}" for split in splits if f"{split}/{metric}" in runs]
    percent = runs.assign(hidden_recall=100 * runs["hidden_recall"])
    columns.append("hidden_recall")
    if "estimator_hidden_recall" in runs:
        percent = percent.assign(estimator_hidden_recall=100 * runs["estimator_hidden_recall"])
        columns.append("estimator_hidden_recall")
    out = over_seeds(percent, "variant", columns, text=False)
    return out[["variant", "seeds", *[c for c in out.columns if c not in ("variant", "seeds")]]]


def headline(summary: pd.DataFrame, splits: list[str] | tuple[str, ...], *, metric: str = "mAP"
             ) -> dict[str, dict[str, float]]:
    """`{split: {metric: value}}` for `mlic.report.record`: ROLE's mean (else the last loss's)."""
    lead = "role" if "role" in set(summary["variant"]) else summary["variant"].iloc[-1]
    row = summary.set_index("variant").loc[lead]
    return {split: {metric: float(row[f"{split}/{metric}_mean"]), f"{metric}_std": float(row[f"{split}/{metric}_std"])}
            for split in splits if f"{split}/{metric}_mean" in row}


def method_metrics(summary: pd.DataFrame, splits: list[str] | tuple[str, ...], *, metric: str = "mAP"
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """Every loss's numbers for `mlic.report.record(methods=...)`: `{loss: {split: {metric, metric_std}}}` and its
    training-split hidden-positive recall (percent) under ``train``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for _, row in summary.iterrows():
        values = {split: {metric: float(row[f"{split}/{metric}_mean"]),
                          f"{metric}_std": float(row[f"{split}/{metric}_std"])}
                  for split in splits if f"{split}/{metric}_mean" in row}
        values["train"] = {"hidden_recall": float(row["hidden_recall_mean"])}
        out[str(row["variant"])] = values
    return out
