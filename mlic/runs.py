"""Run folders and grids of runs: the one module that knows the run-folder layout, and the one result schema.

A run folder (`Run`) holds::

    config.yaml              the RunConfig it was trained with
    metrics.jsonl            one row per epoch
    final.json               metrics per split of the reported weights, best epoch, EMA or raw, skipped images
    predictions/<split>.npz  scores, targets, image ids, class names (and heads' recorded outputs, `aux_<key>`)
    checkpoints/best.pt      the reported weights; checkpoints/last.pt: everything needed to resume
    thresholds.json          per-class thresholds, when the run tuned them
    .lock                    while a process trains into the folder: its pid, host and start time (`Run.lock`)

Results have one schema everywhere: a run's metrics flatten to columns ``<split>/<metric>`` (``test/mAP``,
``test_shift/CF1``), see `metric_columns`. `run_grid(base, variants, seeds)` trains one run per variant and seed
(each in `run_dir(root, variant, cfg)`, a folder named by the hash of the run's identity, so a run whose config
differs is a different run), reuses finished runs, resumes interrupted ones, never deletes one, and returns one row
per run: the variant name and its scalar overrides, ``seed``, ``run_dir``, the ``<split>/<metric>`` columns and the
run's cost.

The engine (`mlic.train`) writes a run through `Run`'s paths; `run_grid` and `train_runs` call the engine through a
deferred import, the one place where this layer calls the layer above it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlic.core import paths
from mlic.core.config import RunConfig
from mlic.core.errors import FolderInUseError
from mlic.core.io import load_checkpoint, read_jsonl
from mlic.core.locks import FolderLock, owner_of

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
THRESHOLDS_FILE = "thresholds.json"
PREDICTIONS_DIR = "predictions"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINTS = ("best", "last")
LOCK_FILE = ".lock"


class Run:
    """A run folder: what a training run left (see the module docstring), read on demand.

    Args:
        path: the run folder; a relative one resolves against the lab's home (`mlic.core.paths`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = paths.resolve(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ------------------------------------------------------------------ paths
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def history_file(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def final_file(self) -> Path:
        return self.path / FINAL_FILE

    @property
    def thresholds_file(self) -> Path:
        return self.path / THRESHOLDS_FILE

    @property
    def lock_file(self) -> Path:
        """Present while a process owns the folder; names that process (see `lock`)."""
        return self.path / LOCK_FILE

    def lock(self) -> FolderLock:
        """The folder's ownership by this process, as a context manager: a second process writing the same folder
        fails at once with `FolderInUseError` naming the owner; a lock left by a dead process is taken over."""
        return FolderLock(self.path, self.lock_file)

    def predictions_file(self, split: str) -> Path:
        """Where the scores of `split` are saved."""
        return self.path / PREDICTIONS_DIR / f"{split}.npz"

    def checkpoint(self, which: str = "best") -> Path:
        """`checkpoints/best.pt` (the reported weights) or `checkpoints/last.pt` (the resume state)."""
        if which not in CHECKPOINTS:
            raise ValueError(f"checkpoint {which!r}: choose from {', '.join(CHECKPOINTS)}")
        return self.path / CHECKPOINTS_DIR / f"{which}.pt"

    def checkpoints(self) -> list[Path]:
        """The checkpoint files present."""
        return [p for p in (self.checkpoint(w) for w in CHECKPOINTS) if p.is_file()]

    # ------------------------------------------------------------------ contents
    @property
    def config(self) -> RunConfig:
        """The config the run was trained with."""
        return RunConfig.from_yaml(self.config_file)

    @property
    def final(self) -> dict[str, Any]:
        """`final.json`: metrics per split, best epoch, weights, skipped images, class names, cost."""
        if not self.final_file.is_file():
            raise FileNotFoundError(f"{self.path}: not a finished run ({FINAL_FILE} is missing)")
        return json.loads(self.final_file.read_text())

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """The reported metrics, `{split: {metric: value}}` (percent)."""
        return self.final["metrics"]

    @property
    def history(self) -> list[dict[str, Any]]:
        """The per-epoch rows of `metrics.jsonl`."""
        return read_jsonl(self.history_file)

    @property
    def class_names(self) -> list[str]:
        return list(self.final["class_names"])

    def columns(self) -> dict[str, float]:
        """The run's metrics as ``<split>/<metric>`` columns."""
        return metric_columns(self.metrics)

    def seconds(self) -> float:
        """Training time: recorded in `final.json`, else the sum of the epochs' times."""
        if self.final_file.is_file():
            recorded = self.final.get("train_seconds")
            if recorded is not None:
                return float(recorded)
        return float(sum(row.get("epoch_seconds", 0.0) for row in self.history))

    def predictions(self, split: str) -> dict[str, np.ndarray]:
        """The saved predictions of `split`: `scores`, `targets`, `image_ids`, `class_names` (and `aux_<key>`)."""
        path = self.predictions_file(split)
        if not path.exists():
            saved = sorted(p.stem for p in (self.path / PREDICTIONS_DIR).glob("*.npz"))
            raise FileNotFoundError(f"{self.path}: no predictions for split {split!r} ({path} is missing; "
                                    f"saved: {', '.join(saved) or 'none'})")
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def thresholds(self) -> tuple[np.ndarray, list[str], str]:
        """Tuned per-class thresholds (`thresholds.json`): values, class names, and the split tuned on."""
        if not self.thresholds_file.exists():
            raise FileNotFoundError(f"{self.thresholds_file} is missing: train with train.threshold_split set")
        data = json.loads(self.thresholds_file.read_text())
        names = list(data["thresholds"])
        return np.array([data["thresholds"][n] for n in names]), names, data["split"]

    def state(self, which: str = "best") -> dict[str, Any]:
        """A checkpoint's contents (loaded with `weights_only=True`)."""
        return load_checkpoint(self.checkpoint(which), map_location="cpu")

    def load_model(self, which: str = "best", *, device: Any = "cpu") -> Any:
        """The run's model with the weights of `which` (best: as reported, EMA or raw), in eval mode."""
        return load_model(self.checkpoint(which), device=device)[0]

    # ------------------------------------------------------------------ status
    def is_finished(self, cfg: RunConfig | None = None) -> bool:
        """Whether the folder holds a finished run (`final.json` and `best.pt`) — of `cfg`'s identity when given:
        same data, model, loss, optimiser and training fields (`RunConfig.identity_hash`), and every split `cfg`
        evaluates saved."""
        if not (self.final_file.is_file() and self.checkpoint("best").is_file() and self.config_file.is_file()):
            return False
        if cfg is None:
            return True
        try:
            saved = self.config
        except (OSError, ValueError):
            return False
        if saved.identity_hash() != cfg.identity_hash():
            return False
        return all(self.predictions_file(split).is_file() for split in cfg.data.eval_splits)

    def drop_resume_state(self) -> None:
        """Delete `last.pt` (needed only to resume an unfinished run; `best.pt` stays)."""
        self.checkpoint("last").unlink(missing_ok=True)


def load_model(checkpoint: str | Path, *, device: Any = "cpu") -> tuple[Any, RunConfig, list[str]]:
    """The model of a checkpoint file (weights as saved), its config and class names, in eval mode on `device`."""
    from mlic.models import create_model

    state = load_checkpoint(checkpoint, map_location="cpu")
    cfg = RunConfig.from_dict(state["config"])
    m = cfg.model
    model = create_model(m.backbone, m.head, len(state["class_names"]), pretrained=False,
                         head_kwargs=m.head_kwargs, backbone_kwargs=m.backbone_kwargs, train_from=m.train_from)
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), cfg, list(state["class_names"])


