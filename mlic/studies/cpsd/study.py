"""CPSD — Complementary Parallel Self-Distillation (seed 001): partitions → teachers → merged logits → student.

Paper: J. Xu et al., "Boosting Multi-Label Image Classification with Complementary Parallel Self-Distillation",
IJCAI 2022. Reference code: ``Robbie-Xu/CPSD`` (`partition/`, `train_B_part.py`, `dis_B_cpsd.py`).

The pipeline, each step reusing `mlic.train.fit` unchanged:

1. **Partitions** (`mlic.models.label_graph.label_partition`): the training labels' co-occurrence (CGP) or
   dis-occurrence (DGP) affinity is split into k parts by spectral clustering; random partitions and the single
   full-label part (SD) are the baselines. Saved as JSON under ``<root>/partitions/``.
2. **Teachers**: one run per part, on *all* training images with the targets restricted to the part's labels
   (images with none of them are all-negative), with the same architecture and recipe as the student. The
   restriction is a dataset view: the registered reader ``label_subset`` (`mlic.data.subsets`) wraps any reader and
   keeps only the given columns, so a teacher is an ordinary `RunConfig` and its run folder an ordinary run folder.
   Teachers run one after another or in parallel spawned processes (`CPSDSettings.workers`; the study keeps one pool
   for all its runs) through `mlic.runs.train_runs`: a finished teacher of the same config is reused, an
   interrupted one resumes.
3. **Merged teacher logits**: each teacher's best weights, in **eval mode** (the reference leaves its teachers in
   train mode — batch statistics, running stats drifting — a bug), predict logits for every training image with the
   evaluation transform; the parts' logits are scattered back to global label order and cached per family in
   ``train_logits.npz``, so the student phase reruns alone.
4. **Student**: `fit` with the ``cpsd`` loss (`mlic.losses.distill`): ASL + MSE to the merged CGP logits + MSE to the
   merged DGP logits, with the reference's weights 0.5 / (α/2) / (0.5 − α/2). SD, CGPD, DGPD and random-partition
   distillation (RPD) differ only in their teacher families (`VARIANTS`). The student's config records a digest of
   its teachers, so a student of retrained teachers is retrained too.

Cached logits versus the reference's online teachers: the reference computes teacher logits on the student's own
augmented batch; a cache holds one logit vector per image, computed on the un-augmented image. In frozen-backbone mode
(cached features, no augmentation) the two coincide (apart from the reference's train-mode bug); end to end, the
student sees augmented images and distils toward the clean image's teacher logits (a "consistent teaching" variant).

Defaults, paper versus reference code (`CPSDSettings`): τ = 3 (paper; the code's square root is τ = 2); k = 5;
student weights from the code (the paper's Eq. 7 ratios, halved); teachers with the student's recipe — the paper
trains teachers 20 epochs and students 80, the code 80 and 80, and the code's student learning rate is 1e-5 against
1e-4 for teachers: set `teacher_overrides` / `student_overrides` (dotted `RunConfig` keys) to reproduce either.

Under ``root``: ``partitions/<family>.json`` and the merged logits ``teachers/<family>/logits-<digest>.npz``
with ``<family> = <strategy>-k<k>-seed<seed>``; the teachers' and students' run folders are `mlic.runs.run_dir`s
under ``teachers/<family>/part<t>`` and ``students/<variant>[-k<k>]``, tagged (``role``, ``variant``, ``k``,
``seed``, ``family``, ``part``) so that other notebooks find them with `mlic.runs.find`.

Modules: `partition` (the partitions), `teachers` (their logits), this one (the study and its tables).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlic import metrics
from mlic.core import paths
from mlic.core.config import RunConfig
from mlic.data.sources import load_split
from mlic.data.table import LabelledImages
from mlic.models.label_graph import assignment_from_groups, cooccurrence, cooccurrence_strength
from mlic.runs import Run, metric_columns, process_pool, run_dir, train_runs
from mlic.stats import over_seeds
from mlic.studies.cpsd.partition import Partition, make_partition
from mlic.studies.cpsd.teachers import cache_teacher_logits, logits_digest

log = logging.getLogger(__name__)

VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "sd": ("single",),
    "cgpd": ("cgp",),
    "dgpd": ("dgp",),
    "cpsd": ("cgp", "dgp"),
    "rpd": ("random",),
}
"""Student variants → the teacher families (partition strategies) they distil from (Table 3 and Figure 3 of the paper:
baseline, self-distillation, CGP / DGP distillation, both = CPSD, random-partition distillation)."""

STUDY_TAG = "cpsd"


@dataclass
class CPSDSettings:
    """Settings of the CPSD pipeline (literals, so a notebook or YAML can hold them).

    Attributes:
        tau: affinity smoothing exponent (reference code 2, its square root — the default; paper 3).
        partition_method: the spectral procedure (`mlic.models.label_graph.spectral_partition`): ``"reference"``
            (the default: CPSD's code, which reproduces the co-occurrence partitions CPSD ships for COCO exactly)
            or ``"mlic"`` (row-normalised embedding and k-means; the same on well separated groups).
        n_init: k-means restarts of the spectral partition (reference 20).
        alpha: CGP/DGP balance of the student loss (reference 0.5).
        cls_weight: weight of the student's ASL term (reference 0.5; paper Eq. 7: 1, with both KD weights 0.5 —
            the same ratios, doubled).
        teacher_overrides: dotted `RunConfig` overrides for teachers only (e.g. the paper's ``train.epochs: 20``).
        student_overrides: dotted overrides for distilled students only (e.g. the code's ``optim.lr: 1e-5``).
        workers: parallel teacher processes (1: one after another, in this process); each uses the base config's
            `runtime.threads` torch threads.
        evaluate_teachers: also evaluate every teacher on the base recipe's `eval_splits` (its validation split is
            always used, to pick its best epoch); off by default: only the merged logits matter.
        keep_last: keep each finished run's `last.pt` (only needed to resume an unfinished run; a frozen-backbone
            checkpoint still holds the whole backbone, so a study of a hundred runs saves gigabytes by dropping
            them). `best.pt` is always kept: the teachers' logits come from it.
    """

    tau: float = 2.0
    partition_method: str = "reference"
    n_init: int = 20
    alpha: float = 0.5
    cls_weight: float = 0.5
    teacher_overrides: dict[str, Any] = field(default_factory=dict)
    student_overrides: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    evaluate_teachers: bool = False
    keep_last: bool = False


@dataclass
class VariantResult:
    """One trained student (or baseline): its metrics and what it cost.

    Costs are sums of each run's own training time (`mlic.runs.Run.seconds`): what the variant costs to train,
    whether or not its runs overlapped in parallel workers or were reused from an earlier call.
    """

    variant: str
    k: int | None
    seed: int
    run_dir: Path
    metrics: dict[str, dict[str, float]]
    teacher_seconds: float
    student_seconds: float
    teachers: int

    def row(self) -> dict[str, Any]:
        """A flat row: variant, k, seed, run_dir, every ``<split>/<metric>``, the costs."""
        return {"variant": self.variant, "k": self.k, "seed": self.seed, "run_dir": str(self.run_dir),
                **metric_columns(self.metrics), "teachers": self.teachers, "teacher_seconds": self.teacher_seconds,
                "student_seconds": self.student_seconds,
                "total_seconds": self.teacher_seconds + self.student_seconds}


class CPSDStudy:
    """All runs of CPSD for one base recipe, under one root folder; every step reuses what is already there.

    Args:
        base: the student's (and teachers') recipe; its `output_dir` is ignored.
        root: the study folder.
        settings: `CPSDSettings`.
    """

    def __init__(self, base: RunConfig, root: str | Path, settings: CPSDSettings | None = None) -> None:
        self.base = base
        self.root = paths.resolve(root)
        self.settings = settings or CPSDSettings()
        self._table: LabelledImages | None = None
        self._pool: ProcessPoolExecutor | None = None

    def executor(self) -> ProcessPoolExecutor | None:
        """The study's process pool (`settings.workers` > 1), started on first use and kept for every later run."""
        if self.settings.workers > 1 and self._pool is None:
            self._pool = process_pool(self.settings.workers)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> CPSDStudy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def train_table(self) -> LabelledImages:
        """The training split as the runs see it (after `data.max_train_images`)."""
        if self._table is None:
            data = self.base.data
            table = load_split(data.dataset, data.root, data.train_split, **data.options)
            limit = data.max_train_images
            self._table = table if limit is None or limit >= len(table) else table.subset(np.arange(limit))
        return self._table

    # ---------------------------------------------------------------- naming
    @staticmethod
    def family(strategy: str, k: int, seed: int) -> str:
        """Name of a teacher family."""
        return f"{strategy}-k{k}-seed{seed}"

    @staticmethod
    def family_k(strategy: str, k: int) -> int:
        """The single (SD) family always has one part, whatever k the variant is run at."""
        return 1 if strategy == "single" else k

    @staticmethod
    def uses_k(variant: str) -> bool:
        """Whether a variant's teachers depend on k (every one but the baseline and SD)."""
        return any(s != "single" for s in VARIANTS[variant])

    # ---------------------------------------------------------------- steps
    def partition(self, strategy: str, k: int, seed: int) -> Partition:
        """The partition of a family, computed once and saved (the seed drives k-means and random draws)."""
        path = self.root / "partitions" / f"{self.family(strategy, k, seed)}.json"
        if path.exists():
            saved = Partition.load(path)
            if (saved.tau, saved.method, saved.class_names) == (self.settings.tau, self.settings.partition_method,
                                                                list(self.train_table.class_names)):
                return saved
        part = make_partition(self.train_table, strategy, k, seed=seed, tau=self.settings.tau,
                              method=self.settings.partition_method,
                              n_init=self.settings.n_init)
        part.save(path)
        return part

    def teacher_configs(self, strategy: str, k: int, seed: int) -> list[RunConfig]:
        """One run config per part: the base recipe on the label-restricted view of the data."""
        k = self.family_k(strategy, k)
        part = self.partition(strategy, k, seed)
        family = self.family(strategy, k, seed)
        data = self.base.data
        cfgs = []
        for t in range(k):
            cfg = self.base.updated({
                "data.dataset": "label_subset",
                "data.options": {"base": data.dataset, "classes": part.part_classes(t),
                                 "base_options": dict(data.options)},
                "train.seed": seed,
                **({} if self.settings.evaluate_teachers else {"data.eval_splits": []}),
                **self.settings.teacher_overrides,
            })
            cfgs.append(cfg.updated({
                "output_dir": str(run_dir(self.root / "teachers" / family, f"part{t}", cfg)),
                "name": f"teacher {family} part {t}",
                "tags": {"study": STUDY_TAG, "role": "teacher", "family": family, "strategy": strategy, "k": k,
                         "seed": seed, "part": t}}))
        return cfgs

    def teachers(self, strategies: Sequence[str], k: int, seed: int) -> dict[str, tuple[Path, float]]:
        """Train (or reuse) the teachers of every family in `strategies` — all in one batch, so parallel workers
        share them out — and cache each family's merged logits.

        Returns:
            ``strategy → (logits_file, seconds)``: the cached merged logits and the family's total training time.
        """
        cfgs = {s: self.teacher_configs(s, k, seed) for s in strategies}
        runs = [c for family in cfgs.values() for c in family]
        pending = sum(not Run(c.output_dir).is_finished(c) for c in runs)
        try:
            train_runs(runs, keep_last=self.settings.keep_last,
                       executor=self.executor() if pending > 1 else None)
        except BrokenProcessPool:
            self.close()  # a dead worker breaks the pool for good: the next call starts a fresh one
            raise
        out: dict[str, tuple[Path, float]] = {}
        for strategy, family in cfgs.items():
            name = self.family(strategy, self.family_k(strategy, k), seed)
            members = [Path(c.output_dir) for c in family]
            key = hashlib.blake2b("|".join(map(str, members)).encode(), digest_size=6).hexdigest()
            path = self.root / "teachers" / name / f"logits-{key}.npz"
            started = time.perf_counter()
            cache_teacher_logits(self.partition(strategy, self.family_k(strategy, k), seed), members,
                                 self.train_table, path, device=self.base.runtime.device,
                                 threads=self.base.runtime.threads)
            family_seconds = float(sum(Run(m).seconds() for m in members))
            log.info("teachers %s: %.1f s training, logits ready in %.1f s", name, family_seconds,
                     time.perf_counter() - started)
            out[strategy] = (path, family_seconds)
        return out

    def student_config(self, variant: str, teacher_files: dict[str, str], k: int, seed: int) -> RunConfig:
        """The student run: the base recipe with the ``cpsd`` loss over `teacher_files` (the baseline: unchanged)."""
        overrides: dict[str, Any] = {"train.seed": seed}
        if teacher_files:
            s = self.settings
            overrides["loss"] = {"name": "cpsd", "kwargs": {
                "teachers": teacher_files, "alpha": s.alpha, "cls_weight": s.cls_weight,
                "base": self.base.loss.name, "base_kwargs": dict(self.base.loss.kwargs),
                "teacher_digest": logits_digest(teacher_files)}}
            overrides.update(s.student_overrides)
        cfg = self.base.updated(overrides)
        name = f"{variant}-k{k}" if self.uses_k(variant) else variant
        return cfg.updated({"output_dir": str(run_dir(self.root / "students", name, cfg)),
                            "name": f"{variant} k={k} seed={seed}",
                            "tags": {"study": STUDY_TAG, "role": "student", "variant": variant,
                                     "k": k if self.uses_k(variant) else None, "seed": seed}})

    def run(self, variant: str, *, k: int = 5, seed: int = 0) -> VariantResult:
        """Train (or reuse) everything variant `variant` needs at `k` and `seed`, and its student."""
        if variant not in VARIANTS:
            raise ValueError(f"Unknown CPSD variant {variant!r}. Available: {', '.join(VARIANTS)}")
        families = self.teachers(VARIANTS[variant], k, seed)
        files = {strategy: str(path) for strategy, (path, _) in families.items()}
        teacher_seconds = sum(seconds for _, seconds in families.values())
        teachers = sum(self.family_k(strategy, k) for strategy in families)
        cfg = self.student_config(variant, files, k, seed)
        run = train_runs([cfg], keep_last=self.settings.keep_last)[0]
        return VariantResult(variant, k if self.uses_k(variant) else None, seed, run.path, run.metrics,
                             teacher_seconds, run.seconds(), teachers)

    def figure_models(self, *, k: int = 5, seed: int = 0) -> dict[str, str | list[str]]:
        """The models of CPSD's Figure 4 that this study trained (no training here): ``baseline``, the ``CGP`` and
        ``DGP`` teacher families (their part runs, in part order) and the ``CPSD`` student."""
        return figure_models(self.root, k=k, seed=seed)


