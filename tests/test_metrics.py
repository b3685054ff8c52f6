"""Tests for mlic.metrics: AP conventions against hand values, scikit-learn and loop references; thresholded metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score
from sklearn.metrics import precision_recall_curve as sk_precision_recall_curve

from mlic import metrics
from mlic.metrics import (
    average_precision,
    evaluate,
    mean_average_precision,
    per_class_table,
    precision_recall_curve,
    tune_thresholds,
)

# --------------------------------------------------------------------------------------------------------------------
# loop references: one class at a time, straight from the formulas (slow, obviously right)
# --------------------------------------------------------------------------------------------------------------------


def ref_noninterp(s: np.ndarray, y: np.ndarray) -> float:
    """Mean over positives of precision at the positive's rank; stable sort, ties in input order."""
    y = y[np.argsort(-s, kind="stable")]
    hits, total = 0, 0.0
    for rank, label in enumerate(y, start=1):
        if label:
            hits += 1
            total += hits / rank
    return total / hits if hits else float("nan")


def ref_voc(s: np.ndarray, y: np.ndarray) -> float:
    """VOC interpolated AP as in Query2Label: pad recall with 0/1 and precision with 0/0, running max from the right."""
    y = y[np.argsort(-s, kind="stable")].astype(float)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    rec = np.concatenate([[0.0], tp / n_pos, [1.0]])
    prec = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1e-12), [0.0]])
    for i in range(len(prec) - 2, -1, -1):
        prec[i] = max(prec[i], prec[i + 1])
    steps = np.nonzero(rec[1:] != rec[:-1])[0]
    return float(np.sum((rec[steps + 1] - rec[steps]) * prec[steps + 1]))


