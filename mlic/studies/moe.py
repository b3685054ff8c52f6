"""Analyses of the mixture-of-experts heads (`moe_static`, `moe_dynamic`): what the gates do, per label, per image
and per scene context, and how each expert is used — the numbers behind `notebooks/05_moe.ipynb`.

Gate weights come from a run's predictions (`aux_gates`, `[N, C, E]`, saved by the engine because the MoE heads list
`gates` in `recorded_aux`); slot j < `n_specific` is the label's (group's) j-th specific expert, the others are the
shared experts. Training across heads and seeds is `train_seeds` (`mlic.studies.heads.train_heads` over seeds).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlic import runs
from mlic.core.config import RunConfig
from mlic.models.label_graph import cooccurrence
from mlic.runs import Run
from mlic.stats import over_seeds
from mlic.studies.heads import train_heads

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Training several heads over several seeds
# --------------------------------------------------------------------------------------------------------------------
def train_seeds(base_cfg: RunConfig, heads: dict[str, dict[str, Any]], seeds: Sequence[int], *,
                workers: int = 1) -> pd.DataFrame:
    """Train every head of `heads` (entries as in `mlic.studies.heads.head_overrides`) once per seed; one row per
    (head, seed) with `mlic.runs.run_grid`'s columns (`variant` is the head), no profiling."""
    return train_heads(base_cfg, heads, seeds=seeds, profile=False, workers=workers)


def seed_summary(table: pd.DataFrame, *, metric: str = "mAP",
                 splits: Sequence[str] = ("test", "test_shift")) -> pd.DataFrame:
    """Mean, std (ddof 1; 0 for one seed) and seed count of `<split>/<metric>` per head (`variant`), in
    first-appearance order, plus a ``"mean ± std"`` text column per split."""
    return over_seeds(table, "variant", [f"{s}/{metric}" for s in splits])


def summary_metrics(summary: pd.DataFrame, *, metric: str = "mAP", splits: Sequence[str] = ("test", "test_shift"),
                    lead: str = "moe_dynamic") -> dict[str, dict[str, float]]:
    """Headline numbers of a `seed_summary` table for `mlic.report.record`: `{split: {metric: mean of the lead
    head}}` (the first head when `lead` was not trained)."""
    rows = summary.set_index("variant")
    name = lead if lead in rows.index else rows.index[0]
    return {split: {metric: float(rows.loc[name, f"{split}/{metric}_mean"]),
                    f"{metric}_std": float(rows.loc[name, f"{split}/{metric}_std"])} for split in splits}


def method_metrics(summary: pd.DataFrame, *, metric: str = "mAP", splits: Sequence[str] = ("test", "test_shift"),
                   routing: pd.DataFrame | None = None, gate_split: str = "test"
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """Every head's numbers for `mlic.report.record(methods=...)`: `{head: {split: {metric, metric_std}}}`, plus,
    given a `label_routing` table of the gates on `gate_split`, each MoE head's mean over labels of `shared_share`
    (and of `context_dependence`) under that split."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for _, row in summary.iterrows():
        values = out.setdefault(str(row["variant"]), {})
        for split in splits:
            values[split] = {metric: float(row[f"{split}/{metric}_mean"]),
                             f"{metric}_std": float(row[f"{split}/{metric}_std"])}
    if routing is not None:
        columns = [c for c in ("shared_share", "context_dependence") if c in routing]
        for head, rows in routing.groupby("head", sort=False):
            out.setdefault(str(head), {}).setdefault(gate_split, {}).update(
                {c: float(np.nanmean(rows[c])) for c in columns})
    return out


def run_dirs(table: pd.DataFrame, seed: int) -> dict[str, str]:
    """`{head: run_dir}` of one seed's runs in a `train_seeds` table (`mlic.runs.run_dirs`)."""
    return runs.run_dirs(table, seed)


# --------------------------------------------------------------------------------------------------------------------
# Gate weights
# --------------------------------------------------------------------------------------------------------------------
def slot_names(n_specific: int, n_shared: int) -> list[str]:
    """Names of the E gate slots, in the heads' order: `specific 1..n_specific`, then `shared 1..n_shared`."""
    return [f"specific {i + 1}" for i in range(n_specific)] + [f"shared {i + 1}" for i in range(n_shared)]


def load_gates(run_dir: str | Path, split: str) -> np.ndarray:
    """A run's gate weights on `split` as float32 `[N, C, E]` (rows in the split's table order)."""
    predictions = Run(run_dir).predictions(split)
    if "aux_gates" not in predictions:
        raise ValueError(f"{run_dir} saved no gate weights for {split!r}: was it trained with a MoE head?")
    return predictions["aux_gates"].astype(np.float32)


def head_groups(run_dir: str | Path) -> np.ndarray:
    """The expert group of each label (`[C]`) that a MoE run's head was trained with (from its best checkpoint)."""
    state = Run(run_dir).state("best")["state_dict"]
    if "head.group_of" not in state:
        raise ValueError(f"{run_dir}: the checkpoint's head has no expert groups (not a MoE head)")
    return state["head.group_of"].numpy().astype(np.int64)


def mean_gates(gates: np.ndarray, targets: np.ndarray | None = None) -> np.ndarray:
    """Mean gate weights per label `[C, E]` over all images, or with `targets` (`[N, C]`) over the images where the
    label is present (NaN rows for labels present nowhere)."""
    gates = np.asarray(gates, dtype=np.float64)
    if targets is None:
        return gates.mean(axis=0)
    present = np.asarray(targets, dtype=np.float64)
    counts = present.sum(axis=0)
    sums = np.einsum("nc,nce->ce", present, gates)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts[:, None] > 0, sums / counts[:, None], np.nan)