def figure_models(root: str | Path, *, k: int = 5, seed: int = 0) -> dict[str, str | list[str]]:
    """The Figure 4 models of a CPSD study folder, found by their tags (`mlic.runs.find`; the newest when a
    changed recipe left several): ``baseline``, the ``CGP`` and ``DGP`` teacher families (lists of their part runs)
    and the ``CPSD`` student; those that exist."""
    from mlic.runs import find

    found: dict[str, str | list[str]] = {}
    for name, variant, vk in (("baseline", "baseline", None), ("CPSD", "cpsd", k)):
        runs = find(root, study=STUDY_TAG, role="student", variant=variant, k=vk, seed=seed)
        if runs:
            found[name] = str(runs[-1].path)
    for name, strategy in (("CGP", "cgp"), ("DGP", "dgp")):
        parts = find(root, study=STUDY_TAG, role="teacher", strategy=strategy, k=k, seed=seed)
        newest: dict[int, Run] = {}
        for run in parts:  # oldest first: the newest run of each part wins
            newest[int(run.config.tags["part"])] = run
        if parts and sorted(newest) == list(range(k)):
            found[name] = [str(newest[t].path) for t in range(k)]
    return found


# --------------------------------------------------------------------------------------------------------------------
# Experiments the notebook shows
# --------------------------------------------------------------------------------------------------------------------
def run_ablation(study: CPSDStudy, *, variants: Sequence[str] = ("baseline", "sd", "cgpd", "dgpd", "cpsd"),
                 seeds: Sequence[int] = (0, 1, 2), k: int = 5) -> pd.DataFrame:
    """The paper's Table 3: every variant at `k` for every seed; one row per (variant, seed) (`VariantResult.row`)."""
    return pd.DataFrame([study.run(v, k=k, seed=s).row() for s in seeds for v in variants])


