"""The claims ledger: every claim of the four source papers that the lab can test, as one row with an interval.

A claim compares two methods (or a method with a fixed bar) on a split and a metric, with the runs of one study
of a suite: each study notebook records its runs (`variant`, `seed`, `run_dir`) as its ``runs`` table, and
`collect_runs(suite_dir)` gathers them. `evaluate_claim` computes the difference from the runs' saved per-image
scores with `mlic.stats.hierarchical_bootstrap` (seed pairs and images resampled together), and the verdict follows
from the interval alone:

- ``greater`` (A > B): *reproduced* when the whole interval is above 0, *refuted* when it is below 0;
- ``equivalent`` (A ≈ B): *reproduced* when the interval lies inside ±`margin`, *refuted* when it lies outside;
- ``at_least`` (A ≥ a bar): *reproduced* when the interval is above the bar, *refuted* when it is below;
- anything else is *inconclusive* — as is every claim measured on fewer than two seeds.

Claim kinds that need more than "metric of A minus metric of B on one split" are evaluators in `EVALUATORS`:
``difference`` (the default), ``drop`` (a smaller drop from one split to another: B's drop minus A's),
``thresholds`` (one method's runs with their tuned per-class thresholds against 0.5), ``exclusive_ap`` (Singh et
al.'s exclusive AP over the most biased label pairs) and ``partition`` (the adjusted Rand index of a label partition
against planted groups, over bootstrap resamples of the training images, each with its own k-means seed: its
``n_seeds`` counts those).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlic import stats
from mlic.core.registry import Registry
from mlic.runs import Run

log = logging.getLogger(__name__)

VERDICTS = ("reproduced", "refuted", "inconclusive")
COLUMNS = ["claim", "source", "comparison", "split", "metric", "delta", "ci_low", "ci_high", "n_seeds", "verdict",
           "regime", "study"]


@dataclass(frozen=True)
class Claim:
    """One testable claim.

    Attributes:
        name: what is claimed, in words (``"CPSD > SD"``).
        source: where it comes from (paper, table).
        study: the suite run whose ``runs`` table holds the runs (its name or the prefix of grid runs' names).
        a, b: the variants compared (`b` None for a claim against a bar).
        split, metric: where and what is measured (`metric`: mAP or a thresholded metric of `mlic.metrics`).
        kind: ``greater``, ``equivalent`` or ``at_least`` (see the module docstring).
        margin: the equivalence margin (points) or the bar.
        evaluator: a name in `EVALUATORS`.
        options: the evaluator's own options (e.g. ``{"to": "test_cooc"}`` for ``drop``).
        tune: a run-table column (e.g. ``optim.lr``) whose best value per variant on the validation split is kept
            before comparing: each method at its own tuned setting, on the same budget.
    """

    name: str
    source: str
    study: str
    a: str
    b: str | None
    split: str = "test"
    metric: str = "mAP"
    kind: str = "greater"
    margin: float = 0.0
    evaluator: str = "difference"
    options: dict[str, Any] = field(default_factory=dict)
    tune: str | None = None

    @property
    def comparison(self) -> str:
        """The compared quantity, in words."""
        if self.evaluator == "drop":
            to = self.options.get("to", "test_shift")
            return f"drop {self.split}→{to}: {self.b} − {self.a}"
        if self.evaluator == "thresholds":
            return f"{self.a}: tuned thresholds − 0.5"
        if self.b is None:
            return f"{self.a} vs {self.margin:g}"
        return f"{self.a} − {self.b}"


def verdict(claim: Claim, ci_low: float, ci_high: float, n_seeds: int) -> str:
    """`reproduced`, `refuted` or `inconclusive` from the interval (see the module docstring)."""
    if n_seeds < 2 or not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "inconclusive"
    if claim.kind == "greater":
        return "reproduced" if ci_low > 0 else "refuted" if ci_high < 0 else "inconclusive"
    if claim.kind == "at_least":
        return "reproduced" if ci_low > claim.margin else "refuted" if ci_high < claim.margin else "inconclusive"
    if claim.kind == "equivalent":
        inside = -claim.margin < ci_low and ci_high < claim.margin
        outside = ci_low > claim.margin or ci_high < -claim.margin
        return "reproduced" if inside else "refuted" if outside else "inconclusive"
    raise ValueError(f"unknown claim kind {claim.kind!r}; choose greater, equivalent or at_least")


# ---------------------------------------------------------------------------------------------------------------------
# The runs of a suite
# ---------------------------------------------------------------------------------------------------------------------
def collect_runs(suite_dir: str | Path, *, table: str = "runs") -> pd.DataFrame:
    """Every study's recorded runs of a suite: the ``tables/<table>.csv`` of each finished notebook run, with a
    ``study`` column (the notebook run's folder name)."""
    frames = []
    for path in sorted(Path(suite_dir).glob(f"*/tables/{table}.csv")):
        status = path.parent.parent / "status.json"
        if status.exists() and json.loads(status.read_text()).get("status") != "ok":
            continue
        frame = pd.read_csv(path)
        if {"variant", "seed", "run_dir"} <= set(frame.columns):
            frames.append(frame.assign(study=path.parent.parent.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["study", "variant", "seed",
                                                                                     "run_dir"])


def keep_tuned(rows: pd.DataFrame, column: str, score: str, *, by: Sequence[str] = ("variant",)) -> pd.DataFrame:
    """For each group of `by`, only the rows at the value of `column` (a grid axis such as ``optim.lr``) whose mean
    `score` over seeds is highest: each method at its own tuned setting. Groups that do not vary `column` (it is
    missing there) are kept whole."""
    if column not in rows or score not in rows:
        return rows
    kept = []
    for key, part in rows.groupby(list(by), sort=False):
        means = part.groupby(column)[score].mean().dropna()
        if means.empty:
            kept.append(part)
            continue
        best = means.idxmax()
        kept.append(part[part[column] == best])
        log.info("%s tuned to %s = %s on %s", key, column, best, score)
    return pd.concat(kept) if kept else rows


def _study_rows(runs: pd.DataFrame, claim: Claim) -> pd.DataFrame:
    rows = runs[(runs["study"] == claim.study) | runs["study"].astype(str).str.startswith(f"{claim.study}__")]
    if claim.tune and claim.tune in rows:
        score = "val/mAP" if "val/mAP" in rows else f"{claim.split}/{claim.metric}"
        rows = keep_tuned(rows, claim.tune, score)
    return rows


def _paired(rows: pd.DataFrame, a: str, b: str) -> tuple[list[str], list[str]]:
    """Run folders of `a` and `b` paired by seed (the seeds both have)."""
    runs_a = rows[rows["variant"] == a].drop_duplicates("seed").set_index("seed")["run_dir"]
    runs_b = rows[rows["variant"] == b].drop_duplicates("seed").set_index("seed")["run_dir"]
    seeds = sorted(set(runs_a.index) & set(runs_b.index))
    return [runs_a[s] for s in seeds], [runs_b[s] for s in seeds]


def _scores(run_dirs: Sequence[str], split: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
    """The runs' scores on `split`, with the shared targets and mask (checked to be the same images)."""
    predictions = [Run(d).predictions(split) for d in run_dirs]
    ids = [list(map(str, p["image_ids"])) for p in predictions]
    if any(i != ids[0] for i in ids):
        raise ValueError(f"runs {list(run_dirs)} scored different images on {split!r}")
    first = predictions[0]
    return [p["scores"] for p in predictions], first["targets"], first.get("mask")


def regime(run_dirs: Sequence[str]) -> str:
    """The training regime of runs, in words (backbone, what trains, image size, epochs)."""
    if not run_dirs:
        return ""
    cfg = Run(run_dirs[0]).config
    m = cfg.model
    trains = "head only" if m.freeze_backbone else f"from {m.train_from}" if m.train_from else "end to end"
    return f"{m.backbone} {trains}, {cfg.data.image_size} px, {cfg.train.epochs} epochs"


# ---------------------------------------------------------------------------------------------------------------------
# Evaluators: (claim, the study's runs, n_boot, seed) -> delta, interval, seeds, regime
# ---------------------------------------------------------------------------------------------------------------------
Evaluator = Callable[[Claim, pd.DataFrame, int, int], dict[str, Any]]
EVALUATORS: Registry[dict[str, Any]] = Registry("claim evaluator")


@EVALUATORS.register("difference")
def _difference(claim: Claim, rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """`metric(a) − metric(b)` on `split`, seeds and images resampled."""
    runs_a, runs_b = _paired(rows, claim.a, claim.b)
    if not runs_a:
        return {"n_seeds": 0, "regime": ""}
    scores_a, targets, mask = _scores(runs_a, claim.split)
    scores_b, targets_b, _ = _scores(runs_b, claim.split)
    if not np.array_equal(targets, targets_b):
        raise ValueError(f"{claim.name}: the two methods were scored on different labels")
    out = stats.hierarchical_bootstrap(scores_a, scores_b, targets, n_boot=n_boot, seed=seed, metric=claim.metric,
                                       mask=mask)
    return {**out, "regime": regime(runs_a)}


@EVALUATORS.register("drop")
def _drop(claim: Claim, rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """B's drop minus A's drop from `split` to `options["to"]` (positive: A loses less), each split's images
    resampled independently, the seed pairs together."""
    to = claim.options.get("to", "test_shift")
    runs_a, runs_b = _paired(rows, claim.a, claim.b)
    if not runs_a:
        return {"n_seeds": 0, "regime": ""}
    value = stats.metric_function(claim.metric)
    first = [_scores(runs, claim.split) for runs in (runs_a, runs_b)]
    second = [_scores(runs, to) for runs in (runs_a, runs_b)]

    def drops(which: int, s: int, rows1: np.ndarray, rows2: np.ndarray) -> float:
        (sc1, t1, m1), (sc2, t2, m2) = first[which], second[which]
        return (value(sc1[s][rows1], t1[rows1], None if m1 is None else m1[rows1])
                - value(sc2[s][rows2], t2[rows2], None if m2 is None else m2[rows2]))

    n1, n2, n_seeds = len(first[0][1]), len(second[0][1]), len(runs_a)
    all1, all2 = np.arange(n1), np.arange(n2)
    per_seed = np.array([drops(1, s, all1, all2) - drops(0, s, all1, all2) for s in range(n_seeds)])
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for i in range(n_boot):
        pairs, rows1, rows2 = rng.integers(0, n_seeds, n_seeds), rng.integers(0, n1, n1), rng.integers(0, n2, n2)
        draws[i] = np.mean([drops(1, s, rows1, rows2) - drops(0, s, rows1, rows2) for s in pairs])
    low, high = np.quantile(draws[np.isfinite(draws)], [0.025, 0.975])
    return {"delta": float(per_seed.mean()), "ci_low": float(low), "ci_high": float(high), "n_seeds": n_seeds,
            "per_seed": per_seed.tolist(), "regime": regime(runs_a)}


@EVALUATORS.register("thresholds")
def _thresholds(claim: Claim, rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """One method's runs: `metric` with their tuned per-class thresholds minus `metric` at 0.5, on `split`."""
    run_dirs = list(rows[rows["variant"] == claim.a].drop_duplicates("seed")["run_dir"])
    run_dirs = [d for d in run_dirs if Run(d).thresholds_file.exists()]
    if not run_dirs:
        return {"n_seeds": 0, "regime": ""}
    scores, targets, mask = _scores(run_dirs, claim.split)
    tuned = [stats.metric_function(claim.metric, thresholds=Run(d).thresholds()[0]) for d in run_dirs]
    fixed = stats.metric_function(claim.metric)
    per_seed, draws = [], np.empty(n_boot)
    for s in range(len(run_dirs)):
        per_seed.append(tuned[s](scores[s], targets, mask) - fixed(scores[s], targets, mask))
    rng = np.random.default_rng(seed)
    n, n_seeds = len(targets), len(run_dirs)
    for i in range(n_boot):
        pairs, rows_i = rng.integers(0, n_seeds, n_seeds), rng.integers(0, n, n)
        m = None if mask is None else mask[rows_i]
        draws[i] = np.mean([tuned[s](scores[s][rows_i], targets[rows_i], m)
                            - fixed(scores[s][rows_i], targets[rows_i], m) for s in pairs])
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"delta": float(np.mean(per_seed)), "ci_low": float(low), "ci_high": float(high), "n_seeds": n_seeds,
            "per_seed": per_seed, "regime": regime(run_dirs)}


@EVALUATORS.register("partition")
def _partition(claim: Claim, rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """The adjusted Rand index (in points) of the `options["strategy"]` partition at `options["k"]` against the
    planted groups of the training split the study's runs used, over bootstrap resamples of its images."""
    from sklearn.metrics import adjusted_rand_score

    from mlic.models.label_graph import assignment_from_groups, label_partition

    run_dirs = list(rows["run_dir"])
    if not run_dirs:
        return {"n_seeds": 0, "regime": ""}
    table = _training_table(run_dirs[0])
    groups = table.extras.get("scenes", {}).get("groups")
    if groups is None:
        return {"n_seeds": 0, "regime": "no planted groups"}
    truth = assignment_from_groups(list(groups), table.num_classes)
    strategy, k = claim.options.get("strategy", "cgp"), int(claim.options.get("k", len(groups)))
    n_init = int(claim.options.get("n_init", 10))
    tau, method = float(claim.options.get("tau", 2.0)), str(claim.options.get("method", "reference"))

    def ari(labels: np.ndarray, s: int) -> float:
        assign = label_partition(labels, strategy, k, seed=s, n_init=n_init, tau=tau, method=method)
        return 100.0 * adjusted_rand_score(truth, assign)

    rng = np.random.default_rng(seed)
    draws = np.array([ari(table.labels[rng.integers(0, len(table), len(table))], i) for i in range(n_boot)])
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"delta": ari(table.labels, seed), "ci_low": float(low), "ci_high": float(high), "n_seeds": n_boot,
            "regime": f"{strategy} partition ({method}, tau {tau:g}), k = {k}, {len(table)} training images "
                      "resampled"}


def _training_table(run_dir: str) -> Any:
    """The full-label training split a run's config names (a label-subset view unwrapped)."""
    from mlic.data.sources import load_split

    data = Run(run_dir).config.data
    base, options = data.dataset, data.options
    if base == "label_subset":
        base, options = options["base"], options.get("base_options") or {}
    return load_split(base, data.root, data.train_split, **options)


@EVALUATORS.register("exclusive_ap")
def _exclusive_ap(claim: Claim, rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """Singh et al.'s exclusive AP (b's AP on images without its most biasing companion z), averaged over the K
    pairs the training labels rank most biased (`mlic.studies.context_bias.biased_pairs`): A's minus B's."""
    from mlic.studies import context_bias

    runs_a, runs_b = _paired(rows, claim.a, claim.b)
    if not runs_a:
        return {"n_seeds": 0, "regime": ""}
    pairs = context_bias.biased_pairs(_training_table(runs_a[0]).labels, k=int(claim.options.get("k", 20)))
    scores_a, targets, mask = _scores(runs_a, claim.split)
    scores_b, _, _ = _scores(runs_b, claim.split)

    def exclusive(scores: np.ndarray, labels: np.ndarray, m: np.ndarray | None) -> float:
        return context_bias.mean_pair_ap(scores, labels, pairs, mask=m)["exclusive_AP"]

    out = stats.hierarchical_bootstrap(scores_a, scores_b, targets, n_boot=n_boot, seed=seed, mask=mask,
                                       statistic=exclusive)
    return {**out, "regime": regime(runs_a)}


# ---------------------------------------------------------------------------------------------------------------------
# The ledger
# ---------------------------------------------------------------------------------------------------------------------
def evaluate_claim(claim: Claim, runs: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One ledger row (`COLUMNS`) for `claim` from a suite's runs (`collect_runs`)."""
    rows = _study_rows(runs, claim)
    out = EVALUATORS.get(claim.evaluator)(claim, rows, n_boot, seed) if len(rows) else {"n_seeds": 0}
    low, high = out.get("ci_low", float("nan")), out.get("ci_high", float("nan"))
    n_seeds = int(out.get("n_seeds", 0))
    return {"claim": claim.name, "source": claim.source, "comparison": claim.comparison, "split": claim.split,
            "metric": claim.metric, "delta": out.get("delta", float("nan")), "ci_low": low, "ci_high": high,
            "n_seeds": n_seeds, "verdict": verdict(claim, low, high, n_seeds) if n_seeds else "inconclusive",
            "regime": out.get("regime", "not run in this suite"), "study": claim.study}


def build_ledger(runs: pd.DataFrame, claims: Sequence[Claim] | None = None, *, n_boot: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
    """Every claim's row (`COLUMNS`); claims whose study the suite did not run are kept, *inconclusive*."""
    rows = [evaluate_claim(claim, runs, n_boot=n_boot, seed=seed) for claim in (claims or CLAIMS)]
    return pd.DataFrame(rows, columns=COLUMNS)


def ledger_metrics(ledger: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Headline numbers for `mlic.report.record`: per split the claims are about, how many were reproduced,
    refuted and inconclusive."""
    return {str(split): {v: float((rows["verdict"] == v).sum()) for v in VERDICTS}
            for split, rows in ledger.groupby("split", sort=False)}


_CPSD = "CPSD (Xu et al., IJCAI 2022), Table 3"
_AAM = "Prokofiev & Sovrasov, AAM loss, Tables 7–8"
_MOE = "DR-MoE (ICLR 2025 submission), vs HSQ's static gates and Query2Label"
_SPML = "Cole et al., single positive labels (CVPR 2021), Table 2"

#: the claims the lab tests, with the suite run (study) that trains their runs
CLAIMS: tuple[Claim, ...] = (
    Claim("CPSD > SD", _CPSD, "cpsd", "cpsd", "sd"),
    Claim("SD > baseline", _CPSD, "cpsd", "sd", "baseline"),
    Claim("CPSD > baseline", _CPSD, "cpsd", "cpsd", "baseline"),
    Claim("CGP recovers the planted groups (ARI ≥ 90)", "CPSD §3.1 on Scenes' planted groups", "cpsd", "cgp", None,
          split="train", metric="ARI", kind="at_least", margin=90.0, evaluator="partition",
          options={"strategy": "cgp", "k": 5, "method": "reference", "tau": 2.0}),
    Claim("CPSD reduces co-occurrence over-fitting (smaller test→test_cooc drop)", "CPSD (Xu et al.), §1 and Fig. 1",
          "cpsd", "cpsd", "baseline", evaluator="drop", options={"to": "test_cooc"}),
    Claim("CPSD raises exclusive AP (b without its biasing companion)", "CPSD (Xu et al.) in Singh et al.'s terms",
          "cpsd", "cpsd", "baseline", metric="exclusive_AP", evaluator="exclusive_ap"),
    Claim("AAM > ASL (each at its tuned lr)", _AAM, "aam", "AAM", "ASL", tune="optim.lr"),
    Claim("AAM > AM (each at its tuned lr)", _AAM, "aam", "AAM", "AM", tune="optim.lr"),
    Claim("Per-class thresholds raise OF1", "Prokofiev & Sovrasov, Table 6", "aam", "AAM", None, metric="OF1",
          evaluator="thresholds", tune="optim.lr"),
    Claim("Per-class thresholds raise CF1", "Prokofiev & Sovrasov, Table 6", "aam", "AAM", None, metric="CF1",
          evaluator="thresholds", tune="optim.lr"),
    Claim("ML-Decoder > GAP", "Prokofiev & Sovrasov, Table 7 (after Ridnik et al.)", "heads", "ml_decoder", "gap"),
    Claim("Graph re-weighting ≈ ML-Decoder (±1 point) at lower cost", "Prokofiev & Sovrasov, Tables 2 and 9",
          "heads", "gat_reweight", "ml_decoder", kind="equivalent", margin=1.0),
    Claim("DR-MoE dynamic > static gates", _MOE, "moe", "moe_dynamic", "moe_static"),
    Claim("DR-MoE dynamic > Query2Label", _MOE, "moe", "moe_dynamic", "query2label"),
    Claim("ROLE > EPR (one positive per image)", _SPML, "single_positive", "role", "epr"),
    Claim("EPR > AN (one positive per image)", _SPML, "single_positive", "epr", "an"),
)


LEDGER_FILE = "claims.csv"


def write_ledger(ledger: pd.DataFrame, suite_dir: str | Path) -> Path:
    """Write the ledger to `<suite_dir>/claims.csv`, which the suite's index shows first; returns the path."""
    from mlic.core.io import atomic_write_text

    path = Path(suite_dir) / LEDGER_FILE
    atomic_write_text(path, ledger.to_csv(index=False))
    return path


def bars(claims: Sequence[Claim] | None = None) -> dict[str, float]:
    """`{claim name: bar}` of the claims tested against a bar (for `mlic.plots.claims_forest`)."""
    return {c.name: c.margin for c in (claims or CLAIMS) if c.kind == "at_least"}