def shared_share(gates: np.ndarray, n_specific: int, targets: np.ndarray | None = None) -> np.ndarray:
    """Per label `[C]`: the mean gate mass on the shared experts (1 − that on the label's specific experts)."""
    return mean_gates(gates, targets)[:, n_specific:].sum(axis=1)


def gates_by_context(gates: np.ndarray, contexts: np.ndarray, label: int, *, targets: np.ndarray | None = None,
                     context_names: Sequence[str] | None = None, slots: Sequence[str] | None = None
                     ) -> pd.DataFrame:
    """Mean gate weights of one label per scene context: one row per context present (`context`, `images`, one
    column per slot), restricted to the images holding the label when `targets` is given."""
    gates = np.asarray(gates, dtype=np.float64)[:, label]
    contexts = np.asarray(contexts)
    keep = np.ones(len(gates), bool) if targets is None else np.asarray(targets)[:, label] > 0
    slots = list(slots) if slots is not None else [f"slot {j}" for j in range(gates.shape[1])]
    rows = []
    for ctx in np.unique(contexts[keep]):
        chosen = keep & (contexts == ctx)
        name = context_names[int(ctx)] if context_names is not None else int(ctx)
        rows.append({"context": name, "images": int(chosen.sum()), **dict(zip(slots, gates[chosen].mean(axis=0)))})
    return pd.DataFrame(rows, columns=["context", "images", *slots])


def context_dependence(gates: np.ndarray, contexts: np.ndarray, targets: np.ndarray | None = None) -> np.ndarray:
    """How much each label's routing changes with the scene context, `[C]` in [0, 1].

    The image-weighted mean over contexts of the total-variation distance between the label's mean gate in that
    context and its mean gate overall (restricted to images holding the label with `targets`; NaN for a label with no
    such image). Exactly 0 for gates that ignore the image.
    """
    gates = np.asarray(gates, dtype=np.float64)
    contexts = np.asarray(contexts)
    weights = np.ones(gates.shape[:2]) if targets is None else np.asarray(targets, dtype=np.float64)
    total = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        overall = np.einsum("nc,nce->ce", weights, gates) / total[:, None]
        spread = np.zeros(gates.shape[1])
        for ctx in np.unique(contexts):
            w = weights * (contexts == ctx)[:, None]
            n = w.sum(axis=0)
            mean = np.einsum("nc,nce->ce", w, gates) / np.maximum(n, 1)[:, None]
            spread += n * 0.5 * np.abs(mean - overall).sum(axis=1)
        return np.where(total > 0, spread / total, np.nan)


