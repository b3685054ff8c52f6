"""The co-occurrence-shift study's tables: drops per method and per label against independent computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from mlic.core.config import RunConfig
from mlic.core.io import atomic_save_npz
from mlic.runs import Run
from mlic.studies import shift


def _predictions(run_dir: Path, split: str, scores: np.ndarray, targets: np.ndarray) -> None:
    atomic_save_npz(Run(run_dir).predictions_file(split), scores=scores, targets=targets.astype(np.uint8),
                    image_ids=np.arange(len(scores)), class_names=np.asarray(["a", "b", "c"]))


def test_drop_table_measures_points_and_share() -> None:
    frame = pd.DataFrame({"variant": ["x", "y", "x"], "seed": [0, 0, 1], "test/mAP": [80.0, 60.0, 82.0],
                          "test_shift/mAP": [40.0, 54.0, 42.0]})
    out = shift.drop_table(frame, by="variant").set_index("method")  # means over seeds
    assert out.loc["x", "drop"] == 40.0 and out.loc["x", "relative_drop"] == 40.0 / 81.0
    assert out.loc["y", "drop"] == pytest.approx(6.0) and list(out.index) == ["y", "x"]  # smallest drop first


def test_label_drop_equals_sklearn_ap_differences(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    runs = {}
    expected = {}
    for name in ("m1", "m2"):
        run = tmp_path / name
        per_split = {}
        for split in shift.SPLITS:
            targets = rng.random((40, 3)) < 0.4
            targets[0] = True  # every label has a positive
            scores = np.clip(targets * 0.3 + rng.random((40, 3)), 0, 1).astype(np.float32)
            _predictions(run, split, scores, targets)
            per_split[split] = [100 * average_precision_score(targets[:, c], scores[:, c]) for c in range(3)]
        runs[name] = run
        expected[name] = np.subtract(per_split["test"], per_split["test_shift"])
    drops = shift.label_drop(runs)
    assert list(drops.columns) == ["a", "b", "c"] and list(drops.index) == ["m1", "m2"]
    for name in runs:
        np.testing.assert_allclose(drops.loc[name].to_numpy(), expected[name], atol=1e-8)


def test_drop_vs_energy_reports_the_rank_correlation() -> None:
    drops = pd.DataFrame({"method": list("abcd"), "drop": [30.0, 10.0, 20.0, 5.0]})
    energy = pd.DataFrame({"method": list("abcde"), "companion_energy": [0.5, 0.2, 0.1, 0.05, 0.9]})
    joined = shift.drop_vs_energy(drops, energy)
    assert sorted(joined["method"]) == list("abcd")  # only methods with both numbers
    assert joined.attrs["spearman"] == pytest.approx(spearmanr([30, 10, 20, 5], [0.5, 0.2, 0.1, 0.05])[0])


def test_long_label_table_pairs_drop_and_energy_per_method_and_label() -> None:
    drops = pd.DataFrame({"a": [1.0, 2.0], "b": [np.nan, 4.0]}, index=["m1", "m2"])
    energy = pd.DataFrame({"a": [0.1, 0.2], "b": [0.3, 0.4]}, index=["m1", "m2"])
    out = shift.long_label_table(drops, energy)
    assert set(zip(out["method"], out["label"])) == {("m1", "a"), ("m2", "a"), ("m2", "b")}  # NaN AP dropped
    assert out.set_index(["method", "label"]).loc[("m2", "b"), "companion_energy"] == 0.4


def test_unknown_methods_are_named() -> None:
    with pytest.raises(ValueError, match="unknown method.*'nope'"):
        shift.train_methods(RunConfig(), ["baseline", "nope"])
    assert set(shift.list_methods()) >= {"baseline", "aam", "cpsd", "moe_dynamic", "single_positive_role"}


def test_companion_energy_averages_pairs_with_companions_only() -> None:
    pointing = pd.DataFrame({
        "model": ["a", "a", "a", "b"], "split": ["test", "test", "test_shift", "test"],
        "class": ["x", "y", "x", "x"], "companions": [1, 0, 2, 3],
        "companion_energy": [0.4, 0.9, 0.1, 0.2], "energy": [0.5, 0.1, 0.8, 0.7], "hit": [True, False, True, False],
    })
    per_method, per_label = shift.companion_energy(pointing)
    a = per_method.set_index("method").loc["a"]
    assert a["companion_energy"] == 0.4 and a["energy"] == 0.5 and a["pointing"] == 1.0  # the 0-companion pair is out
    assert per_label.loc["b", "x"] == 0.2 and "y" not in per_label.columns


def test_method_metrics_carry_each_method_and_the_headline_the_correlation() -> None:
    drops = shift.drop_table(pd.DataFrame({"variant": list("abc"), "test/mAP": [80.0, 70.0, 60.0],
                                           "test_shift/mAP": [30.0, 40.0, 50.0]}))
    energy = pd.DataFrame({"method": list("abc"), "companion_energy": [0.3, 0.2, 0.1], "pointing": [0.5, 0.6, 0.7]})
    joined = shift.drop_vs_energy(drops, energy)
    out = shift.method_metrics(joined)
    assert out["a"] == {"test": {"mAP": 80.0, "drop": 50.0, "companion_energy": 0.3, "pointing": 0.5},
                        "test_shift": {"mAP": 30.0}}
    head = shift.headline(joined, method="b")
    assert head["test"]["mAP"] == 70.0 and head["test"]["spearman_drop_vs_companion_energy"] == pytest.approx(1.0)


def test_a_suites_methods_keep_each_swept_method_at_its_best_learning_rate_on_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (12, 3))
    rows = []
    # study "aam" swept the learning rate: ASL is best at 0.01, AAM at 0.001 (mean val/mAP over two seeds)
    val = {("ASL", 0.01): (70.0, 72.0), ("ASL", 0.001): (69.0, 71.5), ("AAM", 0.01): (60.0, 61.0),
           ("AAM", 0.001): (64.0, 60.0)}
    for (variant, lr), scores in val.items():
        for seed, score in enumerate(scores):
            run_dir = tmp_path / "runs" / f"{variant}-{lr}-{seed}"
            for split in ("test", "test_shift"):
                _predictions(run_dir, split, rng.random((12, 3)), targets)
            rows.append({"variant": variant, "seed": seed, "run_dir": str(run_dir), "optim.lr": lr,
                         "val/mAP": score})
    heads_dir = tmp_path / "runs" / "gap-0"  # a study without the axis: kept whole
    for split in ("test", "test_shift"):
        _predictions(heads_dir, split, rng.random((12, 3)), targets)
    rereads = pd.DataFrame(rows[:2]).assign(variant="AAM")  # another study recording runs it read, not trained
    for study, table in (("aam", pd.DataFrame(rows)), ("thresholds", rereads),
                         ("heads", pd.DataFrame([{"variant": "gap", "seed": 0, "run_dir": str(heads_dir),
                                                  "val/mAP": 50.0}]))):
        folder = tmp_path / "suite" / study
        (folder / "tables").mkdir(parents=True)
        table.to_csv(folder / "tables" / "runs.csv", index=False)
        (folder / "status.json").write_text('{"status": "ok"}')

    methods = shift.suite_methods(tmp_path / "suite")

    kept = {(m, lr) for m, lr in zip(methods["method"], methods["optim.lr"].fillna(0))}
    assert kept == {("ASL (aam)", 0.01), ("AAM (aam)", 0.001), ("gap (heads)", 0)}
    assert methods.groupby("method").size().to_dict() == {"ASL (aam)": 2, "AAM (aam)": 2, "gap (heads)": 1}
