"""`mlic.predict` / `mlic predict`: scores equal to the run's saved predictions, labels from the run's tuned
thresholds (or a given threshold, or top-k), every input kind, and unreadable images listed with their error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mlic
from mlic.cli.main import main as cli_main
from mlic.core.config import RunConfig
from mlic.core.io import save_checkpoint
from mlic.data.sources import load_split
from mlic.inference import image_paths, load_inference_model, predict, predict_table, write_predictions
from mlic.models import create_model
from mlic.runs import Run
from tests.conftest import tiny_config

CLASSES = ["cat", "dog", "sun"]


def _checkpoint(tmp_path: Path, *, normalize: bool = True) -> Path:
    """A checkpoint of an untrained tiny model (weights differ per class, so scores differ)."""
    torch.manual_seed(0)
    model = create_model("test_efficientnet", "gap", len(CLASSES), pretrained=False)
    cfg = RunConfig.from_dict({"data": {"image_size": 32, "normalize": normalize},
                               "model": {"backbone": "test_efficientnet", "head": "gap", "pretrained": False}})
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"state_dict": model.state_dict(), "config": cfg.to_dict(), "class_names": CLASSES})
    return path


def _image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder: two images at the top, one nested, a corrupt JPEG and a text file (not an image)."""
    root = tmp_path / "photos"
    _image(root / "a.png", 1)
    _image(root / "b.jpg", 2, (64, 48))
    _image(root / "nested" / "c.PNG", 3)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_scores_equal_the_evaluation_loop_and_bad_images_get_an_error_row(tmp_path: Path, photos: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    table = predict(ckpt, photos, device="cpu")
    assert [Path(p).name for p in table["path"]] == ["a.png", "b.jpg", "broken.jpg", "c.PNG"]
    assert list(table.columns) == ["path", "labels", "error", *CLASSES]
    broken = table.iloc[2]
    assert "cannot decode image" in broken["error"] and broken["labels"] == ""
    assert np.isnan(broken[CLASSES].to_numpy(dtype=float)).all()

    good = table[table["error"] == ""]
    loaded = load_inference_model(ckpt)
    from mlic.data.table import LabelledImages

    rows = LabelledImages(paths=list(good["path"]), labels=np.zeros((len(good), 3)), class_names=CLASSES)
    expected = predict_table(loaded.model, rows, image_size=32, normalize=True)
    np.testing.assert_allclose(good[CLASSES].to_numpy(dtype=np.float32), expected, atol=1e-6, rtol=0)
    for _, row in good.iterrows():  # no thresholds.json: 0.5
        assert row["labels"] == "|".join(c for c in CLASSES if row[c] >= 0.5)
    assert table.attrs["decision"] == "threshold 0.5"


def test_threshold_and_top_k_decide_the_labels(tmp_path: Path, photos: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    low = predict(ckpt, photos / "a.png", threshold=0.0, device="cpu")
    assert low.loc[0, "labels"] == "cat|dog|sun"
    top = predict(ckpt, photos / "a.png", top_k=1, device="cpu")
    scores = top.loc[0, CLASSES].to_numpy(dtype=float)
    assert top.loc[0, "labels"] == CLASSES[int(np.argmax(scores))]
    assert top.attrs["decision"] == "top 1 classes per image"
    with pytest.raises(ValueError, match="not both"):
        predict(ckpt, photos, threshold=0.5, top_k=1)


def test_inputs_from_files_csv_and_coco_json(tmp_path: Path, photos: Path) -> None:
    csv_file = photos / "list.csv"
    csv_file.write_text("path,labels\na.png,cat\nnested/c.PNG,\nmissing.png,dog\n")
    assert image_paths(csv_file) == [photos / "a.png", photos / "nested" / "c.PNG", photos / "missing.png"]
    coco = tmp_path / "coco" / "annotations" / "instances_val.json"
    coco.parent.mkdir(parents=True)
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [], "categories": []}))
    _image(tmp_path / "coco" / "val" / "x.jpg", 4)
    assert image_paths([coco, photos / "a.png"]) == [tmp_path / "coco" / "val" / "x.jpg", photos / "a.png"]
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        image_paths(tmp_path / "nothing.png")

    table = predict(_checkpoint(tmp_path), csv_file, device="cpu")
    assert list(table["error"] != "") == [False, False, True] and table.loc[2, "error"] == "file not found"


def test_mlic_predict_is_the_lazy_public_attribute() -> None:
    assert mlic.predict is predict and "predict" in dir(mlic)


def test_cli_writes_csv_and_json_that_read_back(tmp_path: Path, photos: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path)
    out_csv, out_json = tmp_path / "out" / "p.csv", tmp_path / "out" / "p.json"
    assert cli_main(["predict", str(ckpt), str(photos), "--output", str(out_csv), "--no-progress",
                     "--device", "cpu", "--top-k", "2"]) == 0
    assert "4 images (1 unreadable)" in capsys.readouterr().out
    table = pd.read_csv(out_csv, keep_default_na=False)
    assert list(table.columns) == ["path", "labels", "error", *CLASSES] and len(table) == 4
    assert all(len(labels.split("|")) == 2 for labels in table.loc[table["error"] == "", "labels"])
    assert cli_main(["predict", str(ckpt), str(photos / "a.png"), str(photos / "broken.jpg"), "--output",
                     str(out_json), "--no-progress", "--device", "cpu"]) == 0
    data = json.loads(out_json.read_text())
    assert data["class_names"] == CLASSES and data["decision"] == "threshold 0.5"
    first, second = data["predictions"]
    assert set(first["scores"]) == set(CLASSES) and first["error"] is None and isinstance(first["labels"], list)
    assert second["scores"] is None and "cannot decode" in second["error"]
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        write_predictions(predict(ckpt, photos / "a.png", device="cpu"), tmp_path / "p.txt")


@pytest.fixture(scope="module")
def trained_run(scenes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A tiny run trained end to end, with per-class thresholds tuned on train."""
    from mlic.train import fit

    out = tmp_path_factory.mktemp("predict") / "run"
    fit(tiny_config(scenes_root, out, **{"train.epochs": 1, "train.threshold_split": "train"}))
    return Run(out)


@pytest.mark.slow
def test_scores_equal_the_runs_saved_predictions_and_thresholds_travel(trained_run: Run, scenes_root: Path) -> None:
    saved = trained_run.predictions("test")
    split = load_split("scenes", scenes_root, "test")
    assert list(saved["image_ids"]) == list(split.image_ids)
    coco = scenes_root / "annotations" / "test.json"
    table = predict(trained_run.path, coco, device="cpu")  # a COCO file: its images, in its order
    assert [Path(p) for p in table["path"]] == [Path(p) for p in split.paths]
    scores = table[split.class_names].to_numpy(dtype=np.float32)
    assert float(np.abs(scores - saved["scores"]).max()) <= 1e-5

    values, names, tuned_on = trained_run.thresholds()
    assert names == split.class_names and tuned_on == "train"
    assert table.attrs["decision"] == "per-class thresholds tuned on train (thresholds.json)"
    expected = ["|".join(n for n, s, t in zip(names, row, values) if s >= t) for row in scores]
    assert list(table["labels"]) == expected
    # a checkpoint file of the run carries the run's thresholds too
    via_file = predict(trained_run.checkpoint("best"), coco, device="cpu")
    assert via_file.attrs["decision"] == table.attrs["decision"] and list(via_file["labels"]) == expected
