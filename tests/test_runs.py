"""The run layer: one run-folder layout, finished runs reused by identity (never deleted), grids of runs with one
column schema, and run folders found by their tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlic import runs
from mlic.core.config import RunConfig
from mlic.runs import Run, grid_configs, metric_columns, run_dir, run_grid
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def _frozen(scenes_root: Path, tmp_path: Path, **overrides: object) -> RunConfig:
    return tiny_config(scenes_root, tmp_path / "grid", **{"train.epochs": 1, "train.ema_decay": None,
                                                          "model.freeze_backbone": True, **overrides})


def test_metric_columns_flatten_split_and_metric() -> None:
    assert metric_columns({"test": {"mAP": 80.0, "CF1": 70}, "val": {"mAP": 1}}) == {
        "test/mAP": 80.0, "test/CF1": 70.0, "val/mAP": 1.0}


def test_run_folders_are_named_by_identity_not_by_run_time_knobs(tmp_path: Path) -> None:
    cfg = RunConfig()
    same = cfg.updated({"runtime.device": "cpu", "runtime.progress": False, "runtime.num_workers": 3,
                        "name": "x", "tags": {"a": 1}, "output_dir": "elsewhere"})
    other = cfg.updated({"optim.lr": 2e-3})
    assert run_dir(tmp_path, "v", cfg) == run_dir(tmp_path, "v", same) != run_dir(tmp_path, "v", other)
    assert run_dir(tmp_path, "gradcam++", cfg).parent.name != run_dir(tmp_path, "gradcam", cfg).parent.name
    points = grid_configs(cfg, {"a": {}, "b": {"optim.lr": 0.01}}, [0, 1], root=tmp_path)
    assert [(v, s) for v, s, _ in points] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert points[3][2].optim.lr == 0.01 and points[3][2].train.seed == 1
    assert points[3][2].tags == {"variant": "b", "seed": 1}
    assert len({c.output_dir for _, _, c in points}) == 4


def test_grid_reuses_finished_runs_and_never_deletes_a_run_of_another_config(scenes_root: Path,
                                                                            tmp_path: Path) -> None:
    base = _frozen(scenes_root, tmp_path)
    table = run_grid(base, {"asl": {}, "bce": {"loss.name": "bce"}}, [0])
    assert list(table["variant"]) == ["asl", "bce"] and list(table["seed"]) == [0, 0]
    assert {"run_dir", "test/mAP", "test_shift/OF1", "val/mAP", "best_epoch", "weights", "train_seconds",
            "loss.name"} <= set(table.columns)
    assert table["test/mAP"].between(0, 100).all() and table.loc[1, "loss.name"] == "bce"
    first = Run(table.loc[0, "run_dir"])
    assert first.is_finished(base.updated({"train.seed": 0}))
    assert first.metrics["test"]["mAP"] == table.loc[0, "test/mAP"]
    stamp = first.final_file.stat().st_mtime_ns
    again = run_grid(base.updated({"runtime.progress": True, "runtime.device": "cpu"}), {"asl": {}}, [0])
    assert again.loc[0, "run_dir"] == str(first.path) and first.final_file.stat().st_mtime_ns == stamp  # reused
    changed = run_grid(base.updated({"optim.lr": 1e-4}), {"asl": {}}, [0])
    assert changed.loc[0, "run_dir"] != str(first.path) and first.final_file.stat().st_mtime_ns == stamp  # kept
    assert not first.is_finished(base.updated({"optim.lr": 1e-4}))
    assert {r.path for r in runs.find(tmp_path / "grid", variant="asl")} == {first.path,
                                                                              Path(changed.loc[0, "run_dir"])}
    np.testing.assert_array_equal(first.predictions("test")["targets"].shape, (48, 20))
    with pytest.raises(FileNotFoundError, match="no predictions for split 'nope'"):
        first.predictions("nope")


def test_a_run_is_finished_only_for_its_identity_evaluated_splits_included(scenes_root: Path, tmp_path: Path) -> None:
    cfg = _frozen(scenes_root, tmp_path, **{"data.eval_splits": ["test"], "output_dir": str(tmp_path / "one")})
    run = runs.ensure(cfg)
    assert run.is_finished(cfg) and not run.predictions_file("test_shift").exists()
    assert not run.is_finished(cfg.updated({"data.eval_splits": ["test", "test_shift"]}))


@pytest.mark.slow
def test_a_run_whose_folder_another_process_trains_into_waits_for_it(scenes_root: Path, tmp_path: Path) -> None:
    """Two notebooks of a suite that share runs may ask for the same run at once: the second waits for the folder's
    owner instead of failing, then reuses the run or (here: the owner trained nothing) trains it."""
    import logging
    import threading

    cfg = tiny_config(scenes_root, tmp_path / "shared", **{"train.epochs": 1, "model.freeze_backbone": True})
    held, waiting = threading.Event(), threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for that run to finish" in record.getMessage():
                waiting.set()

    def owner() -> None:
        with Run(cfg.output_dir).lock():
            held.set()
            waiting.wait(60)  # released once the other run has found the folder in use

    handler = Seen()
    logging.getLogger("mlic.runs").addHandler(handler)
    previous = logging.getLogger("mlic.runs").level
    logging.getLogger("mlic.runs").setLevel(logging.INFO)
    thread = threading.Thread(target=owner)
    try:
        thread.start()
        held.wait(10)
        (run,) = runs.train_runs([cfg])
    finally:
        waiting.set()
        thread.join()
        logging.getLogger("mlic.runs").removeHandler(handler)
        logging.getLogger("mlic.runs").setLevel(previous)
    assert run.is_finished(cfg.updated({"runtime.resume": True}))