def checkpoint_of(path: str | Path) -> Path:
    """A checkpoint file given a file, or a run folder (its best, else last checkpoint)."""
    path = paths.resolve(path)
    if path.is_file():
        return path
    for found in Run(path).checkpoints():
        return found
    raise FileNotFoundError(f"{path}: neither a checkpoint file nor a run folder with checkpoints")


def metric_columns(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """`{split: {metric: value}}` → `{"<split>/<metric>": value}`: the one result schema of tables and reports."""
    return {f"{split}/{key}": float(value) for split, values in metrics.items() for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def is_run(path: str | Path) -> bool:
    """Whether `path` is a run folder (holds a config and a checkpoint)."""
    run = Run(path)
    return run.config_file.is_file() and bool(run.checkpoints())


def find(root: str | Path, *, finished: bool = True, **tags: Any) -> list[Run]:
    """Run folders under `root` (itself included) whose config's `tags` hold every `tags` item, oldest first.

    Args:
        root: where to look.
        finished: only finished runs.
        **tags: e.g. ``role="student", variant="cpsd", seed=0``.
    """
    root = paths.resolve(root)
    found = []
    for config in root.rglob(CONFIG_FILE):
        run = Run(config.parent)
        if finished and not run.is_finished():
            continue
        try:
            run_tags = run.config.tags
        except (OSError, ValueError):
            continue
        if all(run_tags.get(k) == v for k, v in tags.items()):
            found.append(run)
    return sorted(found, key=lambda r: (r.config_file.stat().st_mtime_ns, str(r.path)))


# ---------------------------------------------------------------------------------------------------------------------
# Training many runs
# ---------------------------------------------------------------------------------------------------------------------
def slug(text: Any) -> str:
    """A name as part of a folder name (`gradcam++` → `gradcamplusplus`, so it stays apart from `gradcam`)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", str(text).replace("+", "plus")).strip("_") or "run"


def run_dir(root: str | Path, variant: str, cfg: RunConfig) -> Path:
    """The folder of run `cfg` of `variant` under `root`: ``<root>/<variant>/seed<seed>-<identity hash>``."""
    return paths.resolve(root) / slug(variant) / f"seed{cfg.train.seed}-{cfg.identity_hash()}"


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with `n` torch intra-op threads (None: leave as is): several processes on a small machine each
    need fewer threads than cores, or they spin against each other."""
    if not n:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` *spawned* processes: a forked child of a process that already ran torch's OpenMP
    thread pool can deadlock, and a notebook kernel has."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _fit(cfg_dict: dict[str, Any]) -> str:
    """Train one run (in this process or a worker); returns its folder."""
    from mlic.train import fit

    cfg = RunConfig.from_dict(cfg_dict)
    with torch_threads(cfg.runtime.threads):
        fit(cfg)
    return cfg.output_dir


#: how long a run waits for a process on another host that trains into the same folder (a stale lock of a process
#: that died there cannot be told from a live one)
FOREIGN_OWNER_WAIT_SECONDS = 3600.0


def _fit_or_wait(cfg_dict: dict[str, Any], reuse: bool = True) -> str:
    """Train one run; where another process trains into the same folder (two notebooks of a suite that share runs,
    running at once), wait for it and reuse its run if it finished it, else train (resume) once the folder is free."""
    cfg = RunConfig.from_dict(cfg_dict)
    run = Run(cfg.output_dir)
    started, announced = time.monotonic(), False
    while True:
        try:
            return _fit(cfg_dict)
        except FolderInUseError as err:
            owner = owner_of(run.lock_file)
            if owner is not None and owner.host != socket.gethostname() and \
                    time.monotonic() - started > FOREIGN_OWNER_WAIT_SECONDS:
                raise
            if not announced:
                log.info("%s: waiting for that run to finish", err)
                announced = True
        time.sleep(1.0)
        if reuse and run.is_finished(cfg):
            return cfg.output_dir


_WARMED: set[str] = set()


def _warm_feature_cache(cfg: RunConfig) -> None:
    """Compute (or find) every split's cached backbone features for `cfg`, once per process and setting, so that
    parallel workers only read the cache."""
    from mlic.train import Trainer

    key = json.dumps([cfg.data, cfg.model.backbone, cfg.model.pretrained, cfg.model.backbone_kwargs,
                      None if cfg.model.pretrained else cfg.train.seed], sort_keys=True, default=str)
    if key in _WARMED:
        return
    with torch_threads(cfg.runtime.threads):
        Trainer(cfg)  # building the batches computes (or finds) every split's cached features
    _WARMED.add(key)


def train_runs(cfgs: Sequence[RunConfig], *, reuse: bool = True, workers: int = 1, keep_last: bool = True,
               executor: Executor | None = None) -> list[Run]:
    """Train every run of `cfgs` (distinct `output_dir`s) that is not finished; resume the interrupted ones.

    Args:
        cfgs: run configs. `runtime.resume` is switched on, so a run killed half-way continues from its `last.pt`.
        reuse: keep a finished run of the same identity (`Run.is_finished`); False trains every run again.
        workers: 1 trains one after another in this process; more train in that many spawned processes, each with
            `runtime.threads` torch threads. In frozen-backbone mode the feature cache is filled first, here, so
            that the workers never extract the same features at once.
        keep_last: keep the finished runs' `last.pt` (False deletes them; `best.pt` stays).
        executor: a process pool to reuse across calls (None: one is made for this call when `workers` > 1).

    Returns:
        The `Run` of each config, in order.
    """
    outputs = [c.output_dir for c in cfgs]
    repeated = sorted({o for o in outputs if outputs.count(o) > 1})
    if repeated:
        raise ValueError(f"several runs share a folder: {repeated}")
    cfgs = [c.updated({"runtime.resume": True}) for c in cfgs]
    pending = [c for c in cfgs if not (reuse and Run(c.output_dir).is_finished(c))]
    if len(pending) < len(cfgs):
        log.info("%d of %d runs already finished: reused", len(cfgs) - len(pending), len(cfgs))
    if not reuse:
        pending = [c.updated({"runtime.resume": False}) for c in pending]
    if len(pending) > 1 and (workers > 1 or executor is not None):
        if pending[0].model.freeze_backbone or pending[0].model.train_from:
            _warm_feature_cache(pending[0])
        with contextlib.ExitStack() as stack:
            pool = executor or stack.enter_context(process_pool(min(workers, len(pending))))
            list(pool.map(functools.partial(_fit_or_wait, reuse=reuse), [c.to_dict() for c in pending]))
    else:
        for cfg in pending:
            _fit_or_wait(cfg.to_dict(), reuse=reuse)
    runs = [Run(c.output_dir) for c in cfgs]
    if not keep_last:
        for run in runs:
            run.drop_resume_state()
    return runs


def grid_configs(base: RunConfig, variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int] | None = None,
                 *, root: str | Path | None = None) -> list[tuple[str, int, RunConfig]]:
    """`(variant, seed, config)` of every run of a grid, seeds outermost; each config's `output_dir` is its
    `run_dir` under `root` (default: `base.output_dir`) and its tags name the variant and the seed."""
    root = paths.resolve(root if root is not None else base.output_dir)
    seeds = list(seeds) if seeds else [base.train.seed]
    out = []
    for seed in seeds:
        for variant, overrides in variants.items():
            cfg = base.updated({**dict(overrides), "train.seed": int(seed)})
            tags = {**base.tags, **cfg.tags, "variant": variant, "seed": int(seed)}
            cfg = cfg.updated({"output_dir": str(run_dir(root, variant, cfg)), "name": cfg.name or variant,
                               "tags": tags})
            out.append((variant, int(seed), cfg))
    return out


def run_grid(base: RunConfig, variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int] | None = None, *,
             reuse: bool = True, workers: int = 1, root: str | Path | None = None, keep_last: bool = True,
             executor: Executor | None = None) -> pd.DataFrame:
    """Train one run per variant and seed, reusing finished ones; one row per run.

    Args:
        base: the shared config; its `output_dir` is the grid's root unless `root` is given.
        variants: name → dotted overrides of `base` (e.g. ``{"asl": {"loss.name": "asl"}}``); ``{"base": {}}``
            trains `base` itself.
        seeds: training seeds (default: `base.train.seed`).
        reuse, workers, keep_last, executor: see `train_runs`.
        root: the folder of the grid's runs.

    Returns:
        Columns ``variant``, the variants' scalar overrides (by dotted key), ``seed``, ``run_dir``, every
        ``<split>/<metric>`` of the runs, ``best_epoch``, ``weights``, ``epochs_run`` and ``train_seconds``.
    """
    points = grid_configs(base, variants, seeds, root=root)
    runs = train_runs([cfg for _, _, cfg in points], reuse=reuse, workers=workers, keep_last=keep_last,
                      executor=executor)
    rows = []
    for (variant, seed, _), run in zip(points, runs):
        scalars = {k: v for k, v in variants[variant].items()
                   if isinstance(v, (str, int, float, bool)) or v is None}
        rows.append({"variant": variant, **scalars, "seed": seed, "run_dir": str(run.path), **row_of(run)})
    return pd.DataFrame(rows)


def row_of(run: Run) -> dict[str, Any]:
    """A finished run as a table row: its ``<split>/<metric>`` columns, ``best_epoch``, ``weights``,
    ``epochs_run`` and ``train_seconds``."""
    final = run.final
    return {**metric_columns(final["metrics"]), "best_epoch": final.get("best_epoch"),
            "weights": final.get("weights"), "epochs_run": final.get("epochs_run"),
            "train_seconds": run.seconds()}


def ensure(cfg: RunConfig, *, reuse: bool = True) -> Run:
    """The finished run of `cfg` in `cfg.output_dir`: reused when it holds this run, else trained (resumed)."""
    return train_runs([cfg], reuse=reuse)[0]


def histories(table: pd.DataFrame, by: str = "variant") -> dict[str, list[dict[str, Any]]]:
    """The per-epoch rows of each run of a `run_grid` table, keyed by its `by` column (one run per key)."""
    return {str(getattr(row, by)): Run(row.run_dir).history for row in table.itertuples()}


def headline(table: pd.DataFrame, variant: str) -> dict[str, dict[str, float]]:
    """`{split: {metric: mean over seeds}}` of one variant's rows of a `run_grid` table, for `mlic.report.record`."""
    rows = table[table["variant"] == variant]
    if rows.empty:
        raise ValueError(f"no runs of variant {variant!r}; variants: {sorted(set(table['variant']))}")
    out: dict[str, dict[str, float]] = {}
    for column in table.columns:
        if "/" in column and pd.api.types.is_numeric_dtype(table[column]):
            split, metric = column.split("/", 1)
            out.setdefault(split, {})[metric] = float(rows[column].mean())
    return out


def run_dirs(table: pd.DataFrame, seed: int | None = None) -> dict[str, str]:
    """`{variant: run_dir}` of one seed's runs of a `run_grid` table (default: the first seed in the table)."""
    seed = table["seed"].iloc[0] if seed is None else seed
    rows = table[table["seed"] == seed]
    return dict(zip(rows["variant"], rows["run_dir"]))


def by_variant(table: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """`headline` of every variant of a `run_grid` table, for `mlic.report.record(methods=...)`."""
    return {str(v): headline(table, v) for v in dict.fromkeys(table["variant"])}
