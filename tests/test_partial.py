"""Simulated partial labels: one true positive kept per image, never an invented one, seeded, biased by boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlic.data.partial import simulate_observed
from mlic.data.table import LabelledImages
from mlic.studies.single_positive import observed_summary


def _table(labels: np.ndarray, boxes: list[np.ndarray] | None = None, **extras: object) -> LabelledImages:
    n, c = labels.shape
    return LabelledImages(paths=[f"img{i}.png" for i in range(n)], labels=labels,
                          class_names=[f"c{j}" for j in range(c)], boxes=boxes, extras=dict(extras))


def _random_labels(n: int = 300, c: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.3).astype(np.uint8)
    labels[:10] = 0  # a few images without any positive
    return labels


def test_single_positive_keeps_exactly_one_true_positive_and_invents_none() -> None:
    labels = _random_labels()
    table = _table(labels)
    result = simulate_observed(table)
    obs = result.observed
    assert obs is not None and obs.dtype == np.int8
    has_pos = labels.sum(axis=1) > 0
    np.testing.assert_array_equal((obs == 1).sum(axis=1), has_pos.astype(int))  # one each, none without positives
    assert np.all(labels[obs == 1] == 1)  # every observed positive is a true one
    assert not np.any(obs == -1)  # no negatives observed
    np.testing.assert_array_equal(result.labels, labels)  # the truth is untouched
    assert table.observed is None  # the input table is not modified
    summary = observed_summary(result)
    assert summary["invented_positives"] == 0 and summary["images_without_observed_positive"] == (~has_pos).sum() >= 10
    assert summary["observed_pos_per_image"] == pytest.approx(has_pos.mean())
    assert result.extras["partial"] == {"mode": "single_positive", "seed": 1200, "bias": "uniform", "num_pos": 1,
                                        "num_neg": 0}


def test_simulation_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    table = _table(_random_labels())
    first = simulate_observed(table, seed=7).observed
    np.testing.assert_array_equal(first, simulate_observed(table, seed=7).observed)
    assert not np.array_equal(first, simulate_observed(table, seed=8).observed)


def test_uniform_draws_match_the_reference_procedure() -> None:
    # The reference (`generate_observed_labels.py`): one RandomState(seed); per row, shuffle the positives' indices
    # and keep a prefix, then shuffle the negatives' indices (even when none are kept).
    labels = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1], [0, 1, 0, 0, 1]], dtype=np.uint8)
    rng = np.random.RandomState(1200)
    expected = np.zeros(labels.shape, dtype=np.int8)
    for i, row in enumerate(np.where(labels == 1, 1, -1)):
        pos = np.nonzero(row == 1)[0]
        rng.shuffle(pos)
        expected[i, pos[:1]] = 1
        neg = np.nonzero(row == -1)[0]
        rng.shuffle(neg)
    np.testing.assert_array_equal(simulate_observed(_table(labels)).observed, expected)


def test_each_positive_is_equally_likely_under_the_uniform_bias() -> None:
    labels = np.tile(np.array([[1, 1, 1, 0]], dtype=np.uint8), (3000, 1))
    picks = (simulate_observed(_table(labels), seed=3).observed == 1).mean(axis=0)
    np.testing.assert_allclose(picks[:3], 1 / 3, atol=0.03)
    assert picks[3] == 0


def test_pos_neg_mode_observes_the_requested_counts_or_all_available() -> None:
    labels = _random_labels()
    obs = simulate_observed(_table(labels), mode="pos_neg", num_pos=2, num_neg=3).observed
    npos, nneg = labels.sum(axis=1), labels.shape[1] - labels.sum(axis=1)
    np.testing.assert_array_equal((obs == 1).sum(axis=1), np.minimum(npos, 2))
    np.testing.assert_array_equal((obs == -1).sum(axis=1), np.minimum(nneg, 3))
    assert np.all(labels[obs == 1] == 1) and np.all(labels[obs == -1] == 0)
    every = simulate_observed(_table(labels), mode="pos_neg", num_pos=-1, num_neg=0).observed
    np.testing.assert_array_equal(every, labels.astype(np.int8))


def test_hidden_mode_hides_the_exact_fraction_and_shows_the_rest_with_their_sign() -> None:
    labels = _random_labels(n=50, c=10)
    obs = simulate_observed(_table(labels), mode="hidden", hidden_fraction=0.3, seed=1).observed
    assert (obs == 0).sum() == 150  # round(0.3 · 500)
    shown = obs != 0
    np.testing.assert_array_equal(obs[shown], np.where(labels[shown] == 1, 1, -1))


def _two_objects(n: int, first: tuple[float, ...], second: tuple[float, ...]) -> LabelledImages:
    labels = np.tile(np.array([[1, 1, 0]], dtype=np.uint8), (n, 1))
    boxes = [np.array([[0, *first], [1, *second]], dtype=np.float32) for _ in range(n)]
    return _table(labels, boxes, width=np.full(n, 100), height=np.full(n, 100))


def test_size_bias_samples_the_observed_positive_in_proportion_to_box_area() -> None:
    table = _two_objects(4000, (0, 0, 30, 30), (60, 60, 10, 30))  # areas 900 and 300: 3 to 1
    obs = simulate_observed(table, bias="size", seed=5).observed
    assert (obs == 1).sum(axis=1).max() == 1 and (obs == 1).sum() == 4000
    assert (obs[:, 0] == 1).mean() == pytest.approx(0.75, abs=0.025)


def test_loc_bias_samples_in_proportion_to_the_inverse_distance_to_the_centre() -> None:
    # box centres at distance 10 (centre (60, 50)) and 30 (centre (50, 80)) from the image centre (50, 50): 3 to 1
    table = _two_objects(4000, (55, 45, 10, 10), (45, 75, 10, 10))
    obs = simulate_observed(table, bias="loc", seed=5).observed
    assert (obs[:, 0] == 1).mean() == pytest.approx(0.75, abs=0.025)
    centred = _two_objects(200, (45, 45, 10, 10), (0, 0, 10, 10))  # centre exactly on the image centre: no 1/0
    assert (simulate_observed(centred, bias="loc").observed[:, 0] == 1).mean() > 0.99


def test_biased_pick_falls_back_to_uniform_when_no_positive_has_a_box() -> None:
    labels = np.tile(np.array([[1, 1]], dtype=np.uint8), (2000, 1))
    table = _table(labels, [np.zeros((0, 5), dtype=np.float32) for _ in range(2000)])
    obs = simulate_observed(table, bias="size", seed=2).observed
    assert (obs == 1).sum() == 2000 and (obs[:, 0] == 1).mean() == pytest.approx(0.5, abs=0.04)


def test_existing_observed_matrix_restricts_the_sampled_entries() -> None:
    # VOC-style: class 1 is a difficult object (label 0, observed 0); class 0 is known positive
    labels = np.tile(np.array([[1, 0, 0, 1]], dtype=np.uint8), (100, 1))
    known = np.tile(np.array([[1, 0, -1, 0]], dtype=np.int8), (100, 1))  # class 3 positive but not observed
    table = _table(labels)
    table.observed = known
    obs = simulate_observed(table, mode="pos_neg", num_pos=-1, num_neg=-1).observed
    np.testing.assert_array_equal(obs, known)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "bogus"}, "Unknown partial-label mode"),
    ({"bias": "semantic"}, "Unknown label bias"),
    ({"bias": "size"}, "needs object boxes"),
    ({"num_pos": 2}, "exactly one positive"),
    ({"mode": "pos_neg", "num_neg": -2}, "num_neg must be"),
    ({"mode": "hidden"}, "needs hidden_fraction"),
    ({"mode": "hidden", "hidden_fraction": 1.5}, r"\[0, 1\]"),
    ({"hidden_fraction": 0.5}, "applies to mode='hidden' only"),
])
def test_bad_arguments_fail_with_a_clear_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate_observed(_table(_random_labels(n=20)), **kwargs)


def test_loc_bias_needs_image_sizes() -> None:
    table = _two_objects(5, (0, 0, 1, 1), (2, 2, 1, 1))
    table.extras = {}
    with pytest.raises(ValueError, match="width and height"):
        simulate_observed(table, bias="loc")


def test_scenes_training_split_with_size_bias(scenes_root: Path) -> None:
    from mlic.data.sources import load_split

    table = load_split("scenes", str(scenes_root), "train")
    for bias in ("uniform", "size", "loc"):
        result = simulate_observed(table, bias=bias)
        assert result.observed is not None
        np.testing.assert_array_equal((result.observed == 1).sum(axis=1), (table.labels.sum(axis=1) > 0))
        assert np.all(table.labels[result.observed == 1] == 1)
