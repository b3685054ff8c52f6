"""CPSD — Complementary Parallel Self-Distillation (seed 001): partitions → teachers → merged logits → student.

Paper: J. Xu et al., "Boosting Multi-Label Image Classification with Complementary Parallel Self-Distillation",
IJCAI 2022. Reference code: ``Robbie-Xu/CPSD`` (`partition/`, `train_B_part.py`, `dis_B_cpsd.py`).

The pipeline, each step reusing `mlic.train.fit` unchanged:

1. **Partitions** (`mlic.graph.label_partition`): the training labels' co-occurrence (CGP) or dis-occurrence (DGP)
   affinity is split into k parts by spectral clustering; random partitions and the single full-label part (SD)
   are the baselines. Saved as JSON under ``<root>/partitions/``.
2. **Teachers**: one run per part, on *all* training images with the targets restricted to the part's labels
   (images with none of them are all-negative), with the same architecture and recipe as the student. The
   restriction is a dataset view: the registered reader ``label_subset`` wraps any reader and keeps only the given
   columns, so a teacher is an ordinary `RunConfig` (``data.dataset: label_subset``, ``data.options: {base, classes,
   base_options}``) and its run folder is an ordinary run folder. Teachers run one after another or in parallel
   spawned processes (`CPSDSettings.workers`; the study keeps one pool for all its runs); a teacher whose folder has
   ``final.json`` (and the same config) is skipped, and an interrupted one resumes from its ``last.pt``.
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

Run folders under ``root``: ``partitions/<family>.json``, ``teachers/<family>/part<t>/`` and
``teachers/<family>/train_logits.npz`` with ``<family> = <strategy>-k<k>-seed<seed>``, and
``students/<variant>[-k<k>]-seed<seed>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlic import metrics
from mlic.config import RunConfig
from mlic.data.sources import DATASETS, load_split
from mlic.data.table import LabelledImages
from mlic.experiments import over_seeds
from mlic.graph import (
    assignment_from_groups,
    cooccurrence,
    cooccurrence_strength,
    label_partition,
    partition_groups,
    same_part_fraction,
)
from mlic.io import atomic_save_npz, atomic_write_json, read_jsonl

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

TIMING_FILE = "cpsd_timing.json"
LOGITS_FILE = "train_logits.npz"
_VOLATILE_KEYS = (("train", "resume"), ("train", "progress"), ("train", "device"))


# --------------------------------------------------------------------------------------------------------------------
# The teachers' view of the data: the same images, the part's labels only
# --------------------------------------------------------------------------------------------------------------------
def restrict_labels(table: LabelledImages, classes: Sequence[str]) -> LabelledImages:
    """The same images with only the columns `classes` (in that order): a teacher's sub-task.

    Every image is kept — one without any of the classes becomes all-negative, as in the reference. Boxes of other
    classes are dropped and the rest re-indexed; the observed-label mask follows the columns; dataset-level extras
    are kept under ``extras["parent"]`` (their label indices refer to the full table) and the global column of each
    kept class is in ``extras["label_subset"]``.

    Raises:
        ValueError: if a class is unknown or repeated.
    """
    column = {name: i for i, name in enumerate(table.class_names)}
    unknown = [c for c in classes if c not in column]
    if unknown or len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"label_subset: classes must be distinct names of {table.source or 'the table'}; "
                         f"unknown {unknown}, got {list(classes)}")
    cols = np.asarray([column[c] for c in classes], dtype=np.int64)
    new_index = np.full(table.num_classes, -1, dtype=np.int64)
    new_index[cols] = np.arange(len(cols))
    boxes = None
    if table.boxes is not None:
        boxes = []
        for b in table.boxes:
            b = np.asarray(b, dtype=np.float32).reshape(-1, 5)
            kept = b[new_index[b[:, 0].astype(np.int64)] >= 0] if len(b) else b
            if len(kept):
                kept = kept.copy()
                kept[:, 0] = new_index[kept[:, 0].astype(np.int64)]
            boxes.append(kept)
    n = len(table)
    per_image = {k: v for k, v in table.extras.items() if isinstance(v, (np.ndarray, list, tuple)) and len(v) == n}
    parent = {k: v for k, v in table.extras.items() if k not in per_image}
    extras = {**per_image, "parent": parent, "label_subset": {"classes": list(classes), "columns": cols.tolist()}}
    return LabelledImages(paths=list(table.paths), labels=table.labels[:, cols], class_names=list(classes),
                          image_ids=list(table.image_ids), boxes=boxes,
                          observed=None if table.observed is None else table.observed[:, cols],
                          extras=extras, source=f"{table.source} [labels: {len(cols)} of {table.num_classes}]")


@DATASETS.register("label_subset")
def label_subset_split(root: Path, split: str, *, base: str, classes: Sequence[str],
                       base_options: dict[str, Any] | None = None) -> LabelledImages:
    """Reader wrapper: split `split` of dataset `base` under `root`, restricted to the columns `classes`.

    Config form (a CPSD teacher): ``data: {dataset: label_subset, root: ..., options: {base: scenes, classes: [...],
    base_options: {...}}}``. Registered when `mlic.cpsd` is imported.
    """
    return restrict_labels(load_split(base, root, split, **(base_options or {})), list(classes))


# --------------------------------------------------------------------------------------------------------------------
# Partitions
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Partition:
    """A label partition: which strategy, k and seed made it, and the part of every class."""

    strategy: str
    k: int
    seed: int
    tau: float
    class_names: list[str]
    assign: list[int]

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
                   n_init: int = 20) -> Partition:
    """Partition the classes of a training table with a strategy of `mlic.graph.STRATEGIES`."""
    assign = label_partition(table.labels, strategy, k, tau=tau, seed=seed, n_init=n_init)
    return Partition(strategy, k, seed, tau, list(table.class_names), assign.tolist())


def partition_sweep(labels: np.ndarray, ks: Sequence[int], strategies: Sequence[str] = ("cgp", "dgp", "random"), *,
                    tau: float = 3.0, seed: int = 0, n_init: int = 20,
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
            assign = label_partition(labels, strategy, k, tau=tau, seed=seed, n_init=n_init)
            partitions[strategy][k] = assign
            row: dict[str, Any] = {"strategy": strategy, "k": k,
                                   "sizes": "-".join(map(str, np.bincount(assign, minlength=k)))}
            if truth is not None:
                known = truth >= 0
                row["ari"] = float(adjusted_rand_score(truth[known], assign[known]))
                row["same_group"] = same_part_fraction(assign, list(groups))
            rows.append(row)
    return partitions, pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Running runs: skip finished ones, resume interrupted ones, optionally in parallel processes
# --------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use `n` intra-op threads inside the block (None: leave as is). One thread per process is much faster for
    head-only runs on a small shared CPU, where two threads spin against other work."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = json.loads(json.dumps(cfg))
    for section, key in _VOLATILE_KEYS:
        cfg.get(section, {}).pop(key, None)
    return cfg


def run_is_done(cfg: RunConfig) -> bool:
    """True if `cfg.output_dir` holds a finished run (``final.json``) of the same config.

    A finished run of a *different* config (say, other epochs) is stale: it is removed, with a warning, so that the
    run is trained again rather than silently reused. Resume, progress and device settings do not count.
    """
    run_dir = Path(cfg.output_dir)
    if not (run_dir / "final.json").exists():
        return False
    saved = run_dir / "config.yaml"
    if saved.exists() and _comparable(RunConfig.from_yaml(saved).to_dict()) == _comparable(cfg.to_dict()):
        return True
    log.warning("%s holds a finished run of another config: removing it to train again", run_dir)
    shutil.rmtree(run_dir)
    return False


def _fit_timed(cfg_dict: dict[str, Any], threads: int | None) -> float:
    """Train one run (in this process or a worker) and record its wall time next to it; returns the seconds."""
    from mlic.train import fit

    cfg = RunConfig.from_dict(cfg_dict)
    started = time.perf_counter()
    with torch_threads(threads):
        fit(cfg)
    seconds = time.perf_counter() - started
    atomic_write_json(Path(cfg.output_dir) / TIMING_FILE, {"seconds": seconds})
    return seconds


def run_seconds(run_dir: str | Path) -> float:
    """Wall time of a finished run: recorded by `train_runs`, else the sum of its epochs' times."""
    run_dir = Path(run_dir)
    timing = run_dir / TIMING_FILE
    if timing.exists():
        return float(json.loads(timing.read_text())["seconds"])
    history = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    return float(sum(row.get("epoch_seconds", 0.0) for row in history))


