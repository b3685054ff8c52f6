"""The Scenes generator: determinism, COCO validity, planted structure, unseen handwriting, tight boxes, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlic.data import scenes
from mlic.data.scenes import (
    CLASS_NAMES,
    GROUPS,
    SPLITS,
    glyph_pools,
    make_scenes,
    object_box,
    paste_object,
    render_object_mask,
)

SMALL = dict(n_train=40, n_val=40, n_test=40, n_shift=40, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"{split}.json").read_text())


def _label_matrix(coco: dict) -> np.ndarray:
    row = {image["id"]: i for i, image in enumerate(coco["images"])}
    labels = np.zeros((len(coco["images"]), len(CLASS_NAMES)), dtype=np.int64)
    for ann in coco["annotations"]:
        labels[row[ann["image_id"]], ann["category_id"] - 1] = 1
    return labels


def _group_ratio(labels: np.ndarray) -> float:
    """Mean P(j | i) over j in i's planted group, divided by the mean over j outside it."""
    counts = labels.T @ labels
    within, across = [], []
    for i in range(len(CLASS_NAMES)):
        if counts[i, i] == 0:
            continue
        group = next(g for g in GROUPS if i in g)
        conditional = counts[i] / counts[i, i]
        within += [conditional[j] for j in group if j != i]
        across += [conditional[j] for j in range(len(CLASS_NAMES)) if j not in group]
    return float(np.mean(within) / np.mean(across))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("small") / "scenes", seed=0, **SMALL)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 train and 400 test_shift images, small pixels: enough for label statistics."""
    root = tmp_path_factory.mktemp("large") / "scenes"
    return make_scenes(root, seed=3, image_size=32, n_train=400, n_val=20, n_test=20, n_shift=400, progress=False)


def test_same_seed_gives_identical_bytes(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A second run in another folder, in two worker processes and small chunks: the bytes must not change.
    monkeypatch.setattr(scenes, "_CHUNK", 16)
    again = make_scenes(tmp_path / "again", seed=0, workers=2, **SMALL)
    first, second = _files(small), _files(again)
    assert len(first) == 6 * 40 + 6 + 1  # six splits of 40 images, their annotations, meta.json
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_other_seed_gives_other_data(small: Path, tmp_path: Path) -> None:
    other = _files(make_scenes(tmp_path / "other", seed=1, **SMALL))
    first = _files(small)
    pngs = [name for name in first if name.endswith(".png")]
    assert sum(first[name] != other[name] for name in pngs) > 0.9 * len(pngs)
    assert first["annotations/train.json"] != other["annotations/train.json"]


def test_coco_files_are_valid(small: Path) -> None:
    for split in SPLITS:
        coco = _coco(small, split)
        assert set(coco) == {"info", "images", "annotations", "categories"}
        assert coco["info"]["seed"] == 0 and coco["info"]["version"] == scenes.GENERATOR_VERSION
        assert [c["id"] for c in coco["categories"]] == list(range(1, 21))
        assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
        assert {c["supercategory"] for c in coco["categories"]} == {"digit", "shape"}
        images = {image["id"]: image for image in coco["images"]}
        assert len(images) == 40
        for image in coco["images"]:
            assert image["file_name"] == f"{split}_{image['id'] - 1:06d}.png"
            assert image["width"] == image["height"] == 64
            with Image.open(small / "images" / split / image["file_name"]) as png:
                assert png.mode == "RGB" and png.size == (64, 64)
            if split in ("test_shift", "test_cooc"):
                assert image["context"] == -1 and 0 <= image["background"] < 5
            elif split == "test_bg":
                assert image["context"] != image["background"] and 0 <= image["context"] < 5
            else:
                assert image["context"] == image["background"] and 0 <= image["context"] < 5
        ann_ids = [ann["id"] for ann in coco["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for ann in coco["annotations"]:
            assert ann["image_id"] in images and 1 <= ann["category_id"] <= 20 and ann["iscrowd"] == 0
            x, y, w, h = ann["bbox"]
            assert all(isinstance(v, float) for v in ann["bbox"])
            assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= 64 and y + h <= 64
            assert ann["area"] == pytest.approx(w * h)


def test_meta_records_truth_and_knobs(small: Path) -> None:
    meta = json.loads((small / "meta.json").read_text())
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["groups"] == [list(g) for g in GROUPS]
    assert sorted(i for group in meta["groups"] for i in group) == list(range(20))
    for group in meta["group_names"]:  # every group mixes digits and shapes
        kinds = {"digit" if CLASS_NAMES.index(name) < 10 else "shape" for name in group}
        assert kinds == {"digit", "shape"}
    assert len(meta["contexts"]) == 5 and meta["seed"] == 0
    assert meta["knobs"]["n_train"] == 40 and meta["knobs"]["max_objects"] == 4
    for split in SPLITS:
        coco = _coco(small, split)
        assert meta["splits"][split]["context"] == [image["context"] for image in coco["images"]]


def test_labels_per_image(large: Path) -> None:
    per_image = _label_matrix(_coco(large, "train")).sum(1)
    assert per_image.min() >= 1 and per_image.max() <= 4
    assert 2.3 <= per_image.mean() <= 3.5
    shift = _label_matrix(_coco(large, "test_shift")).sum(1)
    assert 2.3 <= shift.mean() <= 3.5


def test_labels_are_long_tailed_with_matching_shift_marginals(large: Path) -> None:
    train = _label_matrix(_coco(large, "train")).mean(0)
    shift = _label_matrix(_coco(large, "test_shift")).mean(0)
    assert train.min() > 0 and train.max() / train.min() > 3
    assert np.corrcoef(train, shift)[0, 1] > 0.8


def test_planted_groups_cooccur_in_train_not_in_shift(large: Path) -> None:
    train_ratio = _group_ratio(_label_matrix(_coco(large, "train")))
    shift_ratio = _group_ratio(_label_matrix(_coco(large, "test_shift")))
    assert train_ratio > 2.0
    assert shift_ratio < 1.5 and shift_ratio < train_ratio / 2


def test_test_splits_use_unseen_handwriting(small: Path) -> None:
    digits = scenes._digits()[1]
    train, val, test, *shifted = (glyph_pools(split) for split in SPLITS)
    for digit in range(10):
        assert np.array_equal(train[digit], val[digit])
        assert all(np.array_equal(test[digit], other[digit]) for other in shifted)
        assert np.intersect1d(train[digit], test[digit]).size == 0
        assert np.union1d(train[digit], test[digit]).size == np.count_nonzero(digits == digit)
        assert (digits[train[digit]] == digit).all() and (digits[test[digit]] == digit).all()
        assert 0.25 < len(test[digit]) / (len(test[digit]) + len(train[digit])) < 0.35
    for split in SPLITS:
        pools = glyph_pools(split)
        for ann in _coco(small, split)["annotations"]:
            label = ann["category_id"] - 1
            if label < 10:
                assert ann["glyph"] in pools[label]
            else:
                assert ann["glyph"] == -1


@pytest.mark.parametrize("label", range(20), ids=list(CLASS_NAMES))
def test_boxes_are_tight(label: int) -> None:
    background, colour = 128, (240, 20, 60)
    for trial in range(4):
        rng = np.random.default_rng([label, trial])
        glyph = int(glyph_pools("train")[label][trial]) if label < 10 else 0
        mask = render_object_mask(label, int(rng.integers(10, 30)), rng, glyph)
        canvas = Image.new("RGB", (64, 64), (background,) * 3)
        x, y = int(rng.integers(0, 20)), int(rng.integers(0, 20))
        box = paste_object(canvas, mask, colour, x, y)
        difference = np.abs(np.asarray(canvas, dtype=np.int64) - background).max(-1)
        # Pixels at least 10% of the way to the object colour: their extent matches the box within a pixel.
        rows = np.flatnonzero((difference > 0.1 * 128).any(1))
        cols = np.flatnonzero((difference > 0.1 * 128).any(0))
        visible = (cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0])
        assert np.abs(np.subtract(box[:2], visible[:2])).max() <= 1, (box, visible)
        assert np.abs(np.add(box[:2], box[2:]) - np.add(visible[:2], visible[2:])).max() <= 1, (box, visible)
        # Nothing clearly drawn lies outside the box.
        outside = np.ones_like(difference, dtype=bool)
        outside[box[1] : box[1] + box[3], box[0] : box[0] + box[2]] = False
        assert difference[outside].max(initial=0) < 0.3 * 128


def test_object_box_of_blank_mask_is_whole_patch() -> None:
    assert object_box(Image.new("L", (7, 5), 0)) == (0, 0, 7, 5)


def test_cache_reuses_identical_and_refuses_different(tmp_path: Path) -> None:
    root = make_scenes(tmp_path / "s", seed=0, **SMALL)
    meta, png = root / "meta.json", root / "images" / "train" / "train_000000.png"
    stamps = meta.stat().st_mtime_ns, png.stat().st_mtime_ns
    assert make_scenes(tmp_path / "s", seed=0, **SMALL) == root
    assert (meta.stat().st_mtime_ns, png.stat().st_mtime_ns) == stamps
    with pytest.raises(FileExistsError, match="noise"):
        make_scenes(root, seed=0, noise=0.2, **SMALL)
    with pytest.raises(FileExistsError, match="seed"):
        make_scenes(root, seed=5, **SMALL)
    smaller = dict(SMALL, n_train=10)
    make_scenes(root, seed=0, noise=0.2, overwrite=True, **smaller)
    assert json.loads(meta.read_text())["knobs"]["noise"] == 0.2
    assert len(list((root / "images" / "train").glob("*.png"))) == 10  # no stale images left behind


def test_crash_leaves_no_meta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(scenes, "_render_chunk", crash)
    with pytest.raises(RuntimeError):
        make_scenes(tmp_path / "s", seed=0, **SMALL)
    assert not (tmp_path / "s" / "meta.json").exists()
    monkeypatch.undo()
    root = make_scenes(tmp_path / "s", seed=0, **SMALL)
    assert (root / "meta.json").exists()


def test_invalid_knobs_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="context_strength"):
        make_scenes(tmp_path / "s", context_strength=1.5, **SMALL)
    with pytest.raises(ValueError, match="object_scale"):
        make_scenes(tmp_path / "s", object_scale=(0.5, 0.2), **SMALL)


def test_reader_returns_table_with_truth(small: Path) -> None:
    from mlic.data import load_split

    table = load_split("scenes", small, "train", class_order="alpha")
    assert len(table) == 40 and table.class_names == sorted(CLASS_NAMES)
    groups = table.extras["scenes"]["groups"]
    assert [[table.class_names[i] for i in g] for g in groups] == table.extras["scenes"]["group_names"]
    assert table.extras["context"].shape == (40,)
    with pytest.raises(FileNotFoundError, match="mlic scenes"):
        load_split("scenes", small / "missing", "train")


def test_the_factorial_shift_breaks_one_cue_at_a_time(tmp_path: Path) -> None:
    """test_bg keeps the planted co-occurrence and paints a foreign background; test_cooc keeps the background of
    its first object's group and loses the co-occurrence; test_shift loses both (the generator's planted truth)."""
    root = make_scenes(tmp_path / "f", seed=0, image_size=32, n_train=400, n_val=0, n_test=400, n_shift=400,
                       progress=False)
    group_of = {label: g for g, group in enumerate(scenes.GROUPS) for label in group}
    ratio = {split: _group_ratio(_label_matrix(_coco(root, split))) for split in ("test", "test_bg", "test_cooc",
                                                                                  "test_shift")}
    assert ratio["test_bg"] > 3 and ratio["test"] > 3  # labels still drawn from a context
    assert ratio["test_cooc"] < 1.5 and ratio["test_shift"] < 1.5  # companions independent of each other
    for split in ("test_bg", "test_cooc"):
        coco = _coco(root, split)
        first = {}
        for ann in coco["annotations"]:  # annotations follow the drawing order: the first is the first object
            first.setdefault(ann["image_id"], ann["category_id"] - 1)
        for image in coco["images"]:
            if split == "test_bg":  # the labels' context is not the background's
                assert image["background"] != image["context"]
            else:  # the first object's own context paints the background
                assert image["background"] == group_of[first[image["id"]]]
    meta = json.loads((root / "meta.json").read_text())
    assert {s: meta["splits"][s]["n_images"] for s in SPLITS} == {"train": 400, "val": 0, "test": 400,
                                                                  "test_shift": 400, "test_bg": 400, "test_cooc": 400}
