"""The claims ledger: verdicts that follow from the interval alone, and evaluators checked on planted run folders
(scores built so that the truth of each claim is known)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlic import metrics
from mlic.core.config import RunConfig
from mlic.core.io import atomic_save_npz, atomic_write_json
from mlic.runs import Run
from mlic.studies import claims
from mlic.studies.claims import Claim, build_ledger, collect_runs, evaluate_claim, verdict

N, C = 240, 5


def _targets(seed: int = 0) -> np.ndarray:
    targets = (np.random.default_rng(seed).random((N, C)) < 0.3).astype(np.uint8)
    targets[0] = 1
    return targets


def _scores(targets: np.ndarray, signal: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centred = 2.0 * targets.astype(np.float64) - 1.0
    return (1 / (1 + np.exp(-(signal * centred + rng.normal(size=targets.shape))))).astype(np.float32)


def _fake_run(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], *, lr: float = 1e-3,
              thresholds: np.ndarray | None = None) -> str:
    run = Run(path)
    RunConfig().updated({"optim.lr": lr}).to_yaml(run.config_file)
    for split, (scores, targets) in splits.items():
        atomic_save_npz(run.predictions_file(split), scores=scores, targets=targets,
                        image_ids=np.arange(len(scores)).astype(str), class_names=np.asarray(list("abcde")))
    if thresholds is not None:
        atomic_write_json(run.thresholds_file, {"split": "train", "thresholds": dict(zip("abcde",
                                                                                           thresholds.tolist()))})
    return str(path)


def _study(tmp_path: Path, signals: dict[str, list[float]], *, study: str = "s", lr: float = 1e-3) -> pd.DataFrame:
    targets = _targets()
    rows = []
    for variant, per_seed in signals.items():
        for seed, signal in enumerate(per_seed):
            scores = _scores(targets, signal, seed=100 * seed + len(variant))
            path = _fake_run(tmp_path / study / f"{variant}-{seed}-{lr}", {"test": (scores, targets),
                                                                             "val": (scores, targets)}, lr=lr)
            rows.append({"variant": variant, "seed": seed, "run_dir": path, "optim.lr": lr,
                         "val/mAP": metrics.evaluate(scores, targets)["mAP"]})
    return pd.DataFrame(rows).assign(study=study)


def test_verdicts_follow_the_interval_alone() -> None:
    greater = Claim("a > b", "", "s", "a", "b")
    assert verdict(greater, 0.5, 2.0, 3) == "reproduced" and verdict(greater, -2.0, -0.1, 3) == "refuted"
    assert verdict(greater, -0.5, 2.0, 3) == "inconclusive" and verdict(greater, 0.5, 2.0, 1) == "inconclusive"
    same = Claim("a ≈ b", "", "s", "a", "b", kind="equivalent", margin=1.0)
    assert verdict(same, -0.4, 0.6, 3) == "reproduced" and verdict(same, 1.2, 3.0, 3) == "refuted"
    assert verdict(same, -0.4, 1.6, 3) == "inconclusive"
    bar = Claim("a ≥ 90", "", "s", "a", None, kind="at_least", margin=90.0)
    assert verdict(bar, 92.0, 99.0, 5) == "reproduced" and verdict(bar, 50.0, 80.0, 5) == "refuted"


def test_a_steadily_better_method_is_reproduced_a_worse_one_refuted(tmp_path: Path) -> None:
    runs = _study(tmp_path, {"a": [1.6, 1.5, 1.7], "b": [0.6, 0.5, 0.7]})
    row = evaluate_claim(Claim("a > b", "paper", "s", "a", "b"), runs, n_boot=120)
    assert row["verdict"] == "reproduced" and row["ci_low"] > 0 and row["n_seeds"] == 3
    assert row["ci_low"] < row["delta"] < row["ci_high"]
    reverse = evaluate_claim(Claim("b > a", "paper", "s", "b", "a"), runs, n_boot=120)
    assert reverse["verdict"] == "refuted" and reverse["delta"] == pytest.approx(-row["delta"])
    one_seed = runs[runs["seed"] == 0]
    assert evaluate_claim(Claim("a > b", "", "s", "a", "b"), one_seed, n_boot=50)["verdict"] == "inconclusive"
    missing = evaluate_claim(Claim("x > b", "", "other", "x", "b"), runs, n_boot=10)
    assert missing["verdict"] == "inconclusive" and missing["n_seeds"] == 0


def test_each_method_is_compared_at_its_own_tuned_setting(tmp_path: Path) -> None:
    runs = pd.concat([_study(tmp_path, {"a": [0.3, 0.3, 0.3], "b": [1.0, 1.0, 1.0]}, lr=1e-3),
                      _study(tmp_path, {"a": [1.8, 1.8, 1.8], "b": [0.2, 0.2, 0.2]}, lr=1e-2)], ignore_index=True)
    tuned = evaluate_claim(Claim("a > b", "", "s", "a", "b", tune="optim.lr"), runs, n_boot=80)
    untuned = evaluate_claim(Claim("a > b", "", "s", "a", "b"), runs[runs["optim.lr"] == 1e-3], n_boot=80)
    assert tuned["verdict"] == "reproduced" and untuned["verdict"] == "refuted"  # a's best lr is 1e-2, b's 1e-3


def test_the_drop_claim_rewards_the_method_that_loses_less(tmp_path: Path) -> None:
    test, shifted = _targets(0), _targets(1)
    rows = []
    for seed in range(3):
        for variant, (s_test, s_shift) in {"robust": (1.5, 1.3), "brittle": (1.6, 0.4)}.items():
            path = _fake_run(tmp_path / f"{variant}{seed}", {
                "test": (_scores(test, s_test, seed), test), "test_cooc": (_scores(shifted, s_shift, seed), shifted)})
            rows.append({"variant": variant, "seed": seed, "run_dir": path, "study": "s"})
    row = evaluate_claim(Claim("robust drops less", "", "s", "robust", "brittle", evaluator="drop",
                               options={"to": "test_cooc"}), pd.DataFrame(rows), n_boot=100)
    assert row["verdict"] == "reproduced" and row["delta"] > 5


def test_tuned_thresholds_against_one_half(tmp_path: Path) -> None:
    targets = _targets()
    rows, gains = [], []
    for seed in range(3):
        scores = (0.2 + 0.3 * _scores(targets, 1.5, seed)).astype(np.float32)  # every score below 0.5
        tuned = metrics.tune_thresholds(scores, targets)
        rows.append({"variant": "m", "seed": seed, "study": "s", "run_dir": _fake_run(
            tmp_path / f"m{seed}", {"test": (scores, targets)}, thresholds=tuned)})
        assert metrics.evaluate(scores, targets)["OF1"] == 0.0  # nothing predicted at 0.5
        gains.append(metrics.evaluate(scores, targets, thresholds=tuned)["OF1"])
    row = evaluate_claim(Claim("thresholds raise OF1", "", "s", "m", None, metric="OF1", evaluator="thresholds"),
                         pd.DataFrame(rows), n_boot=100)
    assert row["verdict"] == "reproduced" and row["delta"] == pytest.approx(np.mean(gains))


def test_collect_runs_reads_each_finished_studys_runs_table(tmp_path: Path) -> None:
    for name, status in (("cpsd", "ok"), ("heads", "failed")):
        (tmp_path / name / "tables").mkdir(parents=True)
        pd.DataFrame({"variant": ["a"], "seed": [0], "run_dir": ["x"]}).to_csv(tmp_path / name / "tables" / "runs.csv",
                                                                                index=False)
        (tmp_path / name / "status.json").write_text(json.dumps({"status": status}))
    runs = collect_runs(tmp_path)
    assert list(runs["study"]) == ["cpsd"]  # a failed notebook's runs are not evidence
    ledger = build_ledger(runs, claims.CLAIMS[:2], n_boot=10)
    assert list(ledger.columns) == claims.COLUMNS and set(ledger["verdict"]) == {"inconclusive"}


@pytest.mark.slow
def test_the_partition_claim_finds_scenes_planted_groups(tmp_path: Path) -> None:
    from mlic.data.scenes import make_scenes

    root = make_scenes(tmp_path / "scenes", seed=0, image_size=16, n_train=1500, n_val=0, n_test=0, n_shift=0,
                       progress=False)
    run = Run(tmp_path / "run")
    RunConfig().updated({"data.root": str(root)}).to_yaml(run.config_file)
    runs = pd.DataFrame([{"study": "cpsd", "variant": "baseline", "seed": 0, "run_dir": str(run.path)}])
    claim = next(c for c in claims.CLAIMS if c.evaluator == "partition")
    row = evaluate_claim(claim, runs, n_boot=30)
    assert row["delta"] == pytest.approx(100.0) and row["verdict"] == "reproduced"


def test_exclusive_ap_prefers_the_model_that_looks_at_the_object(tmp_path: Path, monkeypatch) -> None:
    """b = class 0 and z = class 1 co-occur in most training images; the 'context' model scores b by z's presence,
    the 'object' model by b itself: only the latter keeps its AP where z is absent."""
    rng = np.random.default_rng(0)
    train = (rng.random((400, C)) < 0.2).astype(np.uint8)
    train[:150, 0] = 1
    train[:140, 1] = 1  # z present in most of b's images
    targets = (rng.random((N, C)) < 0.3).astype(np.uint8)
    targets[: N // 2, 0] = 1
    targets[: N // 3, 1] = 1
    monkeypatch.setattr(claims, "_training_table", lambda run_dir: type("T", (), {"labels": train})())
    rows = []
    for seed in range(3):
        noise = rng.normal(size=targets.shape)
        obj = 1 / (1 + np.exp(-(3.0 * (2.0 * targets - 1) + noise)))
        ctx = obj.copy()
        ctx[:, 0] = 1 / (1 + np.exp(-(3.0 * (2.0 * targets[:, 1] - 1) + noise[:, 0])))
        for variant, scores in (("object", obj), ("context", ctx)):
            rows.append({"variant": variant, "seed": seed, "study": "s", "run_dir": _fake_run(
                tmp_path / f"{variant}{seed}", {"test": (scores.astype(np.float32), targets)})})
    row = evaluate_claim(Claim("object > context on exclusive AP", "", "s", "object", "context",
                               evaluator="exclusive_ap"), pd.DataFrame(rows), n_boot=60)
    assert row["verdict"] == "reproduced" and row["delta"] > 10


def test_the_forest_plot_draws_each_claims_interval_and_verdict() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from mlic.plots import VERDICT_COLOURS, claims_forest

    ledger = pd.DataFrame([
        {"claim": "a > b", "split": "test", "metric": "mAP", "delta": 1.0, "ci_low": 0.4, "ci_high": 1.6,
         "n_seeds": 3, "verdict": "reproduced"},
        {"claim": "ari", "split": "train", "metric": "ARI", "delta": 98.0, "ci_low": 95.0, "ci_high": 100.0,
         "n_seeds": 30, "verdict": "reproduced"},
        {"claim": "c > d", "split": "test", "metric": "mAP", "delta": np.nan, "ci_low": np.nan, "ci_high": np.nan,
         "n_seeds": 0, "verdict": "inconclusive"}])
    fig = claims_forest(ledger, bars={"ari": 90.0})
    ax = fig.axes[0]
    ticks = {round(t.get_position()[1]): t.get_text() for t in ax.get_yticklabels()}
    assert ticks == {2: "a > b  [test mAP]", 1: "ari  [train ARI] − 90", 0: "c > d  [test mAP]"}  # first on top
    intervals = [line for line in ax.get_lines() if len(line.get_xdata()) == 2 and line.get_linestyle() == "-"]
    spans = sorted((tuple(line.get_xdata()), line.get_color()) for line in intervals)
    assert spans == sorted([((0.4, 1.6), VERDICT_COLOURS["reproduced"]), ((5.0, 10.0), VERDICT_COLOURS["reproduced"])])
    texts = [t.get_text() for t in ax.texts]
    assert "not measured" in texts and any(t.startswith("+8.00") for t in texts)
    matplotlib.pyplot.close(fig)


def test_the_suite_index_opens_with_the_ledger_of_the_last_successful_claims_run(tmp_path: Path) -> None:
    from mlic.report import write_index

    suite = tmp_path / "suite"
    ledger = pd.DataFrame({"claim": ["CPSD beats the baseline", "ROLE beats AN"], "source": ["CPSD", "SPML"],
                           "split": ["test", "test"], "metric": ["mAP", "mAP"], "delta": [1.25, -0.5],
                           "ci_low": [0.5, -1.5], "ci_high": [2.0, 0.25], "n_seeds": [3, 3],
                           "verdict": ["reproduced", "inconclusive"]})
    for run, status in (("claims_old", "failed"), ("claims", "ok"), ("study", "ok")):
        (suite / run / "tables").mkdir(parents=True)
        (suite / run / "status.json").write_text(json.dumps({"status": status, "notebook": "x.ipynb", "seconds": 1}))
    stale = ledger.assign(verdict="refuted")
    stale.to_csv(suite / "claims_old" / "tables" / "claims.csv", index=False)  # a failed rerun's: never shown
    ledger.to_csv(suite / "claims" / "tables" / "claims.csv", index=False)
    (suite / "claims" / "figures").mkdir()
    (suite / "claims" / "figures" / "claims_forest.png").write_bytes(b"\x89PNG")
    text = write_index(suite).read_text()
    assert text.index("## Claims ledger") < text.index("## Runs")
    section = text[text.index("## Claims ledger"):text.index("## Runs")]
    assert "| CPSD beats the baseline | CPSD | test | mAP | 1.25 | 0.50 | 2.00 | 3 | reproduced |" in section
    assert "| refuted |" not in section and "claims/figures/claims_forest.png" in section
