"""Contextual bias (`mlic.studies.context_bias`, `mlic.plots.context_bias`): hand-computed biases and rates,
scikit-learn's AP on the exclusive and co-occur subsets, one planted label structure read through every reader."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from mlic import plots
from mlic.core.config import RunConfig
from mlic.core.io import atomic_save_npz, atomic_write_json
from mlic.data import load_split
from mlic.runs import Run
from mlic.studies import context_bias as cb
from tests.test_readers import _voc_object, _write_json, _write_voc

matplotlib.use("Agg")

# Six images, classes 0 (b), 1 (z), 2 (w); the score of class 0 per image.
#            b  z  w    score of b
HAND = np.array([[1, 1, 0],  # 0.9
                 [1, 1, 1],  # 0.7
                 [1, 0, 1],  # 0.4
                 [1, 0, 0],  # 0.2
                 [0, 1, 0],  # 0.6
                 [0, 0, 1]])  # 0.1
HAND_B = np.array([0.9, 0.7, 0.4, 0.2, 0.6, 0.1])


def _hand_scores() -> np.ndarray:
    scores = np.full(HAND.shape, 0.5)
    scores[:, 0] = HAND_B
    return scores


# ------------------------------------------------------------------------------------------------------- biased pairs
def test_bias_is_the_ratio_of_mean_scores_with_and_without_z() -> None:
    bias = cb.bias_matrix(_hand_scores(), HAND)
    # b with z: images 0, 1 (mean 0.8); b without z: images 2, 3 (mean 0.3)
    assert bias[0, 1] == pytest.approx(0.8 / 0.3)
    # b with w: images 1, 2 (mean 0.55); b without w: images 0, 3 (mean 0.55)
    assert bias[0, 2] == pytest.approx(1.0)
    assert np.isnan(np.diag(bias)).all()
    # z (class 1) scored 0.5 everywhere: bias 1 wherever both sets are non-empty
    assert bias[1, 0] == pytest.approx(1.0) and bias[1, 2] == pytest.approx(1.0)


def test_bias_is_undefined_without_images_of_one_side() -> None:
    labels = np.array([[1, 1], [1, 1], [0, 0]])
    bias = cb.bias_matrix(np.full(labels.shape, 0.5), labels)
    assert np.isnan(bias[0, 1])  # b never appears without z


def test_bias_mask_drops_unknown_entries() -> None:
    mask = np.ones(HAND.shape, dtype=bool)
    mask[3, 0] = False  # b unknown on image 3: without z only image 2 (0.4) remains
    mask[1, 1] = False  # z unknown on image 1: with z only image 0 (0.9) remains
    bias = cb.bias_matrix(_hand_scores(), HAND, mask=mask)
    assert bias[0, 1] == pytest.approx(0.9 / 0.4)


def test_cooccurrence_share_is_p_z_given_b() -> None:
    share = cb.cooccurrence_share(HAND)
    assert share[0, 1] == pytest.approx(2 / 4) and share[0, 2] == pytest.approx(2 / 4)
    assert share[1, 0] == pytest.approx(2 / 3) and share[2, 1] == pytest.approx(1 / 3)
    assert np.isnan(np.diag(share)).all()
    assert np.isnan(cb.cooccurrence_share(np.array([[1, 0], [1, 0]]))[1]).all()  # class 1 has no image


def test_label_only_ranking_takes_the_most_frequent_companion_and_sorts() -> None:
    # a (0) is with b in 3 of its 4 images, with c in 1; b with a in 3 of 4, with c in 2; c with b in 2 of 2, with
    # a in 1; d (3) has no image
    labels = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    pairs = cb.biased_pairs(labels, class_names=["a", "b", "c", "d"])
    assert pairs.attrs["ranking"] == "labels"
    assert list(zip(pairs["b_name"], pairs["z_name"])) == [("c", "b"), ("a", "b"), ("b", "a")]  # ties: lower b first
    np.testing.assert_allclose(pairs["bias"], [1.0, 3 / 4, 3 / 4])
    np.testing.assert_allclose(pairs["bias"], pairs["share"])
    assert list(cb.biased_pairs(labels, k=1)["b"]) == [2]
    # a companion must be in at least min_share of b's training images: at 0.8 only c keeps one
    assert list(cb.biased_pairs(labels, min_share=0.8)["b"]) == [2]


def test_score_ranking_picks_the_largest_bias_among_frequent_companions() -> None:
    # training labels: b (0) with z (1) in 50 % of its images, with w (2) in 50 %, with r (3) in 5 %
    train = np.zeros((40, 4), dtype=int)
    train[:20, 0] = 1
    train[:10, 1] = 1
    train[10:20, 2] = 1
    train[0, 3] = 1
    train[20:, 1:3] = 1  # z and w also appear without b
    # scored images: b's score rises with w (0.7 with, 0.3 without), not with z, and is highest with r
    held = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1], [0, 1, 1, 0]])
    scores = np.full(held.shape, 0.5)
    scores[:, 0] = [0.3, 0.7, 0.7, 0.3, 1.0, 0.1]
    pairs = cb.biased_pairs(train, scores=scores, scored_labels=held, min_share=0.1)
    first = pairs[pairs["b"] == 0].iloc[0]
    # bias(b, w) = mean(0.7, 0.7) / mean(0.3, 0.3, 1.0); bias(b, z) = 0.5 / 0.667 < 1; r is with b in only 5 % of
    # b's training images
    assert first["z"] == 2 and first["bias"] == pytest.approx(0.7 / (1.6 / 3))
    assert first["share"] == pytest.approx(0.5)
    assert pairs.attrs["ranking"] == "scores"
    with_r = cb.biased_pairs(train, scores=scores, scored_labels=held, min_share=0.05)
    assert with_r.loc[with_r["b"] == 0, "z"].item() == 3
    assert with_r.loc[with_r["b"] == 0, "bias"].item() == pytest.approx(1.0 / 0.5)  # mean(0.3, 0.7, 0.7, 0.3)


def test_biased_pairs_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="min_share"):
        cb.biased_pairs(HAND, min_share=0.0)
    with pytest.raises(ValueError, match="class names"):
        cb.biased_pairs(HAND, class_names=["a"])
    with pytest.raises(ValueError, match="shape"):
        cb.biased_pairs(HAND, scores=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="0/1"):
        cb.biased_pairs(HAND * 2)


def test_pairs_in_planted_groups() -> None:
    pairs = pd.DataFrame({"b": [0, 1, 2, 4], "z": [1, 0, 3, 0]})
    groups = [[0, 1], [2, 4], [3]]
    np.testing.assert_array_equal(cb.in_same_group(pairs, groups), [True, True, False, False])
    assert cb.share_in_groups(pairs, groups) == 50.0
    assert np.isnan(cb.share_in_groups(pairs, None))
    marked = cb.with_groups(pairs, groups)
    assert list(marked["in_group"]) == [True, True, False, False] and cb.with_groups(pairs, None) is pairs


# ----------------------------------------------------------------------------------------- exclusive vs co-occur AP
def test_exclusive_and_cooccur_ap_by_hand() -> None:
    frame = cb.exclusive_cooccur_ap(_hand_scores(), HAND, [(0, 1)])
    # exclusive: positives 2 (0.4), 3 (0.2); negatives 4 (0.6), 5 (0.1): ranking 0.6-, 0.4+, 0.2+, 0.1-
    assert frame["exclusive_AP"].item() == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    # co-occur: positives 0 (0.9), 1 (0.7); the same negatives: ranking 0.9+, 0.7+, 0.6-, 0.1-
    assert frame["cooccur_AP"].item() == pytest.approx(100.0)
    assert frame["exclusive_images"].item() == 2 and frame["cooccur_images"].item() == 2


def _random_case(seed: int = 0, n: int = 300, c: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.35).astype(int)
    scores = np.clip(0.5 * labels + rng.random((n, c)) * 0.7, 0, 1)
    return scores, labels


def _sklearn_pair_ap(scores: np.ndarray, labels: np.ndarray, b: int, z: int) -> tuple[float, float]:
    exclusive = (labels[:, b] == 1) & (labels[:, z] == 0)
    cooccur = (labels[:, b] == 1) & (labels[:, z] == 1)
    other = labels[:, b] == 0
    return (100 * average_precision_score(labels[exclusive | other, b], scores[exclusive | other, b]),
            100 * average_precision_score(labels[cooccur | other, b], scores[cooccur | other, b]))


def test_exclusive_cooccur_ap_matches_scikit_learn_on_the_subsets() -> None:
    scores, labels = _random_case()
    pairs = [(0, 1), (2, 5), (4, 3), (1, 0)]
    frame = cb.exclusive_cooccur_ap(scores, labels, pairs)
    for row, (b, z) in zip(frame.itertuples(), pairs):
        exclusive, cooccur = _sklearn_pair_ap(scores, labels, b, z)
        assert (row.b, row.z) == (b, z)
        assert row.exclusive_AP == pytest.approx(exclusive) and row.cooccur_AP == pytest.approx(cooccur)


def test_rows_give_the_ap_of_a_bootstrap_resample() -> None:
    scores, labels = _random_case(1)
    rows = np.random.default_rng(5).integers(0, len(labels), len(labels))  # with repeats
    frame = cb.exclusive_cooccur_ap(scores, labels, [(0, 1), (3, 2)], rows=rows)
    for row, (b, z) in zip(frame.itertuples(), [(0, 1), (3, 2)]):
        exclusive, cooccur = _sklearn_pair_ap(scores[rows], labels[rows], b, z)
        assert row.exclusive_AP == pytest.approx(exclusive) and row.cooccur_AP == pytest.approx(cooccur)
    summary = cb.mean_pair_ap(scores, labels, [(0, 1), (3, 2)], rows=rows)
    assert summary["exclusive_AP"] == pytest.approx(frame["exclusive_AP"].mean())
    assert summary["gap"] == pytest.approx(frame["cooccur_AP"].mean() - frame["exclusive_AP"].mean())


def test_mask_drops_images_as_if_they_were_absent() -> None:
    scores, labels = _random_case(2)
    mask = np.ones(labels.shape, dtype=bool)
    mask[:40, 0] = False  # b unknown: these images count for no pair of b
    mask[40:60, 1] = False  # z unknown: images with b drop out, images without b stay negatives
    frame = cb.exclusive_cooccur_ap(scores, labels, [(0, 1)], mask=mask)
    keep = np.ones(len(labels), dtype=bool)
    keep[:40] = False
    keep[40:60] = labels[40:60, 0] == 0
    exclusive, cooccur = _sklearn_pair_ap(scores[keep], labels[keep], 0, 1)
    # the kept images without b include some whose z is unknown: the sklearn subsets must count them as "other"
    assert frame["exclusive_AP"].item() == pytest.approx(exclusive)
    assert frame["cooccur_AP"].item() == pytest.approx(cooccur)


def test_pairs_table_names_are_carried_and_bad_pairs_rejected() -> None:
    pairs = cb.biased_pairs(HAND, class_names=["b", "z", "w"], k=1)
    frame = cb.exclusive_cooccur_ap(_hand_scores(), HAND, pairs)
    assert {"b_name", "z_name"} <= set(frame.columns)
    with pytest.raises(ValueError, match="outside"):
        cb.exclusive_cooccur_ap(_hand_scores(), HAND, [(0, 7)])
    with pytest.raises(ValueError, match="differ"):
        cb.exclusive_cooccur_ap(_hand_scores(), HAND, [(1, 1)])


# ----------------------------------------------------------------------------------------- conditional false positives
def test_conditional_false_positives_by_hand() -> None:
    labels = np.array([[0, 1], [0, 1], [0, 1], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [1, 1]])
    scores = np.zeros(labels.shape)
    scores[:, 0] = [0.9, 0.8, 0.6, 0.2, 0.7, 0.1, 0.1, 0.1, 0.1, 0.9]
    frame = cb.conditional_false_positives(scores, labels, [(0, 1)], thresholds=0.5)
    # without b, with z: images 0-3, three of them at 0.5 or more; both absent: images 4-8, one predicted
    assert frame["fp_rate_with_z"].item() == pytest.approx(75.0)
    assert frame["fp_rate_without_z"].item() == pytest.approx(20.0)
    assert frame["fp_ratio"].item() == pytest.approx(3.75)
    assert (frame["images_with_z"].item(), frame["images_without_z"].item()) == (4, 5)
    per_class = cb.conditional_false_positives(scores, labels, [(0, 1)], thresholds=[0.85, 0.5])
    assert per_class["fp_rate_with_z"].item() == pytest.approx(25.0)
    assert per_class["fp_rate_without_z"].item() == pytest.approx(0.0) and np.isnan(per_class["fp_ratio"].item())


# ----------------------------------------------------------------------------------------------- head / medium / tail
def test_frequency_bands_rules() -> None:
    counts = np.array([150, 100, 101, 20, 19, 50])
    np.testing.assert_array_equal(cb.frequency_bands(counts, rule="counts"),
                                  ["head", "medium", "head", "medium", "tail", "medium"])
    np.testing.assert_array_equal(cb.frequency_bands(counts, rule="terciles"),
                                  ["head", "medium", "head", "tail", "tail", "medium"])
    np.testing.assert_array_equal(cb.frequency_bands(counts), cb.frequency_bands(counts, rule="counts"))
    small = np.array([300, 250, 400, 500, 120, 220])  # every class > 100: counts would leave two bands empty
    assert cb.band_rule_used(small) == "terciles"
    np.testing.assert_array_equal(cb.frequency_bands(small), ["medium", "medium", "head", "head", "tail", "tail"])
    np.testing.assert_array_equal(cb.frequency_bands(counts, rule="counts", many=50, few=50),
                                  ["head", "head", "head", "tail", "tail", "medium"])
    with pytest.raises(ValueError, match="band rule"):
        cb.frequency_bands(counts, rule="quartiles")


def test_band_ap_is_the_mean_sklearn_ap_of_each_band() -> None:
    scores, labels = _random_case(3, c=6)
    counts = np.array([150, 100, 101, 20, 19, 50])
    frame = cb.band_ap(scores, labels, counts, rule="counts").set_index("band")
    ap = [100 * average_precision_score(labels[:, c], scores[:, c]) for c in range(6)]
    assert frame.loc["head", "mAP"] == pytest.approx(np.mean([ap[0], ap[2]]))
    assert frame.loc["medium", "mAP"] == pytest.approx(np.mean([ap[1], ap[3], ap[5]]))
    assert frame.loc["tail", "mAP"] == pytest.approx(ap[4])
    assert frame.loc["medium", "classes"] == 3 and frame.loc["medium", "min_train_images"] == 20
    assert frame.loc["medium", "max_train_images"] == 100


# ------------------------------------------------------------------------------------------ every reader, unchanged
# One planted structure: "dog" comes with "person" in 80 % of its images; a context-biased model scores dog
# higher where a person is. Written in each dataset's own format, read by its reader.
PLANTED_CLASSES = ["cat", "dog", "person", "sofa"]


def _planted_labels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 4), dtype=np.uint8)
    labels[:, 1] = rng.random(n) < 0.4
    labels[:, 2] = np.where(labels[:, 1] == 1, rng.random(n) < 0.8, rng.random(n) < 0.2)
    labels[:, 0] = rng.random(n) < 0.3
    labels[:, 3] = np.where(labels[:, 0] == 1, rng.random(n) < 0.5, rng.random(n) < 0.1)
    labels[labels.sum(axis=1) == 0, 3] = 1  # every image has an object (VOC and COCO list objects)
    return labels


def _write_format(fmt: str, root: Path, split: str, labels: np.ndarray) -> tuple[str, dict]:
    """Write `labels` (columns `PLANTED_CLASSES`) as `split` of a dataset in format `fmt`; (reader, options)."""
    names = [f"img{i:04d}" for i in range(len(labels))]
    if fmt == "csv":
        rows = ["path,labels"] + [f"{n}.jpg," + "|".join(PLANTED_CLASSES[c] for c in np.flatnonzero(r))
                                  for n, r in zip(names, labels)]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
        return "csv", {"class_names": PLANTED_CLASSES}
    if fmt == "coco":
        offset = 0 if split == "train" else 100000
        images = [{"id": offset + i, "file_name": f"{n}.jpg", "width": 64, "height": 64} for i, n in enumerate(names)]
        annotations = [{"id": int(len(labels) * c + i + 1), "image_id": offset + i, "category_id": int(c + 1),
                        "bbox": [0, 0, 8, 8], "iscrowd": 0, "area": 64}
                       for i, row in enumerate(labels) for c in np.flatnonzero(row)]
        categories = [{"id": c + 1, "name": name} for c, name in enumerate(PLANTED_CLASSES)]
        _write_json(root / "annotations" / f"instances_{split}.json",
                    {"images": images, "annotations": annotations, "categories": categories})
        return "coco", {"class_order": "id"}
    if fmt == "voc":
        voc = root  # the devkit's year folder
        images = {f"{split}{i:05d}": [_voc_object(PLANTED_CLASSES[c], 0) for c in np.flatnonzero(row)]
                  for i, row in enumerate(labels)}
        _write_voc(voc, images)
        (voc / "ImageSets" / "Main" / "trainval.txt").rename(voc / "ImageSets" / "Main" / f"{split}.txt")
        return "voc", {}
    if fmt == "nuswide":
        kind = {"train": "Train", "test": "Test"}[split]
        (root / "ImageList").mkdir(parents=True, exist_ok=True)
        gt = root / "Groundtruth" / "TrainTestLabels"
        gt.mkdir(parents=True, exist_ok=True)
        (root / "Concepts81.txt").write_text("\n".join(PLANTED_CLASSES) + "\n")
        (root / "ImageList" / f"{kind}Imagelist.txt").write_text(
            "".join(f"scene\\{split}_{n}.jpg\r\n" for n in names))
        for c, name in enumerate(PLANTED_CLASSES):
            (gt / f"Labels_{name}_{kind}.txt").write_text("".join(f"{v}\n" for v in labels[:, c]))
        return "nuswide", {}
    raise AssertionError(fmt)


def _context_biased_scores(labels: np.ndarray, seed: int) -> np.ndarray:
    """Scores that see each label a little and lean on "person" for "dog"."""
    rng = np.random.default_rng(seed)
    scores = 0.25 + 0.35 * labels + 0.3 * rng.random(labels.shape)
    scores[:, 1] += 0.3 * labels[:, 2] - 0.15
    return np.clip(scores, 0.01, 0.99)


@pytest.mark.parametrize("fmt", ["csv", "coco", "voc", "nuswide"])
def test_every_reader_gives_the_same_pairs_and_aps(fmt: str, tmp_path: Path) -> None:
    train, test = _planted_labels(400, 0), _planted_labels(300, 1)
    reader, options = _write_format(fmt, tmp_path, "train", train)
    _write_format(fmt, tmp_path, "test", test)
    train_table = load_split(reader, tmp_path, "train", **options)
    test_table = load_split(reader, tmp_path, "test", **options)
    # the reader's column order (VOC: its 20 standard classes) mapped onto the planted columns
    columns = [train_table.class_names.index(name) for name in PLANTED_CLASSES]
    np.testing.assert_array_equal(train_table.labels[:, columns], train)
    np.testing.assert_array_equal(test_table.labels[:, columns], test)
    scores = np.full(test_table.labels.shape, 0.05)
    scores[:, columns] = _context_biased_scores(test, 2)

    label_pairs = cb.biased_pairs(train_table.labels, k=4, class_names=train_table.class_names)
    score_pairs = cb.biased_pairs(train_table.labels, k=4, scores=scores, scored_labels=test_table.labels,
                                  scored_mask=test_table.evaluation_mask(), class_names=train_table.class_names)
    assert ("dog", "person") in set(zip(label_pairs["b_name"], label_pairs["z_name"]))
    assert (score_pairs.loc[0, "b_name"], score_pairs.loc[0, "z_name"]) == ("dog", "person")
    frame = cb.exclusive_cooccur_ap(scores, test_table.labels, score_pairs.head(1),
                                    mask=test_table.evaluation_mask())
    expected = _sklearn_pair_ap(scores[:, columns], test, 1, 2)
    assert frame["exclusive_AP"].item() == pytest.approx(expected[0])
    assert frame["cooccur_AP"].item() == pytest.approx(expected[1])
    assert frame["exclusive_AP"].item() < frame["cooccur_AP"].item()
    bands = cb.band_ap(scores, test_table.labels, train_table.label_frequencies(), mask=test_table.evaluation_mask())
    assert bands["classes"].sum() == len(train_table.class_names)


def test_voc_difficult_objects_are_unknown_for_the_pairs(tmp_path: Path) -> None:
    voc = tmp_path  # the devkit's year folder
    images = {"000001": [_voc_object("dog", 0), _voc_object("person", 1)],  # z difficult: in neither subset
              "000002": [_voc_object("dog", 0), _voc_object("person", 0)],
              "000003": [_voc_object("dog", 0)],
              "000004": [_voc_object("dog", 1)],  # b difficult: in no subset
              "000005": [_voc_object("person", 0)],
              "000006": [_voc_object("cat", 0)]}
    _write_voc(voc, images)
    table = load_split("voc", tmp_path, "trainval")
    dog, person = table.class_names.index("dog"), table.class_names.index("person")
    frame = cb.exclusive_cooccur_ap(np.full(table.labels.shape, 0.5), table.labels, [(dog, person)],
                                    mask=table.evaluation_mask())
    assert frame["exclusive_images"].item() == 1 and frame["cooccur_images"].item() == 1


# ------------------------------------------------------------------------------------------------------------- runs
def _fake_run(folder: Path, scores: np.ndarray, targets: np.ndarray, ids: list[str], names: list[str],
              data_root: Path, split: str = "test") -> Path:
    RunConfig.from_dict({"data": {"dataset": "csv", "root": str(data_root), "train_split": "train",
                                  "options": {"class_names": names}},
                         "output_dir": str(folder)}).to_yaml(Run(folder).config_file)
    atomic_save_npz(Run(folder).predictions_file(split), scores=scores, targets=targets, image_ids=np.asarray(ids),
                    class_names=np.asarray(names))
    return folder


def test_load_predictions_aligns_runs_by_image_id_and_reads_the_training_split(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("path,labels\na.jpg,x|y\nb.jpg,y\nc.jpg,x\n")
    scores, targets = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]), np.array([[1, 0], [0, 1], [1, 1]])
    ids, names = ["i1", "i2", "i3"], ["x", "y"]
    first = _fake_run(tmp_path / "a", scores, targets, ids, names, tmp_path / "data")
    order = [2, 0, 1]
    second = _fake_run(tmp_path / "b", scores[order] + 1, targets[order], [ids[i] for i in order], names,
                       tmp_path / "data")
    loaded = cb.load_predictions({"a": str(first), "b": str(second), "teachers": [str(first)]}, "test")
    assert loaded.methods == ["a", "b"]
    np.testing.assert_allclose(loaded.scores["b"], scores + 1)
    np.testing.assert_array_equal(loaded.targets, targets)
    assert cb.saved_split({"a": str(first)}, ["val", "test"]) == "test"
    with pytest.raises(FileNotFoundError, match="val"):
        cb.saved_split({"a": str(first)}, ["val"])
    table = cb.train_table(first)
    np.testing.assert_array_equal(table.labels, [[1, 1], [0, 1], [1, 0]])
    bad = _fake_run(tmp_path / "c", scores, targets, ["i1", "i2", "other"], names, tmp_path / "data")
    with pytest.raises(ValueError, match=str(bad)):
        cb.load_predictions({"a": str(first), "c": str(bad)}, "test")


def test_thresholds_fixed_from_the_run_or_tuned(tmp_path: Path) -> None:
    scores, targets = np.array([[0.2, 0.9], [0.6, 0.1], [0.7, 0.8]]), np.array([[0, 1], [1, 0], [1, 1]])
    run = _fake_run(tmp_path / "a", scores, targets, ["1", "2", "3"], ["x", "y"], tmp_path)
    loaded = cb.load_predictions({"a": str(run)}, "test")
    np.testing.assert_allclose(cb.method_thresholds(loaded, default=0.3)["a"], [0.3, 0.3])
    np.testing.assert_allclose(cb.method_thresholds(loaded, source="run", default=0.3)["a"], [0.3, 0.3])
    atomic_write_json(Run(run).thresholds_file, {"split": "train", "thresholds": {"y": 0.8, "x": 0.4}})
    np.testing.assert_allclose(cb.method_thresholds(loaded, source="run")["a"], [0.4, 0.8])
    tuned = cb.method_thresholds(loaded, source="tuned", tuning=loaded)["a"]
    np.testing.assert_allclose(tuned, [0.6, 0.8])  # the highest thresholds that keep every positive
    with pytest.raises(ValueError, match="tune on"):
        cb.method_thresholds(loaded, source="tuned")
    with pytest.raises(ValueError, match="threshold source"):
        cb.method_thresholds(loaded, source="median")


def test_evaluate_methods_and_record_schema(tmp_path: Path) -> None:
    scores, labels = _random_case(4)
    pairs = pd.DataFrame({"b": [0, 2], "z": [1, 3]})
    predictions = cb.Predictions(split="test", scores={"m1": scores, "m2": scores[:, ::-1].copy()}, targets=labels,
                                 image_ids=np.arange(len(labels)), class_names=list("abcdef"))
    result = cb.evaluate_methods(predictions, pairs, np.array([150, 100, 101, 20, 19, 50]), band_rule="counts")
    summary = result["summary"].set_index("method")
    assert summary.loc["m1", "exclusive_AP"] == pytest.approx(
        np.mean([_sklearn_pair_ap(scores, labels, 0, 1)[0], _sklearn_pair_ap(scores, labels, 2, 3)[0]]))
    assert list(result["pair_ap"]["method"]) == ["m1", "m1", "m2", "m2"]
    assert result["bands"].attrs["rule"] == "counts"
    recorded = cb.method_metrics(result["summary"], "test")
    assert set(recorded) == {"m1", "m2"} and recorded["m1"]["test"]["tail_mAP"] == pytest.approx(
        summary.loc["m1", "tail_mAP"])
    json.dumps(recorded)
    top = cb.headline(result["summary"], "m2", "test", pairs_in_group={"label_pairs_in_group": 95.0,
                                                                     "score_pairs_in_group": float("nan")})
    assert top["test"]["label_pairs_in_group"] == 95.0 and "score_pairs_in_group" not in top["test"]
    assert top["test"]["gap"] == pytest.approx(summary.loc["m2", "gap"])
    assert cb.reference_method(["cpsd", "baseline"]) == "baseline" and cb.reference_method(["a", "b"]) == "a"
    with pytest.raises(ValueError, match="not among"):
        cb.reference_method(["a"], "b")


# ------------------------------------------------------------------------------------------------------------ figures
def test_biased_pairs_figure_shows_each_pair_and_its_bias() -> None:
    pairs = pd.DataFrame({"b": [0, 2], "z": [1, 3], "b_name": ["dog", "cup"], "z_name": ["person", "table"],
                          "bias": [2.5, 1.4], "in_group": [True, False]})
    pairs.attrs["ranking"] = "scores"
    fig = plots.biased_pairs_bars(pairs)
    ax = fig.axes[0]
    bars = sorted(ax.patches, key=lambda p: -p.get_y())  # top bar first
    assert [round(b.get_width(), 6) for b in bars] == [2.5, 1.4]
    position = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    assert position["dog | person"] > position["cup | table"]  # the most biased pair on top
    assert bars[0].get_facecolor() != bars[1].get_facecolor()
    assert "50 %" in ax.get_legend().get_texts()[0].get_text()
    assert "bias(b, z)" in ax.get_xlabel()
    matplotlib.pyplot.close(fig)


def test_exclusive_vs_cooccur_figure_bars_and_gaps() -> None:
    summary = pd.DataFrame({"method": ["baseline", "cpsd"], "exclusive_AP": [30.0, 40.0], "cooccur_AP": [60.0, 55.0]})
    fig = plots.exclusive_vs_cooccur(summary)
    ax = fig.axes[0]
    heights = sorted((round(p.get_x(), 3), p.get_height()) for p in ax.patches)
    assert [h for _, h in heights] == [30.0, 60.0, 40.0, 55.0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["gap +15.0", "gap +30.0"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline", "cpsd"]
    matplotlib.pyplot.close(fig)


def test_conditional_fpr_figure_one_panel_per_method() -> None:
    frame = pd.DataFrame({"method": ["a", "a", "b", "b"], "b": [0, 2, 0, 2], "z": [1, 3, 1, 3],
                          "fp_rate_with_z": [70.0, 20.0, 40.0, 10.0], "fp_rate_without_z": [10.0, 5.0, 9.0, 4.0]})
    fig = plots.conditional_fpr(frame)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    widths = sorted(p.get_width() for p in fig.axes[1].patches)
    assert widths == [4.0, 9.0, 10.0, 40.0]
    position = {t.get_text(): y for t, y in zip(fig.axes[0].get_yticklabels(), fig.axes[0].get_yticks())}
    assert position["0 | 1"] > position["2 | 3"]  # pairs top to bottom in table order
    assert {round(p.get_width(), 6) for p in fig.axes[0].patches
            if abs(p.get_y() + p.get_height() / 2 - position["0 | 1"]) < 0.5} == {70.0, 10.0}
    matplotlib.pyplot.close(fig)


def test_band_figure_heights_and_tick_labels() -> None:
    bands = pd.DataFrame({"method": ["m"] * 3, "band": ["head", "medium", "tail"], "classes": [2, 3, 1],
                          "min_train_images": [101, 20, 19], "max_train_images": [150, 100, 19],
                          "mAP": [80.0, 60.0, 30.0]})
    fig = plots.band_ap_bars(bands)
    ax = fig.axes[0]
    assert [p.get_height() for p in sorted(ax.patches, key=lambda p: p.get_x())] == [80.0, 60.0, 30.0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[1] == "medium\n3 classes\n20–100 images"
    matplotlib.pyplot.close(fig)
