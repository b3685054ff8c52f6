"""The ipywidgets explorer (`mlic.explain.explorer`): it builds its widgets and redraws on every change, without a
browser."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from mlic.explain.explorer import MODES, Explorer, expand_runs, run_name
from mlic.runs import Run
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(scenes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlic.train import fit

    out = tmp_path_factory.mktemp("explorer") / "runs" / "tiny"
    fit(tiny_config(scenes_root, out, **{"data.image_size": 64, "train.epochs": 1, "data.eval_splits": ["test"]}))
    return out


def _png(explorer: Explorer) -> bytes:
    (output,) = explorer.output.outputs
    return base64.b64decode(output["data"]["image/png"])


def test_explorer_builds_its_widgets_and_draws_a_first_view(run_dir: Path) -> None:
    explorer = Explorer({"tiny": run_dir})
    assert explorer.renders == 1 and _png(explorer).startswith(b"\x89PNG")
    assert list(explorer.run_pick.options) == ["tiny"]
    assert list(explorer.split_pick.options) == ["val", "test"] and explorer.split_pick.value == "test"
    assert {"gradcam", "gradcam++", "scorecam", "eigencam", "layercam"} <= set(explorer.method_pick.options)
    assert "attention" not in explorer.method_pick.options  # a gap head has no cross-attention
    assert len(explorer.image_pick.options) == 48  # every test image of the tiny fixture
    state = explorer.state()
    assert state["row"] == 0 and state["label"] in state["truth"]  # the CAM starts on a true label
    assert "<table" in explorer.scores_html.value


def test_changing_a_widget_redraws_the_view(run_dir: Path) -> None:
    explorer = Explorer(run_dir)  # a path: the run is named by its folder
    before, renders = _png(explorer), explorer.renders
    explorer.image_pick.value = 5  # what a click in the browser does: set the value, the observer redraws
    assert explorer.renders == renders + 1 and explorer.state()["row"] == 5
    after_image = _png(explorer)
    assert after_image != before
    explorer.method_pick.value = "eigencam"
    assert explorer.state()["method"] == "eigencam" and _png(explorer) != after_image
    labels = [v for _, v in explorer.label_pick.options]
    explorer.label_pick.value = next(v for v in labels if v != explorer.label_pick.value)
    assert explorer.renders == renders + 3
    explorer.split_pick.value = "val"
    assert explorer.state()["split"] == "val" and len(explorer.image_pick.options) == 48


def test_worst_false_positives_list_the_highest_scored_absent_label(run_dir: Path) -> None:
    explorer = Explorer({"tiny": run_dir})
    explorer.select(mode=MODES[1], fp_label="star")
    label = explorer.model("tiny").class_names.index("star")
    table, scores = explorer.table("tiny", "test"), explorer.scores("tiny", "test")
    rows = [v for _, v in explorer.image_pick.options]
    assert len(rows) == explorer.top_false_positives
    assert all(table.labels[r, label] == 0 for r in rows)
    absent = np.flatnonzero(table.labels[:, label] == 0)
    assert scores[rows[0], label] == pytest.approx(scores[absent, label].max())
    assert list(scores[rows, label]) == sorted(scores[rows, label], reverse=True)
    state = explorer.state()
    assert state["label"] == "star" and state["row"] == rows[0] and "star" not in state["truth"]
    np.testing.assert_array_equal(explorer.false_positive_pairs(3), [[r, label] for r in rows[:3]])
    worst = np.where(table.labels == 0, scores, -1).max(axis=0)
    assert explorer.most_confused_label() == table.class_names[int(np.argmax(worst))]
    frame = explorer.score_table()
    assert set(frame["verdict"]) <= {"TP", "FP", "FN", "TN"} and len(frame) == table.num_classes


def test_scores_come_from_the_saved_predictions_and_match_a_fresh_forward_pass(run_dir: Path) -> None:
    explorer = Explorer({"tiny": run_dir})
    saved = explorer.scores("tiny", "test")
    model, table = explorer.model("tiny"), explorer.table("tiny", "test")
    fresh = model.predict(model.inputs(table, range(8))[0])
    np.testing.assert_allclose(saved[:8], fresh, atol=1e-4)


def test_static_figures_and_folders_of_runs(run_dir: Path) -> None:
    runs = expand_runs(run_dir.parent)  # a folder of runs: each one found by its checkpoints
    assert list(runs) == ["tiny"] and runs["tiny"] == run_dir
    explorer = Explorer(run_dir.parent, method="layercam")
    assert explorer.method_pick.value == "layercam"
    fig = explorer.figure()
    assert len(fig.axes) >= 3
    fig = explorer.method_figure(["gradcam", "eigencam", "nope"])
    assert len(fig.axes) == 3  # the image and the two methods that apply
    with pytest.raises(ValueError, match="unknown explorer widgets"):
        explorer.select(colour="red")
    with pytest.raises(FileNotFoundError):
        expand_runs(run_dir / "predictions")


def test_image_dropdown_and_title_name_the_same_image(run_dir: Path) -> None:
    explorer = Explorer(run_dir)
    explorer.select(split="test", image=5)
    table = explorer.table(explorer.run_pick.value, "test")
    image_id = table.image_ids[5]
    assert explorer.image_pick.label.startswith(f"image {image_id} · ")
    title = explorer.figure()._suptitle.get_text()
    assert title.endswith(f"image {image_id}") and "row" not in title
    assert explorer.mode_pick.style.button_width == "auto"  # "worst false positives" shown whole, not cut


def test_a_label_agnostic_method_is_not_titled_as_the_label(run_dir: Path) -> None:
    explorer = Explorer(run_dir)
    explorer.select(label="star", method="gradcam")
    assert explorer.figure().axes[1].get_title().startswith("gradcam of star")
    explorer.select(method="eigencam")
    title = explorer.figure().axes[1].get_title()
    assert "star" not in title and "every label" in title


def test_runs_are_named_by_their_folder_and_variant(run_dir: Path, tmp_path: Path) -> None:
    assert list(expand_runs([run_dir])) == ["tiny"]
    assert run_name(tmp_path / "runs" / "moe_dynamic" / "seed0-1a2b3c4d") == "moe_dynamic/seed0-1a2b3c4d"
    assert run_name(Run(run_dir).checkpoint("best")) == "tiny"