def ref_all(s: np.ndarray, y: np.ndarray, mode: str, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-class loop reference for every mode; masked-out entries are dropped from their column."""
    out = []
    for c in range(s.shape[1]):
        keep = np.ones(len(s), dtype=bool) if mask is None else mask[:, c].astype(bool)
        sc, yc = s[keep, c], y[keep, c]
        if yc.sum() == 0:
            out.append(np.nan)
        elif mode == "noninterp":
            out.append(ref_noninterp(sc, yc))
        elif mode == "voc":
            out.append(ref_voc(sc, yc))
        else:
            out.append(average_precision_score(yc, sc))
    return np.array(out)


def tied_data(seed: int, n: int = 300, c: int = 40, decimals: int = 1, dtype: type = np.float64):
    """Scores rounded to `decimals` (many ties), targets correlated with scores, positive rates from 1% to 60%."""
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.01, 0.6, c)
    y = (rng.random((n, c)) < rates).astype(np.int64)
    s = np.clip(0.35 * y + 0.65 * rng.random((n, c)), 0, 1)
    return np.round(s, decimals).astype(dtype), y


# --------------------------------------------------------------------------------------------------------------------
# average precision
# --------------------------------------------------------------------------------------------------------------------


def test_golden_values_from_reference_doc():
    # Case 1: scores .9 .8 .7 .6 .5 .4, labels 1 0 1 0 0 1. Positives at ranks 1, 3, 6 with 1, 2, 3 hits so far:
    #   noninterp = (1/1 + 2/3 + 3/6) / 3 = (6/6 + 4/6 + 3/6) / 3 = 13/18 = 0.722222.
    #   voc: precision at the ranks is 1, .5, .67, .5, .4, .5; the running max from the right at the positives is
    #   1, 2/3, 1/2 (already falling), each recall step is 1/3, so voc = 13/18 as well.
    # Case 2: scores .9 .8 .7 .6, labels 0 1 1 0: positives at ranks 2, 3 -> noninterp = (1/2 + 2/3) / 2 = 7/12;
    #   voc lifts the precision at rank 2 to max(1/2, 2/3, 2/4) = 2/3 -> voc = (2/3 + 2/3) / 2 = 2/3.
    s1, y1 = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), np.array([1, 0, 1, 0, 0, 1])
    s2, y2 = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 1, 0])
    assert average_precision(s1, y1, mode="noninterp")[0] == pytest.approx(0.722222, abs=1e-6)
    assert average_precision(s2, y2, mode="noninterp")[0] == pytest.approx(0.583333, abs=1e-6)
    assert average_precision(s1, y1, mode="voc")[0] == pytest.approx(0.722222, abs=1e-6)
    assert average_precision(s2, y2, mode="voc")[0] == pytest.approx(0.666667, abs=1e-6)
    assert average_precision(s1, y1, mode="voc")[0] == pytest.approx(13 / 18, abs=1e-15)
    assert average_precision(s2, y2, mode="noninterp")[0] == pytest.approx(7 / 12, abs=1e-15)
    # no ties here, so sklearn's convention agrees with the non-interpolated one
    assert average_precision(s2, y2, mode="sklearn")[0] == pytest.approx(7 / 12, abs=1e-15)

    # both cases as two columns of one matrix; case 2's column is padded and the padding masked out
    s = np.column_stack([s1, np.r_[s2, 0.95, 0.1]])
    y = np.column_stack([y1, np.r_[y2, 1, 1]])
    mask = np.ones_like(y, dtype=bool)
    mask[4:, 1] = False
    np.testing.assert_allclose(average_precision(s, y, mode="noninterp", mask=mask), [13 / 18, 7 / 12], atol=1e-15)
    np.testing.assert_allclose(average_precision(s, y, mode="voc", mask=mask), [13 / 18, 2 / 3], atol=1e-15)
    np.testing.assert_allclose(average_precision(s, y, mode="voc_interp", mask=mask), [13 / 18, 2 / 3], atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sklearn_mode_matches_sklearn_with_many_ties(seed, dtype):
    s, y = tied_data(seed, dtype=dtype)
    got = average_precision(s, y, mode="sklearn")
    want = np.array([average_precision_score(y[:, c], s[:, c]) for c in range(s.shape[1])])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # ties really are present and really matter for the order-based conventions
    assert not np.allclose(got, average_precision(s, y, mode="noninterp"), atol=1e-6)


def test_noninterp_matches_sklearn_without_ties():
    rng = np.random.default_rng(3)
    s = rng.random((500, 30))
    y = (rng.random((500, 30)) < np.linspace(0.02, 0.5, 30)).astype(np.uint8)
    want = np.array([average_precision_score(y[:, c], s[:, c]) for c in range(30)])
    np.testing.assert_allclose(average_precision(s, y, mode="noninterp"), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(average_precision(s, y, mode="sklearn"), want, rtol=0, atol=1e-12)
    # interpolation never lowers AP
    assert np.all(average_precision(s, y, mode="voc") >= want - 1e-12)


@pytest.mark.parametrize("mode", ["noninterp", "voc", "sklearn"])
@pytest.mark.parametrize("decimals", [1, 2, 12])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_modes_match_loop_reference(mode, decimals, dtype):
    s, y = tied_data(10 + decimals, n=250, c=25, decimals=decimals, dtype=dtype)
    np.testing.assert_allclose(average_precision(s, y, mode=mode), ref_all(s, y, mode), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["noninterp", "voc", "sklearn"])
def test_mask_excludes_entries(mode):
    s, y = tied_data(7, n=200, c=20, decimals=2)
    rng = np.random.default_rng(7)
    mask = rng.random(s.shape) > 0.2
    mask[:, 3] = False  # a fully masked class has no positive
    s_garbage = s.copy()
    s_garbage[~mask] = np.nan  # excluded scores are never read
    got = average_precision(s_garbage, y, mode=mode, mask=mask)
    np.testing.assert_allclose(got, ref_all(s, y, mode, mask), rtol=0, atol=1e-12)
    assert np.isnan(got[3])


def test_tie_conventions():
    # one positive and one negative tied at the top
    s = np.array([0.5, 0.5, 0.1])
    assert average_precision(s, np.array([1, 0, 1]), mode="noninterp")[0] == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(s, np.array([0, 1, 1]), mode="noninterp")[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # sklearn groups the tie: precision 1/2 at the group, then 2/3, whatever the order
    for y in ([1, 0, 1], [0, 1, 1]):
        assert average_precision(s, np.array(y), mode="sklearn")[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # hence sklearn mode is invariant to the order of images, noninterp is not (but is deterministic)
    sd, yd = tied_data(5)
    perm = np.random.default_rng(0).permutation(len(sd))
    np.testing.assert_allclose(
        average_precision(sd[perm], yd[perm], mode="sklearn"), average_precision(sd, yd, mode="sklearn"), atol=1e-12
    )
    np.testing.assert_array_equal(average_precision(sd, yd), average_precision(sd, yd))


def test_fast_path_equals_sorted_path():
    s, y = tied_data(11, n=300, c=30, decimals=2)
    mask = np.random.default_rng(11).random(s.shape) > 0.1
    st, yt, mt = metrics._prepare(s, y, mask)
    cols = np.arange(s.shape[1])
    for mode in metrics.AP_MODES:
        np.testing.assert_allclose(
            metrics._ap_fast(st, yt, mt, mode), metrics._ap_sorted(st, yt, mt, cols, mode), rtol=0, atol=1e-12
        )


def test_class_without_positives_is_nan_and_counted():
    s, y = tied_data(4, n=100, c=6)
    y[0] = 1
    y[:, 2] = 0
    y[:, 5] = 0
    for mode in metrics.AP_MODES:
        ap = average_precision(s, y, mode=mode)
        assert np.isnan(ap[[2, 5]]).all() and np.isfinite(ap[[0, 1, 3, 4]]).all()
        res = mean_average_precision(s, y, mode=mode)
        assert res["n_classes_without_positives"] == 2
        assert res["mAP"] == pytest.approx(100 * np.mean(ap[[0, 1, 3, 4]]), abs=1e-12)
        np.testing.assert_allclose(res["ap"], 100 * ap)
    empty = mean_average_precision(s, np.zeros_like(y))
    assert np.isnan(empty["mAP"]) and empty["n_classes_without_positives"] == 6


def test_edge_shapes_and_values():
    assert average_precision(np.array([0.3]), np.array([1]))[0] == 1.0
    assert average_precision(np.zeros((0, 3)), np.zeros((0, 3))).shape == (3,)
    assert average_precision(np.zeros((5, 0)), np.zeros((5, 0))).shape == (0,)
    # infinite scores (e.g. logits) rank fine; all-tied column
    s = np.array([[np.inf, 1.0], [-np.inf, 1.0], [0.0, 1.0]])
    y = np.array([[1, 0], [0, 1], [1, 1]])
    np.testing.assert_allclose(average_precision(s, y, mode="sklearn"), [1.0, 2 / 3])
    np.testing.assert_allclose(average_precision(s, y, mode="noninterp"), [1.0, (1 / 2 + 2 / 3) / 2])
    # boolean targets and uint8 targets are accepted
    np.testing.assert_array_equal(average_precision(s, y.astype(bool)), average_precision(s, y.astype(np.uint8)))


def test_input_errors():
    s = np.random.default_rng(0).random((5, 2))
    y = np.array([[1, 0]] * 5)
    with pytest.raises(ValueError, match="unknown AP mode"):
        average_precision(s, y, mode="interp11")
    with pytest.raises(ValueError, match="same shape"):
        average_precision(s, y[:4])
    with pytest.raises(ValueError, match="0/1"):
        average_precision(s, np.where(y == 1, 1, -1))
    s_nan = s.copy()
    s_nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        average_precision(s_nan, y)
    mask = np.ones_like(y, dtype=bool)
    mask[2, 1] = False
    assert np.isfinite(average_precision(s_nan, y, mask=mask)[0])
    with pytest.raises(ValueError, match="mask"):
        average_precision(s, y, mask=mask[:, :1])


def test_torch_input():
    torch = pytest.importorskip("torch")
    s, y = tied_data(8, n=120, c=10, decimals=3, dtype=np.float32)
    want = average_precision(s, y, mode="sklearn")
    got = average_precision(torch.from_numpy(s), torch.from_numpy(y), mode="sklearn")
    np.testing.assert_array_equal(got, want)
    logits = torch.from_numpy(s).requires_grad_(True)
    assert np.isfinite(mean_average_precision(logits, torch.from_numpy(y).bool())["mAP"])
    half = torch.from_numpy(s).to(torch.bfloat16)
    assert average_precision(half, y).shape == (10,)
    res = evaluate(torch.from_numpy(s), torch.from_numpy(y))
    assert res == evaluate(s, y)


# --------------------------------------------------------------------------------------------------------------------
# thresholded metrics
# --------------------------------------------------------------------------------------------------------------------

# 3 images x 3 classes, worked by hand. At threshold .5 the predictions are
#   [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
# class 0: TP 2 FP 0 FN 0 -> P 1,  R 1 | class 1: TP 1 FP 1 FN 0 -> P .5, R 1 | class 2: TP 1 FP 1 FN 1 -> P .5, R .5
# CP = 2/3, CR = 5/6, CF1 = 2(2/3)(5/6) / (2/3 + 5/6) = 20/27;  OP = 4/6, OR = 4/5, OF1 = 16/22.
# AP (noninterp): 1, 1, and class 2 ranks .6(neg) .55(pos) .1(pos) -> (1/2 + 2/3) / 2 = 7/12; mAP = (2 + 7/12) / 3.
HAND_S = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.55], [0.8, 0.3, 0.6]])
HAND_Y = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]])


def test_evaluate_hand_example():
    res = evaluate(HAND_S, HAND_Y)
    want = {
        "mAP": 100 * (2 + 7 / 12) / 3,
        "CP": 100 * 2 / 3,
        "CR": 100 * 5 / 6,
        "CF1": 100 * 20 / 27,
        "OP": 100 * 4 / 6,
        "OR": 100 * 4 / 5,
        "OF1": 100 * 16 / 22,
    }
    for key, value in want.items():
        assert res[key] == pytest.approx(value, abs=1e-12), key
    assert res["n_classes_without_positives"] == 0


def test_evaluate_top_k():
    # top-1 per image: class 0, class 1, class 0 -> class 2 never predicted (CP_2 = 0 by convention)
    res = evaluate(HAND_S, HAND_Y, top_k=1)
    assert res["OP"] == pytest.approx(100.0)
    assert res["OR"] == pytest.approx(60.0)
    assert res["CP"] == pytest.approx(100 * 2 / 3)
    assert res["CR"] == pytest.approx(100 * 2 / 3)
    # ML-GCN keeps the threshold inside the top-k; threshold=None gives pure top-k
    low = HAND_S * 0.4  # every score below .5
    assert evaluate(low, HAND_Y, top_k=1)["OP"] == 0.0
    pure = evaluate(low, HAND_Y, top_k=1, threshold=None)
    assert pure["OP"] == pytest.approx(100.0) and pure["OR"] == pytest.approx(60.0)
    # top-k beyond the number of classes is clipped; ties at place k go to the lower class index
    assert evaluate(HAND_S, HAND_Y, top_k=10, threshold=None)["OR"] == pytest.approx(100.0)
    tie = evaluate(np.full((1, 3), 0.7), np.array([[0, 1, 0]]), top_k=1, threshold=None)
    assert tie["OP"] == 0.0  # class 0 wins the tie, class 1 is missed
    with pytest.raises(ValueError, match="top_k"):
        evaluate(HAND_S, HAND_Y, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        evaluate(HAND_S, HAND_Y, threshold=None)


def test_evaluate_matches_sklearn_precision_recall():
    rng = np.random.default_rng(5)
    s = rng.random((400, 12))
    y = (rng.random((400, 12)) < 0.25).astype(int)
    y[:, 7] = 0  # a class with no positive: left out of CP and CR, still counted in OP (its false positives)
    pred = (s >= 0.5).astype(int)
    res = evaluate(s, y, mode="sklearn")
    has_pos = y.sum(0) > 0
    cp = precision_score(y, pred, average=None, zero_division=0)[has_pos].mean()
    cr = recall_score(y, pred, average=None, zero_division=0)[has_pos].mean()
    assert res["CP"] == pytest.approx(100 * cp, abs=1e-10)
    assert res["CR"] == pytest.approx(100 * cr, abs=1e-10)
    assert res["OP"] == pytest.approx(100 * precision_score(y, pred, average="micro"), abs=1e-10)
    assert res["OR"] == pytest.approx(100 * recall_score(y, pred, average="micro"), abs=1e-10)
    assert res["CF1"] == pytest.approx(2 * res["CP"] * res["CR"] / (res["CP"] + res["CR"]))
    assert res["OF1"] == pytest.approx(2 * res["OP"] * res["OR"] / (res["OP"] + res["OR"]))
    assert res["n_classes_without_positives"] == 1
    ap = [average_precision_score(y[:, c], s[:, c]) for c in np.nonzero(has_pos)[0]]
    assert res["mAP"] == pytest.approx(100 * np.mean(ap), abs=1e-10)


def test_evaluate_per_class_thresholds():
    thresholds = np.array([0.85, 0.5, 0.58])
    # class 0 now predicted only for image 0; class 2 only for image 2
    res = evaluate(HAND_S, HAND_Y, thresholds=thresholds, threshold=0.99)  # per-class thresholds win
    tp, fp, fn = np.array([1, 1, 0]), np.array([0, 1, 1]), np.array([1, 0, 2])
    assert res["OP"] == pytest.approx(100 * tp.sum() / (tp + fp).sum())
    assert res["OR"] == pytest.approx(100 * tp.sum() / (tp + fn).sum())
    assert res["CP"] == pytest.approx(100 * np.mean([1.0, 0.5, 0.0]))
    assert res["CR"] == pytest.approx(100 * np.mean([0.5, 1.0, 0.0]))
    same = evaluate(HAND_S, HAND_Y, thresholds=[0.5, 0.5, 0.5])
    assert same == evaluate(HAND_S, HAND_Y)
    with pytest.raises(ValueError, match="one value per class"):
        evaluate(HAND_S, HAND_Y, thresholds=[0.5, 0.5])


def test_evaluate_with_mask():
    mask = np.ones_like(HAND_Y, dtype=bool)
    mask[2, 2] = False  # the false positive of class 2 becomes "unknown"
    res = evaluate(HAND_S, HAND_Y, mask=mask)
    assert res["OP"] == pytest.approx(100 * 4 / 5)
    assert res["CP"] == pytest.approx(100 * (1 + 0.5 + 1) / 3)
    assert res["OR"] == pytest.approx(100 * 4 / 5)
    assert res["mAP"] == pytest.approx(100.0)  # class 2 now ranks .55 (pos) then .1 (pos): AP 1


def test_per_class_table():
    table = per_class_table(HAND_S, HAND_Y, ["a", "b", "c"])
    assert list(table.columns) == ["class", "n_pos", "AP", "precision", "recall", "F1"]
    assert list(table["class"]) == ["a", "b", "c"]
    assert list(table["n_pos"]) == [2, 1, 2]
    np.testing.assert_allclose(table["AP"], [100, 100, 100 * 7 / 12])
    np.testing.assert_allclose(table["precision"], [100, 50, 50])
    np.testing.assert_allclose(table["recall"], [100, 100, 50])
    np.testing.assert_allclose(table["F1"], [100, 100 * 2 / 3, 50])
    y = HAND_Y.copy()
    y[:, 1] = 0
    table = per_class_table(HAND_S, y, ["a", "b", "c"])
    assert table.loc[1, "precision"] == 0 and np.isnan(table.loc[1, "recall"]) and np.isnan(table.loc[1, "AP"])
    with pytest.raises(ValueError, match="class names"):
        per_class_table(HAND_S, HAND_Y, ["a", "b"])


def test_precision_recall_curve_wraps_sklearn():
    s, y = tied_data(2, n=80, c=4, decimals=2)
    assert y[:, 2].sum() > 0
    p, r, t = precision_recall_curve(s[:, 2], y[:, 2])
    p2, r2, t2 = sk_precision_recall_curve(y[:, 2], s[:, 2])
    np.testing.assert_array_equal(p, p2)
    np.testing.assert_array_equal(r, r2)
    np.testing.assert_array_equal(t, t2)
    assert len(p) == len(t) + 1


def test_tune_thresholds_maximises_f1():
    s, y = tied_data(9, n=150, c=8, decimals=2)
    y[0] = 1
    y[:, 4] = 0
    thr = tune_thresholds(s, y, default=0.42)
    assert thr[4] == 0.42
    for c in range(8):
        if c == 4:
            continue
        candidates = np.unique(s[:, c])
        f1 = [2 * np.sum((s[:, c] >= u) & (y[:, c] == 1)) / (np.sum(s[:, c] >= u) + y[:, c].sum()) for u in candidates]
        best = candidates[np.flatnonzero(np.isclose(f1, max(f1)))].max()  # highest threshold among the best
        assert thr[c] == best


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_descending_argsort(dtype):
    rng = np.random.default_rng(6)
    x = np.round(rng.normal(size=(7, 300)), 1).astype(dtype)
    x[0, :40] = np.nan
    x[1, ::3] = -0.0
    x[1, 1::3] = 0.0
    x[2, :5] = np.inf
    x[2, 5:10] = -np.inf
    x[3] = 1.0
    np.testing.assert_array_equal(metrics._stable_desc_argsort(x), np.argsort(-x, axis=1, kind="stable"))


def test_the_mlgcn_convention_is_ml_gcns_evaluation_formula() -> None:
    """ML-GCN's `evaluation` (util.py): per class Ng, Np = #scores ≥ threshold, Nc = #correct; Np of 0 set to 1;
    OP = ΣNc / ΣNp, OR = ΣNc / ΣNg, CP = mean_c Nc/Np, CR = mean_c Nc/Ng over all classes (written out here)."""
    from mlic.metrics import evaluate

    rng = np.random.default_rng(4)
    targets = (rng.random((60, 5)) < 0.4).astype(np.uint8)
    targets[:, 4] = 0
    targets[0, 4] = 1  # class 4: one positive
    scores = rng.random((60, 5))
    scores[:, 3] = 0.1  # class 3 never predicted
    pred = scores >= 0.5
    n_g = targets.sum(0).astype(float)
    n_p = pred.sum(0).astype(float)
    n_c = (pred & (targets == 1)).sum(0).astype(float)
    n_p[n_p == 0] = 1
    op, orr = n_c.sum() / n_p.sum(), n_c.sum() / n_g.sum()
    cp, cr = np.mean(n_c / n_p), np.mean(n_c / n_g)
    got = evaluate(scores, targets, convention="mlgcn")
    assert got["OP"] == pytest.approx(100 * op) and got["OR"] == pytest.approx(100 * orr)
    assert got["CP"] == pytest.approx(100 * cp) and got["CR"] == pytest.approx(100 * cr)
    assert got["OF1"] == pytest.approx(100 * 2 * op * orr / (op + orr))
    ours = evaluate(scores, targets)
    assert ours["OP"] > got["OP"]  # the unpredicted class adds 1 to ML-GCN's denominator only
    with pytest.raises(ValueError, match="unknown convention"):
        evaluate(scores, targets, convention="coco")