def train_runs(cfgs: Sequence[RunConfig], *, workers: int = 1, threads: int | None = None,
               keep_last: bool = True, executor: Executor | None = None) -> dict[str, float]:
    """Train every run of `cfgs` that is not already finished; resume the interrupted ones.

    Args:
        cfgs: run configs (distinct `output_dir`s). `train.resume` is switched on, so a run killed half-way
            continues from its ``last.pt``.
        workers: 1 trains one after another in this process; more train in that many spawned processes
            (`ProcessPoolExecutor`). In frozen-backbone mode the feature cache is filled first, in this process, so
            that workers never extract the same features at once.
        threads: torch intra-op threads per run (None: torch's default).
        keep_last: keep the finished runs' ``checkpoints/last.pt`` (False deletes them; ``best.pt`` stays).
        executor: a process pool to reuse (`CPSDStudy` keeps one for all its runs, so that its workers import
            torch once); None creates one for this call when `workers` > 1.

    Returns:
        ``output_dir → wall seconds`` of each run, recorded or read back for runs that were already finished.
    """
    cfgs = [c.updated({"train.resume": True}) for c in cfgs]
    pending = [c for c in cfgs if not run_is_done(c)]
    if len(pending) < len(cfgs):
        log.info("%d of %d runs already finished: reused", len(cfgs) - len(pending), len(cfgs))
    if workers > 1 and len(pending) > 1:
        if pending[0].model.freeze_backbone:
            _warm_feature_cache(pending[0], threads)
        with contextlib.ExitStack() as stack:
            pool = executor or stack.enter_context(process_pool(min(workers, len(pending))))
            list(pool.map(_fit_timed, [c.to_dict() for c in pending], [threads] * len(pending)))
    else:
        for cfg in pending:
            _fit_timed(cfg.to_dict(), threads)
    if not keep_last:
        for cfg in cfgs:
            (Path(cfg.output_dir) / "checkpoints" / "last.pt").unlink(missing_ok=True)
    return {c.output_dir: run_seconds(c.output_dir) for c in cfgs}


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` *spawned* processes: a forked child of a process that already ran torch's OpenMP
    thread pool can deadlock, and a notebook kernel has."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


_WARMED: set[str] = set()


def _warm_feature_cache(cfg: RunConfig, threads: int | None) -> None:
    """Compute (or find) every split's cached backbone features for `cfg`, once per process and setting."""
    from mlic.train import Trainer

    data, model = cfg.data, cfg.model
    base = data.options.get("base", data.dataset) if data.dataset == "label_subset" else data.dataset
    key = json.dumps([model.backbone, model.pretrained, model.backbone_kwargs, base, data.root, data.image_size,
                      data.normalize, data.train_split, data.val_split, data.eval_splits, data.max_train_images,
                      None if model.pretrained else cfg.train.seed, os.environ.get("MLIC_CACHE")], sort_keys=True,
                     default=str)
    if key in _WARMED:
        return
    with torch_threads(threads):
        Trainer(cfg)  # building the batches computes (or finds) every split's cached features
    _WARMED.add(key)


# --------------------------------------------------------------------------------------------------------------------
# Teacher logits: predict in eval mode, merge to global label order, cache
# --------------------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def predict_logits(checkpoint: str | Path, table: LabelledImages, *, device: str = "cpu",
                   batch_size: int | None = None) -> np.ndarray:
    """Logits ``[N, C_run]`` of a run's saved weights on every image of `table`, in eval mode, evaluation transform.

    In frozen-backbone mode the backbone features come from the feature cache the run trained on (same key:
    backbone weights, preprocessing, image list), and only the head runs.
    """
    from mlic.data.dataset import ImageDataset, build_transforms
    from mlic.evaluate import load_run_model
    from mlic.models import backbone_data_config
    from mlic.train.engine import resolve_device

    dev = resolve_device(device)
    model, cfg, _ = load_run_model(checkpoint, device=dev)
    model.eval()
    data = cfg.data
    dcfg = backbone_data_config(model.backbone)
    mean, std = list(dcfg["mean"]), list(dcfg["std"])
    batch_size = batch_size or data.eval_batch_size or data.batch_size
    images = ImageDataset(table, build_transforms(data.image_size, train=False, mean=mean, std=std,
                                                  normalize=data.normalize), bad_images="raise")
    out = np.zeros((len(table), model.num_classes), dtype=np.float32)
    if cfg.model.freeze_backbone:
        from mlic.data.features import cached_features

        settings = {"image_size": data.image_size, "normalize": data.normalize, "mean": mean, "std": std}
        feats = cached_features(model, images, settings=settings, device=dev, batch_size=batch_size,
                                num_workers=data.num_workers, progress=False)
        for start in range(0, len(table), batch_size):
            chunk = torch.from_numpy(np.asarray(feats[start:start + batch_size], dtype=np.float32)).to(dev)
            out[start:start + len(chunk)] = model.forward_head(chunk).float().cpu().numpy()
        return out
    from torch.utils.data import DataLoader

    from mlic.data.dataset import collate_skipping

    loader = DataLoader(images, batch_size=batch_size, num_workers=data.num_workers, collate_fn=collate_skipping)
    for batch in loader:
        out[batch["index"].numpy()] = model(batch["image"].to(dev)).float().cpu().numpy()
    return out


def merge_part_logits(part_logits: Sequence[np.ndarray], groups: Sequence[Sequence[int]],
                      num_classes: int) -> np.ndarray:
    """Scatter each part's logits ``[N, |part|]`` to its global label columns: ρ of seed 001, Eq. 5.

    Raises:
        ValueError: if the parts do not cover every label exactly once or a part's width is wrong.
    """
    covered = np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]) if groups else np.zeros(0, int)
    if sorted(covered.tolist()) != list(range(num_classes)):
        raise ValueError(f"parts must cover the {num_classes} labels exactly once, got {sorted(covered.tolist())}")
    n = len(part_logits[0])
    merged = np.full((n, num_classes), np.nan, dtype=np.float32)
    for logits, group in zip(part_logits, groups, strict=True):
        logits = np.asarray(logits)
        if logits.shape != (n, len(group)):
            raise ValueError(f"part logits of shape {logits.shape} for a part of {len(group)} labels and {n} images")
        merged[:, np.asarray(group, dtype=np.int64)] = logits
    return merged


def _teachers_digest(run_dirs: Sequence[Path], assign: Sequence[int]) -> str:
    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps(list(assign)).encode())
    for run_dir in run_dirs:
        stat = (Path(run_dir) / "checkpoints" / "best.pt").stat()
        digest.update(f"{run_dir}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _logits_digest(files: dict[str, str]) -> str:
    """One digest of several teacher-logits files (their recorded teacher digests)."""
    digest = hashlib.blake2b(digest_size=12)
    for name, path in sorted(files.items()):
        with np.load(path, allow_pickle=False) as cached:
            digest.update(f"{name}:{cached['digest']}".encode())
    return digest.hexdigest()


def cache_teacher_logits(partition: Partition, run_dirs: Sequence[Path], table: LabelledImages, out_file: Path, *,
                         device: str = "cpu", threads: int | None = None) -> Path:
    """Merged logits of a teacher family on `table`, written to `out_file` (reused while the teachers are unchanged).

    The file holds ``logits`` ``[N, C]``, ``image_ids``, ``class_names``, ``assign`` and a ``digest`` of the
    teachers' best checkpoints; the student's loss reads it (`mlic.losses.distill`).
    """
    digest = _teachers_digest(run_dirs, partition.assign)
    if out_file.exists():
        with np.load(out_file, allow_pickle=False) as cached:
            if "digest" in cached.files and str(cached["digest"]) == digest and len(cached["image_ids"]) == len(table):
                return out_file
    if list(table.class_names) != partition.class_names:
        raise ValueError("the table's classes differ from the partition's")
    with torch_threads(threads):
        parts = [predict_logits(Path(d) / "checkpoints" / "best.pt", table, device=device) for d in run_dirs]
    merged = merge_part_logits(parts, partition.groups, len(partition.class_names))
    atomic_save_npz(out_file, logits=merged, image_ids=np.asarray([str(i) for i in table.image_ids]),
                    class_names=np.asarray(partition.class_names), assign=np.asarray(partition.assign),
                    digest=np.asarray(digest))
    return out_file


# --------------------------------------------------------------------------------------------------------------------
# A study: the runs of one base recipe under one root folder
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class CPSDSettings:
    """Settings of the CPSD pipeline (literals, so a notebook or YAML can hold them).

    Attributes:
        tau: affinity smoothing exponent (paper 3; reference code 2, its square root).
        n_init: k-means restarts of the spectral partition (reference 20).
        alpha: CGP/DGP balance of the student loss (reference 0.5).
        cls_weight: weight of the student's ASL term (reference 0.5; paper Eq. 7: 1, with both KD weights 0.5 —
            the same ratios, doubled).
        teacher_overrides: dotted `RunConfig` overrides for teachers only (e.g. the paper's ``train.epochs: 20``).
        student_overrides: dotted overrides for distilled students only (e.g. the code's ``optim.lr: 1e-5``).
        workers: parallel teacher processes (1: one after another, in this process).
        threads: torch threads per training process (None: torch's default).
        evaluate_teachers: also evaluate every teacher on the base recipe's `eval_splits` (its validation split is
            always used, to pick its best epoch); off by default: only the merged logits matter.
        keep_last: keep each finished run's ``checkpoints/last.pt`` (only needed to resume an unfinished run; a
            frozen-backbone checkpoint still holds the whole backbone, so a study of a hundred runs saves gigabytes
            by dropping them). ``best.pt`` is always kept: the teachers' logits come from it.
    """

    tau: float = 3.0
    n_init: int = 20
    alpha: float = 0.5
    cls_weight: float = 0.5
    teacher_overrides: dict[str, Any] = field(default_factory=dict)
    student_overrides: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    threads: int | None = None
    evaluate_teachers: bool = False
    keep_last: bool = False


@dataclass
class VariantResult:
    """One trained student (or baseline): its metrics and what it cost.

    Costs are sums of each run's own wall time (`run_seconds`): what the variant costs to train, whether or not its
    runs overlapped in parallel workers or were reused from an earlier call.
    """

    variant: str
    k: int | None
    seed: int
    run_dir: Path
    metrics: dict[str, dict[str, float]]
    teacher_seconds: float
    student_seconds: float
    teachers: int

    def row(self, splits: Sequence[str], keys: Sequence[str] = ("mAP", "CF1", "OF1")) -> dict[str, Any]:
        """A flat row: variant, k, seed, `<split>_<metric>` for each split and key, the costs."""
        row: dict[str, Any] = {"variant": self.variant, "k": self.k, "seed": self.seed}
        for split in splits:
            for key in keys:
                row[f"{split}_{key}"] = self.metrics[split][key]
        row.update(teachers=self.teachers, teacher_seconds=self.teacher_seconds,
                   student_seconds=self.student_seconds, total_seconds=self.teacher_seconds + self.student_seconds,
                   run_dir=str(self.run_dir))
        return row


class CPSDStudy:
    """All runs of CPSD for one base recipe, under one root folder; every step reuses what is already there.

    Args:
        base: the student's (and teachers') recipe; its `output_dir` is ignored.
        root: the study folder.
        settings: `CPSDSettings`.
    """

    def __init__(self, base: RunConfig, root: str | Path, settings: CPSDSettings | None = None) -> None:
        self.base = base
        self.root = Path(root)
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
        """Folder name of a teacher family."""
        return f"{strategy}-k{k}-seed{seed}"

    @staticmethod
    def family_k(strategy: str, k: int) -> int:
        """The single (SD) family always has one part, whatever k the variant is run at."""
        return 1 if strategy == "single" else k

    def student_dir(self, variant: str, k: int, seed: int) -> Path:
        uses_k = any(s != "single" for s in VARIANTS[variant])
        return self.root / "students" / (f"{variant}-k{k}-seed{seed}" if uses_k else f"{variant}-seed{seed}")

    # ---------------------------------------------------------------- steps
    def prepare(self) -> None:
        """Fill the frozen-backbone feature cache once, with torch's default threads (a no-op end to end or when
        the cache exists), so that the many short runs that follow only read it."""
        if self.base.model.freeze_backbone:
            _warm_feature_cache(self.base.updated({"output_dir": str(self.root / "prepare")}), None)

    def partition(self, strategy: str, k: int, seed: int) -> Partition:
        """The partition of a family, computed once and saved (the seed drives k-means and random draws)."""
        path = self.root / "partitions" / f"{self.family(strategy, k, seed)}.json"
        if path.exists():
            saved = Partition.load(path)
            if saved.tau == self.settings.tau and saved.class_names == list(self.train_table.class_names):
                return saved
        part = make_partition(self.train_table, strategy, k, seed=seed, tau=self.settings.tau,
                              n_init=self.settings.n_init)
        part.save(path)
        return part

    def teacher_configs(self, strategy: str, k: int, seed: int) -> list[RunConfig]:
        """One run config per part: the base recipe on the label-restricted view of the data."""
        k = self.family_k(strategy, k)
        part = self.partition(strategy, k, seed)
        data = self.base.data
        cfgs = []
        for t in range(k):
            overrides = {
                "data.dataset": "label_subset",
                "data.options": {"base": data.dataset, "classes": part.part_classes(t),
                                 "base_options": dict(data.options)},
                "train.seed": seed,
                "output_dir": str(self.root / "teachers" / self.family(strategy, k, seed) / f"part{t}"),
                "name": f"teacher {self.family(strategy, k, seed)} part {t}",
                **({} if self.settings.evaluate_teachers else {"data.eval_splits": []}),
                **self.settings.teacher_overrides,
            }
            cfgs.append(self.base.updated(overrides))
        return cfgs

    def teachers(self, strategies: Sequence[str], k: int, seed: int) -> dict[str, tuple[Path, float]]:
        """Train (or reuse) the teachers of every family in `strategies` — all in one batch, so parallel workers
        share them out — and cache each family's merged logits.

        Returns:
            ``strategy → (logits_file, seconds)``: the cached merged logits and the family's total training time.
        """
        cfgs = {s: self.teacher_configs(s, k, seed) for s in strategies}
        runs = [c for family in cfgs.values() for c in family]
        parallel = self.settings.workers > 1 and sum(not run_is_done(c) for c in runs) > 1
        try:
            seconds = train_runs(runs, workers=self.settings.workers, threads=self.settings.threads,
                                 keep_last=self.settings.keep_last, executor=self.executor() if parallel else None)
        except BrokenProcessPool:
            self.close()  # a dead worker breaks the pool for good: the next call starts a fresh one
            raise
        out: dict[str, tuple[Path, float]] = {}
        for strategy, family in cfgs.items():
            name = self.family(strategy, self.family_k(strategy, k), seed)
            path = self.root / "teachers" / name / LOGITS_FILE
            started = time.perf_counter()
            cache_teacher_logits(self.partition(strategy, self.family_k(strategy, k), seed),
                                 [Path(c.output_dir) for c in family], self.train_table, path,
                                 device=self.base.train.device, threads=self.settings.threads)
            family_seconds = float(sum(seconds[c.output_dir] for c in family))
            log.info("teachers %s: %.1f s training, logits ready in %.1f s", name, family_seconds,
                     time.perf_counter() - started)
            out[strategy] = (path, family_seconds)
        return out

    def student_config(self, variant: str, teacher_files: dict[str, str], k: int, seed: int) -> RunConfig:
        """The student run: the base recipe with the ``cpsd`` loss over `teacher_files` (the baseline: unchanged)."""
        overrides: dict[str, Any] = {"train.seed": seed, "output_dir": str(self.student_dir(variant, k, seed)),
                                     "name": f"{variant} k={k} seed={seed}"}
        if teacher_files:
            s = self.settings
            overrides["loss"] = {"name": "cpsd", "kwargs": {
                "teachers": teacher_files, "alpha": s.alpha, "cls_weight": s.cls_weight,
                "base": self.base.loss.name, "base_kwargs": dict(self.base.loss.kwargs),
                "teacher_digest": _logits_digest(teacher_files)}}
            overrides.update(s.student_overrides)
        return self.base.updated(overrides)

    def run(self, variant: str, *, k: int = 5, seed: int = 0) -> VariantResult:
        """Train (or reuse) everything variant `variant` needs at `k` and `seed`, and its student."""
        if variant not in VARIANTS:
            raise ValueError(f"Unknown CPSD variant {variant!r}. Available: {', '.join(VARIANTS)}")
        families = self.teachers(VARIANTS[variant], k, seed)
        files = {strategy: str(path) for strategy, (path, _) in families.items()}
        teacher_seconds = sum(seconds for _, seconds in families.values())
        teachers = sum(self.family_k(strategy, k) for strategy in families)
        cfg = self.student_config(variant, files, k, seed)
        seconds = train_runs([cfg], threads=self.settings.threads, keep_last=self.settings.keep_last)[cfg.output_dir]
        final = json.loads((Path(cfg.output_dir) / "final.json").read_text())
        uses_k = any(s != "single" for s in VARIANTS[variant])
        return VariantResult(variant, k if uses_k else None, seed, Path(cfg.output_dir), final["metrics"],
                             teacher_seconds, seconds, teachers)


# --------------------------------------------------------------------------------------------------------------------
# Experiments the notebook shows
# --------------------------------------------------------------------------------------------------------------------
def run_ablation(study: CPSDStudy, *, variants: Sequence[str] = ("baseline", "sd", "cgpd", "dgpd", "cpsd"),
                 seeds: Sequence[int] = (0, 1, 2), k: int = 5,
                 splits: Sequence[str] | None = None) -> pd.DataFrame:
    """The paper's Table 3: every variant at `k` for every seed; one row per (variant, seed) (`VariantResult.row`)."""
    splits = list(splits or study.base.data.eval_splits)
    rows = [study.run(v, k=k, seed=s).row(splits) for s in seeds for v in variants]
    return pd.DataFrame(rows)


def run_k_sweep(study: CPSDStudy, *, ks: Sequence[int] = (2, 3, 5, 8),
                variants: Sequence[str] = ("rpd", "cgpd", "dgpd", "cpsd"), seeds: Sequence[int] = (0,),
                splits: Sequence[str] | None = None) -> pd.DataFrame:
    """The paper's Figure 3: partition-distilled students for every k; one row per (variant, k, seed)."""
    splits = list(splits or study.base.data.eval_splits)
    rows = [study.run(v, k=k, seed=s).row(splits) for s in seeds for k in ks for v in variants]
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame, *, by: Sequence[str] = ("variant",), metric: str = "mAP",
              splits: Sequence[str] = ("test", "test_shift")) -> pd.DataFrame:
    """Mean, std and count over seeds of `<split>_<metric>` per group, in first-appearance order, plus a
    ``"mean ± std"`` text column per split (the table the notebook records)."""
    return over_seeds(frame, list(by), [f"{s}_{metric}" for s in splits])


def variant_costs(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean teacher, student and total seconds and the number of teachers per variant."""
    cols = ["teachers", "teacher_seconds", "student_seconds", "total_seconds"]
    return frame.groupby("variant", sort=False)[cols].mean().reset_index()


def per_label_gain(frame: pd.DataFrame, variant: str = "cpsd", reference: str = "baseline", *,
                   splits: Sequence[str] = ("test", "test_shift"), train_labels: np.ndarray | None = None,
                   groups: Sequence[Sequence[int]] | None = None) -> pd.DataFrame:
    """Per-label AP gain of `variant` over `reference` (mean over the seeds both have), per split, next to each
    label's co-occurrence strength (`mlic.graph.cooccurrence_strength` of `train_labels`).

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
    from mlic.evaluate import load_predictions

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
                run_dir = frame.loc[(frame.variant == name) & (frame.seed == seed), "run_dir"].iloc[0]
                pred = load_predictions(run_dir, split)
                ap[name].append(100 * metrics.average_precision(pred["scores"], pred["targets"]))
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


def summary_metrics(summary: pd.DataFrame, *, metric: str = "mAP",
                    splits: Sequence[str] = ("test", "test_shift")) -> dict[str, dict[str, float]]:
    """Headline numbers of a `summarize` table for `mlic.report.record`: variant → ``<split>_<metric>`` mean and
    ``..._std``."""
    out: dict[str, dict[str, float]] = {}
    for _, row in summary.iterrows():
        name = str(row["variant"]) if "k" not in row or pd.isna(row["k"]) else f"{row['variant']}_k{int(row['k'])}"
        out[name] = {}
        for split in splits:
            out[name][f"{split}_{metric}"] = float(row[f"{split}_{metric}_mean"])
            out[name][f"{split}_{metric}_std"] = float(row[f"{split}_{metric}_std"])
    return out


def variant_means(frame: pd.DataFrame, variant: str, *, metric: str = "mAP",
                  splits: Sequence[str] = ("test", "test_shift")) -> dict[str, float] | None:
    """Mean over seeds of `variant`'s ``<split>_<metric>`` per split, or None if `frame` has no such rows (the
    k = 0 and k = 1 anchors of the k-sweep figure)."""
    rows = frame[frame["variant"] == variant]
    return None if rows.empty else {split: float(rows[f"{split}_{metric}"].mean()) for split in splits}


def partition_metrics(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Headline numbers of a `partition_sweep` table: strategy → ``ARI_k<k>`` and ``same_group_k<k>`` (empty when
    the data set has no planted groups)."""
    if "ari" not in table:
        return {}
    out: dict[str, dict[str, float]] = {}
    for _, row in table.iterrows():
        out.setdefault(str(row["strategy"]), {}).update(
            {f"ARI_k{int(row['k'])}": float(row["ari"]), f"same_group_k{int(row['k'])}": float(row["same_group"])})
    return out


# --------------------------------------------------------------------------------------------------------------------
# Command line: `mlic cpsd`
# --------------------------------------------------------------------------------------------------------------------
_BASE_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--dataset": ("data.dataset", str, "dataset reader (scenes, coco, voc, nuswide, csv)"),
    "--data-root": ("data.root", str, "dataset folder"),
    "--image-size": ("data.image_size", int, "squish-resize side"),
    "--batch-size": ("data.batch_size", int, "images per step"),
    "--backbone": ("model.backbone", str, "timm backbone"),
    "--head": ("model.head", str, "classification head"),
    "--lr": ("optim.lr", float, "peak learning rate (teachers and student)"),
    "--epochs": ("train.epochs", int, "epochs of every run (see --teacher-set for the teachers alone)"),
    "--device": ("train.device", str, "auto, cpu, cuda"),
}


def add_cpsd_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``cpsd`` command to an argparse sub-parser collection (`mlic cpsd`); returns its parser."""
    p = subparsers.add_parser(
        "cpsd", help="CPSD: label partitions, part teachers, distilled student",
        description="Train the teachers of each partition (skipping finished ones, resuming interrupted ones), "
                    "cache their merged logits, and train the distilled student(s). Run folders go under --root.")
    p.add_argument("--config", help="YAML RunConfig of the base recipe (student and teachers)")
    for flag, (_, kind, text) in _BASE_FLAGS.items():
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--no-pretrained", action="store_true", help="random backbone initialisation")
    p.add_argument("--freeze-backbone", action="store_true", help="cached backbone features, head-only runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="base RunConfig override")
    p.add_argument("--root", default="runs/cpsd", help="study folder (default: runs/cpsd)")
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), default=None,
                   help="student variant(s) to train (default: cpsd; repeatable)")
    p.add_argument("--k", type=int, default=5, help="number of parts (paper: 5)")
    p.add_argument("--seed", type=int, action="append", default=None, help="seed(s) (default: 0; repeatable)")
    p.add_argument("--tau", type=float, default=3.0, help="affinity exponent (paper 3, reference code 2)")
    p.add_argument("--alpha", type=float, default=0.5, help="CGP/DGP balance of the student loss (reference 0.5)")
    p.add_argument("--cls-weight", type=float, default=0.5, help="weight of the student's ASL (reference 0.5)")
    p.add_argument("--teacher-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for teachers only, e.g. train.epochs=20 (the paper's)")
    p.add_argument("--student-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for distilled students only, e.g. optim.lr=1e-5 (the reference code's)")
    p.add_argument("--workers", type=int, default=1, help="parallel teacher processes (default 1: sequential)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per training process")
    p.add_argument("--keep-last", action="store_true",
                   help="keep finished runs' checkpoints/last.pt (dropped by default; best.pt is always kept)")
    p.add_argument("--evaluate-teachers", action="store_true", help="also evaluate teachers on the eval splits")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main_cli)
    return p


def cli_config(args: argparse.Namespace) -> tuple[RunConfig, CPSDSettings]:
    """The base recipe and the pipeline settings of parsed `mlic cpsd` arguments."""
    from mlic.cli import parse_set, run_config_from_args

    cfg = run_config_from_args(args, _BASE_FLAGS)
    settings = CPSDSettings(tau=args.tau, alpha=args.alpha, cls_weight=args.cls_weight,
                            teacher_overrides=parse_set(args.teacher_set),
                            student_overrides=parse_set(args.student_set), workers=args.workers,
                            threads=args.threads, keep_last=args.keep_last, evaluate_teachers=args.evaluate_teachers)
    return cfg, settings


def main_cli(args: argparse.Namespace) -> int:
    """`mlic cpsd`: run the requested variants and print their metrics as JSON."""
    base, settings = cli_config(args)
    with CPSDStudy(base, args.root, settings) as study:
        results = [study.run(variant, k=args.k, seed=seed) for seed in (args.seed or [0])
                   for variant in (args.variant or ["cpsd"])]
    print(json.dumps([{"variant": r.variant, "k": r.k, "seed": r.seed, "run_dir": str(r.run_dir),
                       "teachers": r.teachers, "teacher_seconds": round(r.teacher_seconds, 2),
                       "student_seconds": round(r.student_seconds, 2), "metrics": r.metrics} for r in results],
                     indent=2))
    return 0