def run_k_sweep(study: CPSDStudy, *, ks: Sequence[int] = (2, 3, 5, 8),
                variants: Sequence[str] = ("rpd", "cgpd", "dgpd", "cpsd"), seeds: Sequence[int] = (0,)
                ) -> pd.DataFrame:
    """The paper's Figure 3: partition-distilled students for every k; one row per (variant, k, seed)."""
    return pd.DataFrame([study.run(v, k=k, seed=s).row() for s in seeds for k in ks for v in variants])


def summarize(frame: pd.DataFrame, *, by: Sequence[str] = ("variant",), metric: str = "mAP",
              splits: Sequence[str] = ("test", "test_shift")) -> pd.DataFrame:
    """Mean, std and count over seeds of `<split>/<metric>` per group, in first-appearance order, plus a
    ``"mean ± std"`` text column per split (the table the notebook records)."""
    return over_seeds(frame, list(by), [f"{s}/{metric}" for s in splits])


def variant_costs(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean teacher, student and total seconds and the number of teachers per variant."""
    cols = ["teachers", "teacher_seconds", "student_seconds", "total_seconds"]
    return frame.groupby("variant", sort=False)[cols].mean().reset_index()


def per_label_gain(frame: pd.DataFrame, variant: str = "cpsd", reference: str = "baseline", *,
                   splits: Sequence[str] = ("test", "test_shift"), train_labels: np.ndarray | None = None,
                   groups: Sequence[Sequence[int]] | None = None) -> pd.DataFrame:
    """Per-label AP gain of `variant` over `reference` (mean over the seeds both have), per split, next to each
    label's co-occurrence strength (`mlic.models.label_graph.cooccurrence_strength` of `train_labels`).

    Args:
        frame: rows of `run_ablation` (needs ``variant``, ``seed``, ``run_dir``).
        variant, reference: the two variants compared.
        splits: evaluation splits whose saved predictions are compared.
        train_labels: the training label matrix (for the strength axis).
        groups: planted label groups, to tag each label with its group.

    Returns:
        One row per (split, label): ``label``, ``split``, ``ap_<reference>``, ``ap_<variant>``, ``gain`` (AP points),
        ``strength``, ``group``.
    """
    seeds = sorted(set(frame.loc[frame.variant == variant, "seed"]) & set(frame.loc[frame.variant == reference,
                                                                                     "seed"]))
    if not seeds:
        raise ValueError(f"no seed has both {variant!r} and {reference!r} runs")
    rows = []
    for split in splits:
        ap: dict[str, list[np.ndarray]] = {variant: [], reference: []}
        names: list[str] = []
        for name in (variant, reference):
            for seed in seeds:
                path = frame.loc[(frame.variant == name) & (frame.seed == seed), "run_dir"].iloc[0]
                pred = Run(path).predictions(split)
                ap[name].append(100 * metrics.average_precision(pred["scores"], pred["targets"],
                                                                mask=pred.get("mask")))
                names = [str(n) for n in pred["class_names"]]
        strength = (cooccurrence_strength(*cooccurrence(train_labels)) if train_labels is not None
                    else np.full(len(names), np.nan))
        group = (assignment_from_groups(list(groups), len(names)) if groups is not None
                 else np.full(len(names), -1))
        ours, theirs = np.mean(ap[variant], axis=0), np.mean(ap[reference], axis=0)
        for c, label in enumerate(names):
            rows.append({"label": label, "split": split, f"ap_{reference}": theirs[c], f"ap_{variant}": ours[c],
                         "gain": ours[c] - theirs[c], "strength": strength[c], "group": int(group[c])})
    return pd.DataFrame(rows)


def method_metrics(summary: pd.DataFrame, *, metric: str = "mAP", splits: Sequence[str] = ("test", "test_shift")
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """Every variant's numbers of a `summarize` table for `mlic.report.record(methods=...)`:
    ``{variant[_k<k>]: {split: {metric: mean, metric_std: std}}}``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for _, row in summary.iterrows():
        name = str(row["variant"]) if "k" not in row or pd.isna(row["k"]) else f"{row['variant']}_k{int(row['k'])}"
        out[name] = {split: {metric: float(row[f"{split}/{metric}_mean"]),
                             f"{metric}_std": float(row[f"{split}/{metric}_std"])} for split in splits}
    return out


def variant_means(frame: pd.DataFrame, variant: str, *, metric: str = "mAP",
                  splits: Sequence[str] = ("test", "test_shift")) -> dict[str, float] | None:
    """Mean over seeds of `variant`'s ``<split>/<metric>`` per split, or None if `frame` has no such rows (the
    k = 0 and k = 1 anchors of the k-sweep figure)."""
    rows = frame[frame["variant"] == variant]
    return None if rows.empty else {split: float(rows[f"{split}/{metric}"].mean()) for split in splits}
