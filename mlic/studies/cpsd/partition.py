"""CPSD's task decomposition: label partitions of the training split (co-occurrence CGP, dis-occurrence DGP, random),
saved per family, and their agreement with known groups (Scenes' planted ones)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlic.core.io import atomic_write_json
from mlic.data.table import LabelledImages
from mlic.models.label_graph import assignment_from_groups, label_partition, partition_groups, same_part_fraction


@dataclass
class Partition:
    """A label partition: which strategy, k and seed made it, and the part of every class."""

    strategy: str
    k: int
    seed: int
    tau: float
    class_names: list[str]
    assign: list[int]
    method: str = "mlic"

    @property
    def groups(self) -> list[list[int]]:
        """Global label indices of each part."""
        return [g.tolist() for g in partition_groups(np.asarray(self.assign))]

    def part_classes(self, part: int) -> list[str]:
        """Class names of part `part`, in global label order."""
        return [self.class_names[i] for i in self.groups[part]]

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> Partition:
        return cls(**json.loads(Path(path).read_text()))


def make_partition(table: LabelledImages, strategy: str, k: int, *, seed: int = 0, tau: float = 3.0,
                   n_init: int = 20, method: str = "mlic") -> Partition:
    """Partition the classes of a training table with a strategy of `mlic.models.label_graph.STRATEGIES`."""
    assign = label_partition(table.labels, strategy, k, tau=tau, seed=seed, n_init=n_init, method=method)
    return Partition(strategy, k, seed, tau, list(table.class_names), assign.tolist(), method)


def partition_sweep(labels: np.ndarray, ks: Sequence[int], strategies: Sequence[str] = ("cgp", "dgp", "random"), *,
                    tau: float = 3.0, seed: int = 0, n_init: int = 20, method: str = "mlic",
                    groups: Sequence[Sequence[int]] | None = None) -> tuple[dict[str, dict[int, np.ndarray]],
                                                                           pd.DataFrame]:
    """Partitions of the label matrix for every strategy and k, with their agreement with known `groups`.

    Returns:
        ``(partitions, table)``: ``partitions[strategy][k]`` is the `[C]` assignment; the table has one row per
        (strategy, k) with the part sizes and, given `groups` (e.g. Scenes' planted groups), the adjusted Rand index
        against them (`ari`) and the fraction of same-part label pairs that share a group (`same_group`).
    """
    from sklearn.metrics import adjusted_rand_score

    truth = assignment_from_groups(list(groups), labels.shape[1]) if groups is not None else None
    partitions: dict[str, dict[int, np.ndarray]] = {}
    rows = []
    for strategy in strategies:
        partitions[strategy] = {}
        for k in ks:
            assign = label_partition(labels, strategy, k, tau=tau, seed=seed, n_init=n_init, method=method)
            partitions[strategy][k] = assign
            row: dict[str, Any] = {"strategy": strategy, "k": k,
                                   "sizes": "-".join(map(str, np.bincount(assign, minlength=k)))}
            if truth is not None:
                known = truth >= 0
                row["ari"] = float(adjusted_rand_score(truth[known], assign[known]))
                row["same_group"] = same_part_fraction(assign, list(groups))
            rows.append(row)
    return partitions, pd.DataFrame(rows)



def partition_metrics(table: pd.DataFrame, *, split: str = "train") -> dict[str, dict[str, float]]:
    """Headline numbers of a `partition_sweep` table for `mlic.report.record`, under the split whose labels were
    partitioned: ``{split: {ARI_<strategy>_k<k>, same_group_<strategy>_k<k>}}`` (empty without planted groups)."""
    if "ari" not in table:
        return {}
    values: dict[str, float] = {}
    for _, row in table.iterrows():
        name = f"{row['strategy']}_k{int(row['k'])}"
        values.update({f"ARI_{name}": float(row["ari"]), f"same_group_{name}": float(row["same_group"])})
    return {split: values}