def most_context_dependent(gates: np.ndarray, contexts: np.ndarray, targets: np.ndarray | None = None) -> int:
    """The label whose routing depends most on the context (`context_dependence`); label 0 if none varies."""
    dependence = np.nan_to_num(context_dependence(gates, contexts, targets), nan=-1.0)
    return int(np.argmax(dependence))


# --------------------------------------------------------------------------------------------------------------------
# Labels and experts
# --------------------------------------------------------------------------------------------------------------------
def cooccurrence_entropy(labels: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """Label heterogeneity `[C]`: the entropy of each label's co-occurrence distribution.

    For label c, `p_c(j) = M[c, j] / Σ_{j'≠c} M[c, j']` over the other labels j (M the co-occurrence counts); its
    entropy in nats, divided by `log(C − 1)` with `normalize` (1: the label appears equally with every other label;
    0: always with the same one — or never with any, which is taken as no heterogeneity).
    """
    M, _ = cooccurrence(labels)
    M = np.asarray(M, dtype=np.float64).copy()
    np.fill_diagonal(M, 0.0)
    totals = M.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(totals > 0, M / totals, 0.0)
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    classes = M.shape[0]
    if normalize and classes > 2:
        entropy = entropy / np.log(classes - 1)
    return entropy


def label_routing(gates: dict[str, np.ndarray], n_specific: int, train_labels: np.ndarray,
                  class_names: Sequence[str], *, targets: np.ndarray | None = None,
                  contexts: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (head, label): `head`, `label`, `frequency` (share of training images), `heterogeneity`
    (`cooccurrence_entropy` of the training labels), `shared_share` and `specific_share` of the routing (over the
    images holding the label with `targets`), and `context_dependence` given `contexts`."""
    train_labels = np.asarray(train_labels)
    frequency = train_labels.mean(axis=0)
    heterogeneity = cooccurrence_entropy(train_labels)
    frames = []
    for head, values in gates.items():
        shared = shared_share(values, n_specific, targets)
        frame = pd.DataFrame({"head": head, "label": list(class_names), "frequency": frequency,
                              "heterogeneity": heterogeneity, "shared_share": shared, "specific_share": 1 - shared})
        if contexts is not None:
            frame["context_dependence"] = context_dependence(values, contexts, targets)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def expert_utilisation(gates: np.ndarray, n_specific: int, n_shared: int,
                       group_of: np.ndarray | None = None) -> pd.DataFrame:
    """One row per physical expert: `expert`, `kind` (specific / shared), `group` (−1 for shared), `labels` (how many
    labels can route to it), `load` (its share of all routing mass; the column sums to 1), `utilisation` (mean gate
    weight it gets from the labels that can route to it: 1/E for every expert under uniform routing) and `routed`
    (share of those (image, label) pairs giving it a non-zero weight: 1 with dense routing).

    Args:
        gates: `[N, C, E]` gate weights.
        n_specific, n_shared: the head's slot counts (E = their sum).
        group_of: `[C]` expert group of each label (`head_groups`); None means one group per label.
    """
    gates = np.asarray(gates, dtype=np.float64)
    classes = gates.shape[1]
    if gates.shape[2] != n_specific + n_shared:
        raise ValueError(f"gates have {gates.shape[2]} slots, expected n_specific + n_shared = "
                         f"{n_specific + n_shared}")
    group_of = np.arange(classes) if group_of is None else np.asarray(group_of)
    mass = gates.mean(axis=0)  # [C, E]
    nonzero = (gates > 0).mean(axis=0)
    rows = []
    for g in np.unique(group_of):
        members = group_of == g
        for t in range(n_specific):
            rows.append({"expert": f"g{g}/specific {t + 1}", "kind": "specific", "group": int(g),
                         "labels": int(members.sum()), "load": mass[members, t].sum() / classes,
                         "utilisation": mass[members, t].mean(), "routed": nonzero[members, t].mean()})
    for s in range(n_shared):
        j = n_specific + s
        rows.append({"expert": f"shared {s + 1}", "kind": "shared", "group": -1, "labels": classes,
                     "load": mass[:, j].sum() / classes, "utilisation": mass[:, j].mean(),
                     "routed": nonzero[:, j].mean()})
    return pd.DataFrame(rows)
