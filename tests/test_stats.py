"""Statistics over runs: aggregation over seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlic.stats import over_seeds


def test_over_seeds_matches_numpy_and_keeps_first_appearance_order() -> None:
    frame = pd.DataFrame({"head": ["b", "a", "b", "a", "b", "c"], "mAP": [1.0, 10.0, 3.0, 14.0, 8.0, 5.0],
                          "other": [0.0, 1.0, np.nan, 2.0, np.nan, np.nan]})
    out = over_seeds(frame, "head", ["mAP", "other"]).set_index("head")
    assert list(out.index) == ["b", "a", "c"]
    assert out.loc["b", "mAP_mean"] == 4.0 and np.isclose(out.loc["b", "mAP_std"], np.std([1, 3, 8], ddof=1))
    assert out.loc["c", "mAP_std"] == 0.0 and out.loc["c", "seeds"] == 1  # one seed: std 0
    assert np.isnan(out.loc["c", "other_std"])  # no value at all: NaN, not 0
    assert out.loc["a", "mAP"] == "12.00 ± 2.83"
    assert "mAP" not in over_seeds(frame, ["head"], ["mAP"], text=False).columns


def _scores(rng: np.random.Generator, targets: np.ndarray, signal: float) -> np.ndarray:
    """Scores that separate positives from negatives by `signal` standard deviations."""
    return 1 / (1 + np.exp(-(signal * targets + rng.normal(size=targets.shape))))


def _targets(rng: np.random.Generator, n: int = 300, c: int = 6) -> np.ndarray:
    targets = (rng.random((n, c)) < 0.3).astype(np.uint8)
    targets[0] = 1
    return targets


def test_identical_models_give_a_zero_interval_and_swapping_negates() -> None:
    from mlic.stats import paired_bootstrap

    rng = np.random.default_rng(0)
    targets = _targets(rng)
    a, b = _scores(rng, targets, 2.0), _scores(rng, targets, 1.0)
    same = paired_bootstrap(a, a, targets, n_boot=200)
    assert same["delta"] == same["ci_low"] == same["ci_high"] == 0.0
    ab, ba = paired_bootstrap(a, b, targets, n_boot=200, seed=3), paired_bootstrap(b, a, targets, n_boot=200, seed=3)
    assert ab["delta"] == pytest.approx(-ba["delta"]) and ab["ci_low"] == pytest.approx(-ba["ci_high"])
    assert ab["ci_high"] == pytest.approx(-ba["ci_low"])


def test_a_strictly_better_model_has_its_whole_interval_above_zero() -> None:
    from sklearn.metrics import average_precision_score

    from mlic.stats import paired_bootstrap

    rng = np.random.default_rng(1)
    targets = _targets(rng)
    better, worse = _scores(rng, targets, 2.5), _scores(rng, targets, 0.8)
    out = paired_bootstrap(better, worse, targets, n_boot=300, metric="mAP")
    expected = 100 * (np.mean([average_precision_score(targets[:, c], better[:, c]) for c in range(6)])
                      - np.mean([average_precision_score(targets[:, c], worse[:, c]) for c in range(6)]))
    assert out["delta"] == pytest.approx(expected, abs=1.0)  # noninterpolated AP ~ scikit-learn's (no ties here)
    assert 0 < out["ci_low"] < out["delta"] < out["ci_high"]
    f1 = paired_bootstrap(better, worse, targets, n_boot=200, metric="OF1")
    assert f1["ci_low"] > 0


def test_the_seed_interval_is_the_student_t_interval_of_the_paired_differences() -> None:
    from scipy import stats as st

    from mlic.stats import seed_interval

    a, b = [71.0, 72.5, 70.2], [69.0, 71.0, 69.9]
    diff = np.subtract(a, b)
    half = st.t.ppf(0.975, 2) * diff.std(ddof=1) / np.sqrt(3)
    out = seed_interval(a, b)
    assert out["delta"] == pytest.approx(diff.mean()) and out["n_seeds"] == 3
    assert out["ci_low"] == pytest.approx(diff.mean() - half) and out["ci_high"] == pytest.approx(diff.mean() + half)
    one = seed_interval([70.0], [69.0])
    assert one["delta"] == 1.0 and np.isnan(one["ci_low"]) and np.isnan(one["ci_high"])


def test_hierarchical_bootstrap_sees_seed_noise_that_images_alone_do_not() -> None:
    from mlic.stats import hierarchical_bootstrap, paired_bootstrap

    rng = np.random.default_rng(2)
    targets = _targets(rng, n=400)
    # a beats b by a steady margin on every seed: the interval excludes 0
    steady_a = [_scores(rng, targets, 2.0) for _ in range(3)]
    steady_b = [_scores(rng, targets, 1.2) for _ in range(3)]
    steady = hierarchical_bootstrap(steady_a, steady_b, targets, n_boot=150)
    assert steady["ci_low"] > 0 and steady["n_seeds"] == 3 and len(steady["per_seed"]) == 3
    assert steady["delta"] == pytest.approx(np.mean(steady["per_seed"]))
    # the seeds disagree (one better, one worse): each seed alone looks sure, the claim over seeds is not
    mixed_a = [_scores(rng, targets, 2.4), _scores(rng, targets, 0.8)]
    mixed_b = [_scores(rng, targets, 0.8), _scores(rng, targets, 2.4)]
    first_seed = paired_bootstrap(mixed_a[0], mixed_b[0], targets, n_boot=150)
    assert first_seed["ci_low"] > 0
    mixed = hierarchical_bootstrap(mixed_a, mixed_b, targets, n_boot=150)
    assert mixed["ci_low"] < 0 < mixed["ci_high"]
