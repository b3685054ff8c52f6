"""Readers of real dataset formats (COCO, VOC, NUS-WIDE, CSV): tiny fixtures in each exact format, truth by hand."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mlic.core.errors import BadImageError, DataFormatError
from mlic.data.coco import load_coco
from mlic.data.csv import load_csv
from mlic.data.nuswide import load_nuswide
from mlic.data.sources import DATASETS, load_split
from mlic.data.voc import VOC_CLASSES, load_voc

# --------------------------------------------------------------------------------------------------------------- COCO
# Category ids 1, 3, 7 are non-contiguous and their names sort differently: id order zebra, apple, mango;
# alphabetical order apple, mango, zebra.
COCO = {
    "info": {"description": "tiny"},
    "images": [
        {"id": 10, "file_name": "a.jpg", "width": 100, "height": 80, "context": 0, "license": 1},
        {"id": 20, "file_name": "b.jpg", "width": 120, "height": 90, "context": 1, "license": 1},
        {"id": 30, "file_name": "c.jpg", "width": 50, "height": 50, "context": 2, "license": 1},  # no annotations
        {"id": 40, "file_name": "d.jpg", "width": 60, "height": 70, "context": 0, "license": 1, "only_here": 5},
    ],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0, "area": 12},
        {"id": 2, "image_id": 20, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 0, "area": 100},
        {"id": 3, "image_id": 40, "category_id": 3, "bbox": [2, 2, 2, 2], "iscrowd": 1, "area": 4},
        {"id": 4, "image_id": 10, "category_id": 7, "bbox": [5, 6, 7, 8], "iscrowd": 0, "area": 56},
        {"id": 5, "image_id": 40, "category_id": 1, "bbox": [3, 3, 3, 3], "iscrowd": 0, "area": 9},
        {"id": 6, "image_id": 20, "category_id": 3, "bbox": [1, 1, 1, 1], "iscrowd": 0, "area": 1},
    ],
    "categories": [
        {"id": 1, "name": "zebra", "supercategory": "animal"},
        {"id": 3, "name": "apple", "supercategory": "food"},
        {"id": 7, "name": "mango", "supercategory": "food"},
    ],
}


def _write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _copy() -> dict:
    return json.loads(json.dumps(COCO))


@pytest.fixture
def coco_file(tmp_path: Path) -> Path:
    return _write_json(tmp_path / "instances.json", COCO)


def test_coco_id_order(coco_file: Path, tmp_path: Path) -> None:
    t = load_coco(coco_file, tmp_path / "imgs", class_order="id")
    assert t.class_names == ["zebra", "apple", "mango"]
    assert t.image_ids == ["10", "20", "30", "40"]
    np.testing.assert_array_equal(t.labels, [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
    assert t.labels.dtype == np.uint8
    assert t.paths[0] == (tmp_path / "imgs" / "a.jpg").absolute() and t.paths[0].is_absolute()
    assert t.source == str(coco_file)
    assert t.observed is None


def test_coco_alpha_order(coco_file: Path, tmp_path: Path) -> None:
    t = load_coco(coco_file, tmp_path, class_order="alpha")
    assert t.class_names == ["apple", "mango", "zebra"]
    np.testing.assert_array_equal(t.labels, [[0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 0, 1]])
    # the box class index follows the chosen column order too
    np.testing.assert_array_equal(t.boxes[0], [[2, 1, 2, 3, 4], [1, 5, 6, 7, 8]])


def test_coco_boxes(coco_file: Path, tmp_path: Path) -> None:
    t = load_coco(coco_file, tmp_path)
    assert len(t.boxes) == 4 and all(b.dtype == np.float32 for b in t.boxes)
    np.testing.assert_array_equal(t.boxes[0], [[0, 1, 2, 3, 4], [2, 5, 6, 7, 8]])
    np.testing.assert_array_equal(t.boxes[1], [[1, 0, 0, 10, 10], [1, 1, 1, 1, 1]])
    assert t.boxes[2].shape == (0, 5)
    np.testing.assert_array_equal(t.boxes[3], [[1, 2, 2, 2, 2], [0, 3, 3, 3, 3]])


def test_coco_keep_empty_false_drops_unannotated(coco_file: Path, tmp_path: Path) -> None:
    t = load_coco(coco_file, tmp_path, keep_empty=False)
    assert t.image_ids == ["10", "20", "40"]
    np.testing.assert_array_equal(t.labels, [[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    np.testing.assert_array_equal(t.extras["context"], [0, 1, 0])
    np.testing.assert_array_equal(t.boxes[2], [[1, 2, 2, 2, 2], [0, 3, 3, 3, 3]])


def test_coco_crowd_excluded(coco_file: Path, tmp_path: Path) -> None:
    t = load_coco(coco_file, tmp_path, include_crowd=False)
    np.testing.assert_array_equal(t.labels[3], [1, 0, 0])
    np.testing.assert_array_equal(t.boxes[3], [[0, 3, 3, 3, 3]])


def test_coco_extras_keep_scalar_keys_on_every_image(coco_file: Path, tmp_path: Path) -> None:
    t = load_coco(coco_file, tmp_path)
    assert set(t.extras) == {"context", "width", "height"}  # not `only_here` (one image), not `license`
    np.testing.assert_array_equal(t.extras["context"], [0, 1, 2, 0])
    np.testing.assert_array_equal(t.extras["width"], [100, 120, 50, 60])


def test_coco_string_ids(tmp_path: Path) -> None:
    data = {
        "images": [{"id": "x1", "file_name": "x1.png"}, {"id": "x2", "file_name": "x2.png"}],
        "annotations": [{"image_id": "x2", "category_id": 5}],
        "categories": [{"id": 5, "name": "dog"}],
    }
    t = load_coco(_write_json(tmp_path / "a.json", data), tmp_path)
    assert t.image_ids == ["x1", "x2"]
    np.testing.assert_array_equal(t.labels, [[0], [1]])
    assert t.boxes is None  # no annotation has a bbox


@pytest.mark.parametrize(
    ("mutate", "field", "in_problem"),
    [
        (lambda d: d.pop("annotations"), "annotations", "missing"),
        (lambda d: d["annotations"][2].pop("category_id"), "category_id", "annotations[2]"),
        (lambda d: d["images"][1].pop("file_name"), "file_name", "images[1]"),
        (lambda d: d["annotations"][4].update(image_id=999), "image_id", "annotations[4]"),
        (lambda d: d["annotations"][1].update(category_id=2), "category_id", "annotations[1]"),
        (lambda d: d["annotations"][3].update(bbox=[1, 2, 3]), "bbox", "annotations[3]"),
        (lambda d: d["images"].append({"id": 10, "file_name": "dup.jpg"}), "id", "10"),
    ],
    ids=["no-annotations", "no-category_id", "no-file_name", "unknown-image", "unknown-category", "bad-bbox", "dup"],
)
def test_coco_malformed(tmp_path: Path, mutate, field: str, in_problem: str) -> None:
    data = _copy()
    mutate(data)
    path = _write_json(tmp_path / "bad.json", data)
    with pytest.raises(DataFormatError) as err:
        load_coco(path, tmp_path)
    assert err.value.path == str(path)
    assert err.value.field == field
    assert in_problem in err.value.problem


def test_coco_unknown_image_id_names_the_value(tmp_path: Path) -> None:
    data = _copy()
    data["annotations"][4]["image_id"] = 999
    with pytest.raises(DataFormatError, match="999"):
        load_coco(_write_json(tmp_path / "bad.json", data), tmp_path)


def test_coco_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [}')
    with pytest.raises(DataFormatError) as err:
        load_coco(path, tmp_path)
    assert err.value.path == str(path) and "line 1" in err.value.problem


@pytest.fixture
def coco_with_images(coco_file: Path, tmp_path: Path) -> tuple[Path, Path]:
    image_dir = tmp_path / "imgs"
    image_dir.mkdir()
    for name in ("a.jpg", "b.jpg", "d.jpg"):  # c.jpg is absent
        (image_dir / name).write_bytes(b"x")
    return coco_file, image_dir


def test_coco_missing_file_warns(coco_with_images, caplog: pytest.LogCaptureFixture) -> None:
    ann, image_dir = coco_with_images
    with caplog.at_level(logging.WARNING, logger="mlic.data.coco"):
        t = load_coco(ann, image_dir, check_files=True)
    assert len(t) == 4
    assert "1 of 4" in caplog.text and str(image_dir.absolute() / "c.jpg") in caplog.text


def test_coco_missing_file_raise_and_drop(coco_with_images) -> None:
    ann, image_dir = coco_with_images
    with pytest.raises(BadImageError) as err:
        load_coco(ann, image_dir, check_files=True, missing="raise")
    assert err.value.path == str(image_dir.absolute() / "c.jpg")
    t = load_coco(ann, image_dir, check_files=True, missing="drop")
    assert t.image_ids == ["10", "20", "40"]
    np.testing.assert_array_equal(t.labels, [[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    # all present: nothing dropped, no check without check_files
    assert len(load_coco(ann, image_dir, missing="raise")) == 4


def test_load_split_coco_layout(tmp_path: Path) -> None:
    _write_json(tmp_path / "annotations" / "instances_train2017.json", COCO)
    t = load_split("coco", tmp_path, "train2017", class_order="alpha")
    assert t.paths[1] == (tmp_path / "train2017" / "b.jpg").absolute()
    assert t.class_names == ["apple", "mango", "zebra"]
    assert t.source == str(tmp_path / "annotations" / "instances_train2017.json")


def test_load_split_scenes_layout_and_not_found(tmp_path: Path) -> None:
    _write_json(tmp_path / "annotations" / "val.json", COCO)
    t = load_split("coco", tmp_path, "val", keep_empty=False)
    assert t.paths[0] == (tmp_path / "images" / "val" / "a.jpg").absolute() and len(t) == 3
    with pytest.raises(FileNotFoundError) as err:
        load_split("coco", tmp_path, "test")
    assert "instances_test.json" in str(err.value) and str(Path("annotations") / "test.json") in str(err.value)


# ---------------------------------------------------------------------------------------------------------------- VOC
def _voc_object(name: str | None, difficult: int, box: tuple[int, int, int, int] = (10, 20, 59, 119)) -> str:
    name_tag = "" if name is None else f"<name>{name}</name>"
    xmin, ymin, xmax, ymax = box
    return (f"<object>{name_tag}<pose>Unspecified</pose><truncated>0</truncated><difficult>{difficult}</difficult>"
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def _voc_xml(image_id: str, objects: list[str]) -> str:
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>500</width><height>375</height><depth>3</depth></size><segmented>0</segmented>"
            + "".join(objects) + "</annotation>")


VOC_IMAGES = {
    # dog, person (difficult) and person: both positive
    "000001": [_voc_object("dog", 0, (10, 20, 59, 119)), _voc_object("person", 1, (1, 1, 10, 10)),
               _voc_object("person", 0, (100, 50, 199, 149))],
    # cat only through a difficult object; chair normal
    "000002": [_voc_object("cat", 1, (5, 5, 24, 14)), _voc_object("chair", 0, (1, 1, 1, 1))],
    # two difficult bottles, one sofa
    "000003": [_voc_object("bottle", 1), _voc_object("bottle", 1), _voc_object("sofa", 0, (2, 3, 4, 5))],
}
C = {name: i for i, name in enumerate(VOC_CLASSES)}


def _write_voc(root: Path, images: dict[str, list[str]], listed: list[str] | None = None) -> Path:
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(exist_ok=True)
    for image_id, objects in images.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, objects))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(listed or list(images)) + "\n")
    return root


def _matrix(rows: list[dict[str, int]]) -> np.ndarray:
    out = np.zeros((len(rows), 20), dtype=np.int64)
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[i, C[name]] = value
    return out


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return _write_voc(tmp_path / "VOCdevkit" / "VOC2007", VOC_IMAGES)


def test_voc_classes_standard_order() -> None:
    assert len(VOC_CLASSES) == 20 and list(VOC_CLASSES) == sorted(VOC_CLASSES)
    assert VOC_CLASSES[C["person"]] == "person" and C["person"] == 14


def test_voc_difficult_ignore(voc_root: Path) -> None:
    t = load_voc(voc_root, "trainval")
    assert t.image_ids == ["000001", "000002", "000003"]
    assert t.paths[1] == voc_root.absolute() / "JPEGImages" / "000002.jpg"
    assert t.class_names == list(VOC_CLASSES)
    expected = _matrix([{"dog": 1, "person": 1}, {"chair": 1}, {"sofa": 1}])
    np.testing.assert_array_equal(t.labels, expected)
    observed = 2 * expected - 1  # +1 positive, -1 negative ...
    observed[1, C["cat"]] = 0  # ... 0 where the class is only difficult
    observed[2, C["bottle"]] = 0
    np.testing.assert_array_equal(t.observed, observed)
    assert t.observed.dtype == np.int8


def test_voc_difficult_positive(voc_root: Path) -> None:
    t = load_voc(voc_root, "trainval", difficult="positive")
    expected = _matrix([{"dog": 1, "person": 1}, {"cat": 1, "chair": 1}, {"bottle": 1, "sofa": 1}])
    np.testing.assert_array_equal(t.labels, expected)
    assert t.observed is None
    np.testing.assert_array_equal(t.boxes[1], [[C["cat"], 4, 4, 20, 10], [C["chair"], 0, 0, 1, 1]])
    assert t.boxes[2].shape == (3, 5)


def test_voc_difficult_negative(voc_root: Path) -> None:
    t = load_voc(voc_root, "trainval", difficult="negative")
    np.testing.assert_array_equal(t.labels, _matrix([{"dog": 1, "person": 1}, {"chair": 1}, {"sofa": 1}]))
    assert t.observed is None


def test_voc_boxes_one_based_to_xywh(voc_root: Path) -> None:
    t = load_voc(voc_root, "trainval")
    # xmin 10, ymin 20, xmax 59, ymax 119 (1-based, inclusive) -> x 9, y 19, w 50, h 100; difficult person dropped
    np.testing.assert_array_equal(t.boxes[0], [[C["dog"], 9, 19, 50, 100], [C["person"], 99, 49, 100, 100]])
    np.testing.assert_array_equal(t.boxes[2], [[C["sofa"], 1, 2, 3, 3]])
    assert t.boxes[0].dtype == np.float32
    np.testing.assert_array_equal(t.extras["width"], [500, 500, 500])


def test_voc_registry_with_year(voc_root: Path) -> None:
    t = load_split("voc", voc_root.parent, "trainval", year=2007, difficult="positive")
    assert t.labels[2, C["bottle"]] == 1 and len(t) == 3


def test_voc_broken_xml_names_file(tmp_path: Path) -> None:
    root = _write_voc(tmp_path, VOC_IMAGES)
    bad = root / "Annotations" / "000002.xml"
    bad.write_text("<annotation><object><name>cat</name>")
    with pytest.raises(DataFormatError) as err:
        load_voc(root, "trainval")
    assert err.value.path == str(bad)


def test_voc_missing_xml_names_both(tmp_path: Path) -> None:
    root = _write_voc(tmp_path, VOC_IMAGES, listed=["000001", "000004"])
    with pytest.raises(DataFormatError) as err:
        load_voc(root, "trainval")
    split_file = root.absolute() / "ImageSets" / "Main" / "trainval.txt"
    assert err.value.path == str(split_file)
    assert str(root.absolute() / "Annotations" / "000004.xml") in str(err.value)


@pytest.mark.parametrize(("objects", "field", "text"), [
    ([_voc_object(None, 0)], "name", "object 0 has no <name>"),
    ([_voc_object("dog", 0), _voc_object("unicorn", 0)], "name", "object 1 has unknown class 'unicorn'"),
])
def test_voc_bad_object(tmp_path: Path, objects: list[str], field: str, text: str) -> None:
    root = _write_voc(tmp_path, {"000009": objects})
    with pytest.raises(DataFormatError) as err:
        load_voc(root, "trainval")
    assert err.value.path == str(root.absolute() / "Annotations" / "000009.xml")
    assert err.value.field == field and text in err.value.problem


def test_voc_missing_split_file(voc_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="test.txt"):
        load_voc(voc_root, "test")


# ----------------------------------------------------------------------------------------------------------- NUS-WIDE
NUS_TRAIN = ["actor\\0001_2124494179.jpg", "airport\\0002_11.jpg", "sky\\0003_12.jpg", "sky\\0004_13.jpg"]
NUS_LABELS = {"animal": [1, 0, 0, 1], "sky": [0, 1, 1, 1], "water": [0, 0, 0, 0]}


def _write_nuswide(root: Path) -> Path:
    (root / "ImageList").mkdir(parents=True)
    gt = root / "Groundtruth" / "TrainTestLabels"
    gt.mkdir(parents=True)
    (root / "Concepts81.txt").write_text("animal\nsky\nwater\n")
    (root / "ImageList" / "TrainImagelist.txt").write_text("\r\n".join(NUS_TRAIN) + "\r\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("C:\\ImageData\\Flickr\\zoo\\0009_99.jpg\n")
    for name, column in NUS_LABELS.items():
        (gt / f"Labels_{name}_Train.txt").write_text("".join(f"{v} \n" for v in column))
        (gt / f"Labels_{name}_Test.txt").write_text("1\n" if name == "water" else "0\n")
    return root


def test_nuswide_train(tmp_path: Path) -> None:
    root = _write_nuswide(tmp_path / "nus")
    t = load_nuswide(root, "train")
    assert t.class_names == ["animal", "sky", "water"]
    np.testing.assert_array_equal(t.labels, [[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 1, 0]])
    assert t.paths[0] == root.absolute() / "Flickr" / "actor" / "0001_2124494179.jpg"
    assert t.image_ids[1] == "airport/0002_11.jpg"
    assert t.boxes is None


def test_nuswide_test_split_full_windows_path_and_concept_subset(tmp_path: Path) -> None:
    root = _write_nuswide(tmp_path / "nus")
    t = load_split("nuswide", root, "test")
    assert t.paths == [root.absolute() / "Flickr" / "zoo" / "0009_99.jpg"]
    np.testing.assert_array_equal(t.labels, [[0, 0, 1]])
    sub = load_nuswide(root, "train", concepts=["water", "animal"])
    np.testing.assert_array_equal(sub.labels, [[0, 1], [0, 0], [0, 0], [0, 1]])


def test_nuswide_line_count_mismatch_names_label_file(tmp_path: Path) -> None:
    root = _write_nuswide(tmp_path / "nus")
    bad = root / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt"
    bad.write_text("0\n1\n1\n")
    with pytest.raises(DataFormatError) as err:
        load_nuswide(root, "train")
    assert err.value.path == str(root.absolute() / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt")
    assert "3 values for the 4 images" in err.value.problem


def test_nuswide_bad_value_gives_line(tmp_path: Path) -> None:
    root = _write_nuswide(tmp_path / "nus")
    (root / "Groundtruth" / "TrainTestLabels" / "Labels_water_Train.txt").write_text("0\n0\n2\n0\n")
    with pytest.raises(DataFormatError, match="line 3: value '2'"):
        load_nuswide(root, "train")


# ---------------------------------------------------------------------------------------------------------------- CSV
def test_csv_pipe_separator_and_empty_row(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("path,labels,source\nimgs/a.jpg,cat|traffic light,x\nimgs/b.jpg,,y\nimgs/c.jpg,dog|cat,z\n")
    t = load_csv(path, tmp_path)
    assert t.class_names == ["cat", "dog", "traffic light"]
    np.testing.assert_array_equal(t.labels, [[1, 0, 1], [0, 0, 0], [1, 1, 0]])
    assert t.paths[2] == tmp_path.absolute() / "imgs" / "c.jpg"
    assert t.image_ids == ["imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg"]


def test_csv_space_separator_and_given_class_names(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("labels,path\ncat dog,a.jpg\n  ,b.jpg\ndog,c.jpg\n")
    t = load_csv(path, tmp_path, class_names=["dog", "bird", "cat"])
    np.testing.assert_array_equal(t.labels, [[1, 0, 1], [0, 0, 0], [1, 0, 0]])
    explicit = load_csv(path, tmp_path, separator=" ")
    assert explicit.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(explicit.labels, [[1, 1], [0, 0], [0, 1]])


def test_csv_unknown_label_gives_row(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("path,labels\na.jpg,cat\nb.jpg,cat|emu\n")
    with pytest.raises(DataFormatError) as err:
        load_csv(path, tmp_path, class_names=["cat", "dog"])
    assert err.value.field == "labels" and "row 2 (line 3)" in err.value.problem and "'emu'" in err.value.problem


@pytest.mark.parametrize(("header", "column"), [("file,labels", "path"), ("path,tags", "labels")])
def test_csv_missing_column(tmp_path: Path, header: str, column: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text(f"{header}\na.jpg,cat\n")
    with pytest.raises(DataFormatError) as err:
        load_csv(path, tmp_path)
    assert err.value.path == str(path) and err.value.field == column


def test_csv_registry(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("path,labels\nx/a.png,sun\n")
    t = load_split("csv", tmp_path, "train")
    assert t.paths == [tmp_path.absolute() / "x" / "a.png"] and t.class_names == ["sun"]
    assert {"coco", "voc", "nuswide", "csv"} <= set(DATASETS.list())
