"""Every public figure of `mlic.plots` against what it must show: its texts (titles, ticks, legend entries), the
positions of its text boxes (nothing overlaps; measured with the renderer's window extents) and the data of its
artists (bar heights, line points, image pixels equal the inputs)."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from PIL import Image  # noqa: E402

from mlic import plots  # noqa: E402
from mlic.data.table import LabelledImages  # noqa: E402
from mlic.plots import cams, core, moe, partial, shift  # noqa: E402

NAMES = ["zero", "one", "two", "three", "circle", "square"]
SHIFT = ("test", "test_shift")


@pytest.fixture(autouse=True)
def _close_figures() -> Iterable[None]:
    yield
    plt.close("all")


# ---------------------------------------------------------------------------------------------------------------------
# What a figure shows
# ---------------------------------------------------------------------------------------------------------------------
def _renderer(fig: Figure):  # noqa: ANN202 - matplotlib's backend renderer
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _texts(fig: Figure) -> list[str]:
    """Every visible, non-empty text of the figure (titles, tick labels, legend entries, annotations)."""
    _renderer(fig)
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _boxes(fig: Figure, artists: Iterable) -> list[Bbox]:
    renderer = _renderer(fig)
    return [a.get_window_extent(renderer) for a in artists]


def _overlapping(boxes: list[Bbox], *, slack: float = 0.5) -> list[tuple[int, int]]:
    """Pairs of boxes that overlap by more than `slack` pixels both ways."""
    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        if min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack:
            pairs.append((i, j))
    return pairs


def _inside(fig: Figure, boxes: list[Bbox], *, slack: float = 1.0) -> bool:
    w, h = fig.canvas.get_width_height()
    return all(b.x0 >= -slack and b.y0 >= -slack and b.x1 <= w + slack and b.y1 <= h + slack for b in boxes)


def _bars(ax: plt.Axes) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0 and p.get_height() != 0]


def _legend(ax_or_fig: plt.Axes | Figure) -> list[str]:
    legend = ax_or_fig.get_legend() if isinstance(ax_or_fig, plt.Axes) else ax_or_fig.legends[0]
    return [t.get_text() for t in legend.get_texts()]


def _ticks(ax: plt.Axes, axis: str = "x") -> list[str]:
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in labels]


def _heights_by_x(ax: plt.Axes) -> dict[float, list[float]]:
    out: dict[float, list[float]] = {}
    for bar in _bars(ax):
        out.setdefault(round(bar.get_x() + bar.get_width() / 2), []).append(bar.get_height())
    return out


@pytest.fixture
def images(tmp_path: Path) -> LabelledImages:
    """Eight 16 px images on disk with known labels (some with four labels: long titles)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    labels = np.zeros((8, len(NAMES)), dtype=np.uint8)
    for i in range(8):
        labels[i, [i % 6, (i + 1) % 6] + ([2, 3, 4, 5] if i % 3 == 0 else [])] = 1
    return LabelledImages(paths=paths, labels=labels, class_names=list(NAMES))


# ---------------------------------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------------------------------
def test_save_writes_png_and_svg_and_returns_nothing(tmp_path: Path) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    assert plots.save(fig, tmp_path, "line") is None  # a notebook cell ending with save echoes no list of paths
    png, svg = plots.figure_path(tmp_path, "line"), plots.figure_path(tmp_path, "line", "svg")
    with Image.open(png) as image:
        assert png == tmp_path / "figures" / "line.png" and image.format == "PNG"
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["line.png", "line.svg"]  # no temporary left


def test_figure_path_resolves_a_relative_folder_against_the_lab_home(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLIC_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert plots.figure_path("runs/x", "f") == tmp_path / "home" / "runs" / "x" / "figures" / "f.png"


# ---------------------------------------------------------------------------------------------------------------------
# core: data and training
# ---------------------------------------------------------------------------------------------------------------------
def test_label_frequencies_bars_are_the_fractions_sorted_by_the_first_split(images: LabelledImages) -> None:
    fig = plots.label_frequencies({"train": images})
    ax = fig.axes[0]
    freq = images.labels.mean(axis=0)
    order = [NAMES[i] for i in np.argsort(-images.labels.sum(0), kind="stable")]
    assert _ticks(ax) == order
    np.testing.assert_allclose([b.get_height() for b in sorted(_bars(ax), key=lambda b: b.get_x())],
                               freq[np.argsort(-images.labels.sum(0), kind="stable")])
    assert ax.get_title() == "Label frequencies"


def test_labels_per_image_histogram_is_the_share_of_images_per_count(images: LabelledImages) -> None:
    fig = plots.labels_per_image({"train": images})
    ax = fig.axes[0]
    counts = images.labels.sum(1)
    heights = {round(b.get_x() + b.get_width() / 2): b.get_height() for b in _bars(ax)}
    assert heights == pytest.approx({k: float(np.mean(counts == k)) for k in np.unique(counts)})
    assert ax.get_title() == "Labels per image"


def test_sample_grid_titles_wrap_and_never_overlap(images: LabelledImages) -> None:
    fig = plots.sample_grid(images, n=8, columns=4)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 8 and all(len(ax.images) == 1 for ax in titled)
    texts = [ax.title for ax in titled]
    boxes = _boxes(fig, texts)
    pictures = _boxes(fig, [ax.images[0] for ax in titled])
    assert not _overlapping(boxes) and _inside(fig, boxes)
    assert not [(i, j) for i, t in enumerate(boxes) for j, p in enumerate(pictures) if _overlapping([t, p])]
    picks = np.random.default_rng(0).choice(8, size=8, replace=False)  # the images sample_grid draws, in order
    four = next(ax for ax, i in zip(titled, picks) if images.labels[i].sum() == 6)
    assert set(four.get_title().replace("\n", " ").replace(",", "").split()) == {"zero", "one", "two", "three",
                                                                                   "circle", "square"}


def test_sample_grid_marks_predictions_right_and_wrong(images: LabelledImages) -> None:
    scores = np.zeros(images.labels.shape)
    scores[:, 0] = 0.9  # "zero" predicted everywhere: right where it is true, ✗ elsewhere
    fig = plots.sample_grid(images, n=8, columns=4, seed=1, scores=scores)
    rng = np.random.default_rng(1)
    picks = rng.choice(8, size=8, replace=False)
    titled = [ax for ax in fig.axes if ax.get_title()]
    for ax, i in zip(titled, picks):
        pred = ax.get_title().split("pred: ")[1].replace("\n", " ").replace("\u00a0", " ")
        assert pred == ("zero ✓" if images.labels[i, 0] else "zero ✗")
    boxes = _boxes(fig, [ax.title for ax in titled])
    pictures = _boxes(fig, [ax.images[0] for ax in titled])
    assert not _overlapping(boxes + pictures)


def test_training_curves_plot_the_history() -> None:
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_mAP_raw": 50 + e, "val_mAP_ema": 52 + e}
               for e in range(3)]
    fig = plots.training_curves(history)
    ax_loss, ax_val = fig.axes
    np.testing.assert_allclose(ax_loss.lines[0].get_ydata(), [1.0, 0.5, 1 / 3])
    np.testing.assert_allclose(ax_loss.lines[0].get_xdata(), [1, 2, 3])
    assert [list(line.get_ydata()) for line in ax_val.lines] == [[50, 51, 52], [52, 53, 54]]
    assert _legend(ax_val) == ["raw weights", "ema weights"] and ax_val.get_title() == "Validation mAP"


def test_per_class_ap_bars_are_the_values_sorted_by_the_first_split() -> None:
    ap = {"test": np.array([10.0, 80.0, 50.0]), "test_shift": np.array([5.0, 60.0, 20.0])}
    fig = plots.per_class_ap(ap, ["a", "b", "c"])
    ax = fig.axes[0]
    assert _ticks(ax) == ["b", "c", "a"]
    assert sorted(b.get_height() for b in _bars(ax)) == [5.0, 10.0, 20.0, 50.0, 60.0, 80.0]
    assert _heights_by_x(ax)[0] == [80.0, 60.0]  # the first tick holds b's two bars, test then test_shift
    assert _legend(ax) == ["test", "test_shift"]


def test_precision_recall_curves_are_sklearns(images: LabelledImages) -> None:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (40, 3))
    targets[0] = 1
    scores = np.clip(targets * 0.4 + rng.random((40, 3)) * 0.6, 0, 1)
    fig = plots.precision_recall_curves(scores, targets, ["a", "b", "c"], classes=[0, 2])
    ax = fig.axes[0]
    precision, recall, _ = precision_recall_curve(targets[:, 2], scores[:, 2])
    np.testing.assert_allclose(ax.lines[1].get_xdata(), recall)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), precision)
    ap = 100 * average_precision_score(targets[:, 0], scores[:, 0])
    assert _legend(ax)[0] == f"a (AP {ap:.1f})" and len(ax.lines) == 2


def test_split_comparison_legend_clears_the_bars_and_their_values() -> None:
    metrics = {"test": {"mAP": 95.2, "CF1": 92.1, "OF1": 94.3}, "test_shift": {"mAP": 90.2, "CF1": 88.1, "OF1": 89.3}}
    fig = plots.split_comparison(metrics)
    ax = fig.axes[0]
    assert sorted(b.get_height() for b in _bars(ax)) == sorted(v for m in metrics.values() for v in m.values())
    values = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in values) == sorted(f"{v:.1f}" for m in metrics.values() for v in m.values())
    legend = ax.get_legend()
    assert _legend(ax) == ["test", "test_shift"]
    legend_box, = _boxes(fig, [legend])
    others = _boxes(fig, [*_bars(ax), *values, ax.title])
    assert not [b for b in others if _overlapping([legend_box, b])]
    assert _inside(fig, [legend_box, *others])


# ---------------------------------------------------------------------------------------------------------------------
# core: heads
# ---------------------------------------------------------------------------------------------------------------------
def test_query_attention_titles_each_class_with_score_and_verdict() -> None:
    rng = np.random.default_rng(0)
    scores = np.array([[0.9, 0.1, 0.6], [0.2, 0.8, 0.7]])
    labels = np.array([[1, 0, 0], [0, 1, 1]])
    examples = {"images": rng.random((2, 8, 8, 3)), "attention": rng.random((2, 3, 2, 2)), "scores": scores,
                "labels": labels, "class_names": ["a", "b", "c"]}
    fig = plots.query_attention(examples, top_k=2, title="ml_decoder")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["truth: a", "a 0.90 ✓", "c 0.60 ✗", "truth: b, c", "b 0.80 ✓", "c 0.70 ✓"]
    np.testing.assert_array_equal(fig.axes[2].images[1].get_array(), examples["attention"][0, 2])
    assert fig._suptitle.get_text() == "ml_decoder"


def test_similarity_vs_cooccurrence_shows_both_matrices_and_their_correlation() -> None:
    rng = np.random.default_rng(0)
    sim = rng.random((4, 4))
    co = sim + 0.1 * rng.random((4, 4))
    fig = plots.similarity_vs_cooccurrence(sim, co, ["a", "b", "c", "d"])
    off = ~np.eye(4, dtype=bool)
    r = np.corrcoef(sim[off], (0.5 * (co + co.T))[off])[0, 1]
    assert fig._suptitle.get_text() == f"off-diagonal correlation r = {r:.2f}"
    np.testing.assert_allclose(fig.axes[0].collections[0].get_array().reshape(4, 4), sim)
    np.testing.assert_allclose(fig.axes[1].collections[0].get_array().reshape(4, 4), co)
    assert _ticks(fig.axes[0]) == ["a", "b", "c", "d"]


def test_head_comparison_bars_are_seed_means_and_the_cost_panel_names_each_head() -> None:
    table = pd.DataFrame({"variant": ["gap", "gap", "q2l", "q2l"], "seed": [0, 1, 0, 1],
                          "test/mAP": [70.0, 72.0, 80.0, 84.0], "test_shift/mAP": [50.0, 52.0, 60.0, 62.0],
                          "latency_ms": [1.0, 1.1, 3.0, 3.1]})
    fig = plots.head_comparison(table)
    ax_bar, ax_cost = fig.axes
    assert sorted(round(b.get_height(), 6) for b in _bars(ax_bar)) == [51.0, 61.0, 71.0, 82.0]
    assert [t.get_text() for t in ax_cost.texts] == ["gap", "q2l"]
    np.testing.assert_allclose(ax_cost.collections[0].get_offsets(), [[1.0, 70.0], [3.0, 80.0]])
    legend_box, = _boxes(fig, [ax_bar.get_legend()])
    assert not [b for b in _boxes(fig, _bars(ax_bar)) if _overlapping([legend_box, b])]


# ---------------------------------------------------------------------------------------------------------------------
# core: label graphs and CPSD
# ---------------------------------------------------------------------------------------------------------------------
def _blocks(C: int = 12, parts: int = 3) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A planted affinity: labels of one part co-occur strongly, across parts weakly."""
    assign = np.arange(C) % parts
    P = np.where(assign[:, None] == assign[None, :], 0.9, 0.05)
    np.fill_diagonal(P, 0)
    return P, assign, [f"label_{i}" for i in range(C)]


def test_clustered_heatmap_keeps_the_values_and_groups_planted_blocks() -> None:
    P, assign, names = _blocks()
    fig = plots.clustered_heatmap(P, names, groups=[np.flatnonzero(assign == g) for g in range(3)], order_by=P,
                                  title="P")
    heat = next(ax for ax in fig.axes if ax.collections and _ticks(ax) and len(_ticks(ax)) == 12)
    order = [names.index(t) for t in _ticks(heat)]
    shown = heat.collections[0].get_array().reshape(12, 12)
    np.testing.assert_allclose(shown, P[np.ix_(order, order)])
    assert [len(set(run)) for run in np.split(assign[order], 3)] == [1, 1, 1]  # the parts are contiguous blocks
    assert fig._suptitle.get_text() == "P"


def test_label_graph_places_every_label_apart_and_draws_the_strongest_edges() -> None:
    P, assign, names = _blocks(20, 5)
    fig = plots.label_graph(P, names, assign, edges_per_label=3)
    ax = fig.axes[0]
    nodes = next(c for c in ax.collections if isinstance(c, PathCollection))
    centres = ax.transData.transform(nodes.get_offsets())
    radius = np.sqrt(nodes.get_sizes()[0]) / 2 * fig.dpi / 72  # marker size is in points²
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(centres, 2)]
    assert min(gaps) > 2 * radius  # no node drawn on top of another
    labels = [t for t in ax.texts if t.get_text() in names]
    assert sorted(t.get_text() for t in labels) == sorted(names)
    label_boxes = _boxes(fig, labels)
    assert not _overlapping(label_boxes) and _inside(fig, label_boxes)
    edges = next(c for c in ax.collections if isinstance(c, LineCollection))
    segments = edges.get_segments()
    assert len(segments) == 20 * 3 // 2  # each label's 3 strongest edges: its own part's 3 other labels, shared
    drawn = np.sort(assign, kind="stable")  # nodes are drawn part by part (around the circle)
    part_of = {tuple(np.round(p, 6)): drawn[k] for k, p in enumerate(nodes.get_offsets())}
    assert all(part_of[tuple(np.round(a, 6))] == part_of[tuple(np.round(b, 6))] for a, b in segments)
    assert _legend(ax) == [f"part {p}" for p in range(5)]


def test_eigenvalue_spectrum_marks_the_eigengap() -> None:
    values = np.array([0.0, 0.01, 0.02, 0.9, 0.95, 1.0])
    fig = plots.eigenvalue_spectrum({"CGP": values}, k_max=5)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), values)
    assert _legend(ax) == ["CGP (eigengap after k = 3)"]
    arrow = ax.texts[0]
    assert arrow.xy == (3.5, values[3]) and arrow.xyann == (3.5, values[2])


def test_partition_grid_rows_are_the_planted_groups_then_each_k() -> None:
    assign = np.array([0, 1, 0, 1, 2, 2])
    fig = plots.partition_grid({"cgp": {2: np.array([0, 1, 0, 1, 1, 0]), 3: assign}}, NAMES,
                               groups=[[0, 2], [1, 3], [4, 5]])
    ax = fig.axes[0]
    assert _ticks(ax, "y") == ["planted", "k=2", "k=3"]
    assert _ticks(ax) == ["zero", "two", "one", "three", "circle", "square"]  # ordered by planted group
    np.testing.assert_array_equal(ax.images[0].get_array(), [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 0],
                                                             [0, 0, 1, 1, 2, 2]])
    assert ax.get_title() == "CGP"


def test_ari_per_k_plots_each_strategy_and_says_when_there_are_no_groups() -> None:
    frame = pd.DataFrame({"k": [2, 3, 2, 3], "strategy": ["cgp", "cgp", "dgp", "dgp"], "ari": [0.5, 1.0, 0.0, -0.1]})
    ax = plots.ari_per_k(frame).axes[0]
    assert [list(line.get_ydata()) for line in ax.lines[:2]] == [[0.5, 1.0], [0.0, -0.1]]
    assert _legend(ax) == ["cgp", "dgp"] and [t.get_text() for t in ax.get_xticklabels()] == ["2", "3"]
    empty = plots.ari_per_k(frame.drop(columns="ari"))
    assert "no planted groups in this data set" in _texts(empty)


def _seed_rows() -> pd.DataFrame:
    return pd.DataFrame({"variant": ["baseline", "baseline", "cpsd", "cpsd"], "seed": [0, 1, 0, 1],
                         "test/mAP": [70.0, 72.0, 75.0, 77.0], "test_shift/mAP": [50.0, 54.0, 58.0, 60.0]})


def test_ablation_bars_show_seed_means_with_the_mean_written() -> None:
    fig = plots.ablation_bars(_seed_rows())
    for ax, split, means in zip(fig.axes, SHIFT, ([71.0, 76.0], [52.0, 59.0])):
        assert sorted(b.get_height() for b in _bars(ax)) == means
        assert [t.get_text() for t in ax.texts] == [f"{m:.1f}" for m in means]
        assert ax.get_title() == split
        dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if len(c.get_offsets())])
        assert sorted(dots) == sorted(_seed_rows()[f"{split}/mAP"])


def test_k_sweep_lines_start_at_the_baseline_and_sd() -> None:
    frame = pd.DataFrame({"variant": ["cgpd", "cgpd", "cgpd"], "k": [2, 3, 2], "seed": [0, 0, 1],
                          "test/mAP": [74.0, 75.0, 76.0], "test_shift/mAP": [60.0, 61.0, 62.0]})
    fig = plots.k_sweep(frame, baseline={"test": 70.0, "test_shift": 50.0}, sd={"test": 72.0, "test_shift": 55.0})
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [0, 1, 2, 3] and list(line.get_ydata()) == [70.0, 72.0, 75.0, 75.0]
    assert _legend(fig.axes[1]) == ["CGPD"] and list(fig.axes[1].lines[0].get_ydata()) == [50.0, 55.0, 61.0, 61.0]


def test_label_gain_points_and_fit_per_split() -> None:
    frame = pd.DataFrame({"split": ["test"] * 3, "label": ["a", "b", "c"], "strength": [0.2, 0.5, 0.8],
                          "gain": [1.0, 2.0, 3.0]})
    ax = plots.label_gain(frame).axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[0.2, 1.0], [0.5, 2.0], [0.8, 3.0]])
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c"]
    fit = ax.lines[0]
    np.testing.assert_allclose(fit.get_ydata(), np.asarray(fit.get_xdata()) / 0.3 + 1.0 - 0.2 / 0.3)


def test_training_cost_stacks_teacher_and_student_seconds() -> None:
    costs = pd.DataFrame({"variant": ["sd", "cpsd"], "teacher_seconds": [10.0, 50.0], "student_seconds": [5.0, 6.0],
                          "teachers": [1, 5]})
    fig = plots.training_cost(costs)
    ax = fig.axes[0]
    widths = sorted((round(b.get_y(), 3), b.get_x(), b.get_width()) for b in _bars(ax))
    assert [(x, w) for _, x, w in widths] == [(0.0, 10.0), (10.0, 5.0), (0.0, 50.0), (50.0, 6.0)]
    assert [t.get_text().strip() for t in ax.texts] == ["1 teacher", "5 teachers"]
    assert _ticks(ax, "y") == ["sd", "cpsd"] and _legend(ax) == ["teachers", "student"]


# ---------------------------------------------------------------------------------------------------------------------
# core: AAM and thresholds
# ---------------------------------------------------------------------------------------------------------------------
def test_aam_parts_draws_the_losses_aam_curves_computes() -> None:
    from mlic.losses.aam import aam_curves

    fig = plots.aam_parts({"scale s": [{"s": 5}, {"s": 23}]})
    ax = fig.axes[0]
    expected = aam_curves(np.linspace(-1, 1, 201), s=5, m=0.0, k=0.7, gamma_pos=0.0, gamma_neg=0.0)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), expected["positive"])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), expected["negative"])
    assert ax.get_title() == "scale s" and _legend(ax) == ["s=5", "s=23"]


def test_curves_by_run_plots_every_run() -> None:
    runs = {"asl": [{"epoch": 0, "train_loss": 2.0, "val_mAP": 40.0}, {"epoch": 1, "train_loss": 1.0, "val_mAP": 50.0}],
            "aam": [{"epoch": 0, "train_loss": 3.0, "val_mAP": 45.0}]}
    ax_loss, ax_val = plots.curves_by_run(runs).axes
    assert [list(line.get_ydata()) for line in ax_val.lines] == [[40.0, 50.0], [45.0]]
    assert [list(line.get_ydata()) for line in ax_loss.lines] == [[2.0, 1.0], [3.0]]
    assert _legend(ax_val) == ["asl", "aam"] and ax_loss.get_yscale() == "log"


def test_sweep_lines_mark_the_best_value() -> None:
    table = pd.DataFrame({"param/s": [30.0, 5.0, 15.0], "test/mAP": [70.0, 60.0, 80.0]})
    ax = plots.sweep_lines(table, "param/s", ["test/mAP"], title="scale s").axes[0]
    assert list(ax.lines[0].get_xdata()) == [5.0, 15.0, 30.0] and list(ax.lines[0].get_ydata()) == [60.0, 80.0, 70.0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[15.0, 80.0]])
    assert [t.get_text() for t in ax.texts] == ["best param/s=15"]


def test_grid_heatmap_cells_are_the_pivoted_values() -> None:
    table = pd.DataFrame({"g-": [0, 0, 2, 2], "g+": [0, 1, 0, 1], "mAP": [1.0, 2.0, 3.0, 4.0]})
    ax = plots.grid_heatmap(table, "g-", "g+", "mAP", title="grid").axes[0]
    np.testing.assert_allclose(ax.collections[0].get_array().reshape(2, 2), [[1.0, 2.0], [3.0, 4.0]])
    assert sorted(t.get_text() for t in ax.texts) == ["1.0", "2.0", "3.0", "4.0"]
    assert _ticks(ax, "y") == ["0", "2"] and ax.get_title() == "grid"


def test_class_thresholds_bars_are_sorted_thresholds() -> None:
    ax = plots.class_thresholds(np.array([0.7, 0.2, 0.4]), ["a", "b", "c"]).axes[0]
    assert _ticks(ax) == ["b", "c", "a"]
    assert [b.get_height() for b in _bars(ax)] == [0.2, 0.4, 0.7]
    assert _legend(ax) == ["default 0.5"] and list(ax.lines[0].get_ydata()) == [0.5, 0.5]


# ---------------------------------------------------------------------------------------------------------------------
# cams
# ---------------------------------------------------------------------------------------------------------------------
def _cam_examples() -> dict:
    rng = np.random.default_rng(0)
    return {"images": rng.random((2, 16, 16, 3)), "maps": {"base": rng.random((2, 16, 16)),
                                                           "cpsd": rng.random((2, 16, 16))},
            "scores": {"base": np.array([0.9, 0.3]), "cpsd": np.array([0.8, 0.1])},
            "pairs": np.array([[0, 1], [1, 2]]), "class_names": ["a", "b", "c"],
            "labels": np.array([[1, 1, 0], [1, 0, 0]]),
            "boxes": [np.array([[1, 2, 2, 5, 5], [0, 8, 8, 4, 4]]), np.array([[0, 1, 1, 3, 3]])],
            "method": "gradcam"}


def test_cam_comparison_titles_each_model_and_draws_the_target_boxes_red() -> None:
    fig = plots.cam_comparison(_cam_examples())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["b + a", "base: 0.90", "cpsd: 0.80", "c (absent) + a", "base: 0.30", "cpsd: 0.10"]
    red = [p for p in fig.axes[0].patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert [(p.get_x(), p.get_y(), p.get_width()) for p in red] == [(1.5, 1.5, 5.0)]
    np.testing.assert_allclose(fig.axes[2].images[1].get_array(), _cam_examples()["maps"]["cpsd"][0])
    assert fig._suptitle.get_text() == "gradcam of the target label (red), score per model"


def _pointing() -> pd.DataFrame:
    return pd.DataFrame({"model": ["base", "base", "cpsd", "cpsd"], "split": ["test", "test_shift"] * 2,
                         "pointing": [60.0, 40.0, 70.0, 55.0], "pointing_chance": [10.0] * 4,
                         "energy": [30.0, 20.0, 35.0, 30.0], "energy_chance": [8.0] * 4,
                         "companion_energy": [20.0, 15.0, 10.0, 9.0], "companion_chance": [12.0] * 4})


def test_pointing_summary_bars_and_chance_lines() -> None:
    fig = plots.pointing_summary(_pointing())
    for ax, column in zip(fig.axes, ("pointing", "energy", "companion_energy")):
        assert sorted(b.get_height() for b in _bars(ax)) == sorted(_pointing()[column])
        assert _ticks(ax) == ["base", "cpsd"]
    assert _legend(fig.axes[0]) == ["chance (uniform map)", "test", "test_shift"]
    chance = np.concatenate([c.get_segments() for c in fig.axes[0].collections if isinstance(c, LineCollection)])
    assert {float(s[0][1]) for s in chance} == {10.0}


def test_pointing_per_label_heatmap_columns_are_model_and_split() -> None:
    per_label = pd.DataFrame({"class": ["a", "b", "a", "b"], "model": ["m"] * 4,
                              "split": ["test", "test", "test_shift", "test_shift"],
                              "pointing": [10.0, 20.0, 30.0, 40.0]})
    ax = plots.pointing_per_label(per_label).axes[0]
    assert _ticks(ax) == ["m · test", "m · test_shift"] and _ticks(ax, "y") == ["a", "b"]
    np.testing.assert_allclose(ax.collections[0].get_array().reshape(2, 2), [[10.0, 30.0], [20.0, 40.0]])


def test_cam_methods_one_panel_per_method_with_its_score() -> None:
    rng = np.random.default_rng(0)
    fig = plots.cam_methods(rng.random((8, 8, 3)), {"gradcam": rng.random((8, 8)), "eigencam": rng.random((8, 8))},
                            label="ring", scores={"gradcam": 0.81})
    assert [ax.get_title() for ax in fig.axes] == ["ring", "gradcam (0.81)", "eigencam"]


def _explorer_figure(**kw: object) -> tuple[Figure, np.ndarray]:
    """20 labels scored 0.95 down to 0 in steps of 0.05; labels 3 (scored 0.80) and 15 (0.20) are true."""
    rng = np.random.default_rng(0)
    truth = np.zeros(20, dtype=np.uint8)
    truth[[3, 15]] = 1
    scores = np.linspace(0.95, 0.0, 20)
    fig = plots.explorer_view(rng.random((16, 16, 3)), rng.random((16, 16)), class_names=[f"label {i}" for i in
                              range(20)], scores=scores, truth=truth, label=15, **kw)
    return fig, scores


def test_explorer_view_scores_bars_and_readable_label_names() -> None:
    fig, scores = _explorer_figure(method="gradcam", title="run · test · image 12")
    ax = fig.axes[2]
    assert [b.get_width() for b in sorted(_bars(ax), key=lambda b: b.get_y())] == pytest.approx(list(scores[:-1]))
    ticks = _ticks(ax, "y")  # highest score first: ✗ false positive, ✓ found, ○ missed
    assert ticks[0] == "label 0 ✗" and ticks[3] == "label 3 ✓" and ticks[12] == "label 12" and ticks[15] == "label 15 ○"
    sizes = {t.get_fontsize() for t in ax.get_yticklabels()} | {t.get_fontsize() for t in ax.get_xticklabels()}
    assert len(sizes) == 1 and sizes.pop() >= 8  # label names as large as the score ticks
    assert not _overlapping(_boxes(fig, ax.get_yticklabels()))
    assert fig.axes[1].get_title() == "gradcam of label 15 (present), score 0.20"
    assert fig._suptitle.get_text() == "run · test · image 12"
    assert ax.get_yticklabels()[15].get_color() == "red"


def test_explorer_view_does_not_title_a_label_agnostic_map_as_the_label() -> None:
    fig, _ = _explorer_figure(method="eigencam", label_agnostic=True)
    title = fig.axes[1].get_title()
    assert title.startswith("eigencam") and "label 15" not in title and "every label" in title


# ---------------------------------------------------------------------------------------------------------------------
# moe
# ---------------------------------------------------------------------------------------------------------------------
def test_moe_heads_bars_are_seed_means() -> None:
    fig = plots.moe_heads(_seed_rows())
    assert sorted(b.get_height() for b in _bars(fig.axes[0])) == [71.0, 76.0]
    assert [t.get_text() for t in fig.axes[1].texts] == ["52.0", "59.0"]
    assert _ticks(fig.axes[0]) == ["baseline", "cpsd"]


def test_gate_heatmaps_values_are_written_as_large_as_the_ticks() -> None:
    rng = np.random.default_rng(0)
    names = [f"label {i}" for i in range(20)]
    gates = {"moe_static": rng.dirichlet(np.ones(3), 20), "moe_dynamic": rng.dirichlet(np.ones(3), 20)}
    fig = plots.gate_heatmaps(gates, names, ["specific 1", "shared 1", "shared 2"])
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_array().reshape(20, 3), gates["moe_static"])
    values = [t for t in ax.texts]
    assert sorted(t.get_text() for t in values) == sorted(f"{v:.2f}" for v in gates["moe_static"].ravel())
    tick_size = ax.get_yticklabels()[0].get_fontsize()
    assert min(t.get_fontsize() for t in values) >= tick_size >= 8
    boxes = _boxes(fig, values)
    assert not _overlapping(boxes)
    assert not _overlapping(_boxes(fig, ax.get_yticklabels()))


def test_gates_per_image_sorts_images_by_context_and_averages_per_context() -> None:
    gates = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]])
    contexts = np.array([1, 0, 1, 0])
    fig = plots.gates_per_image(gates, contexts, ["specific 1", "shared 1"], context_names=["kitchen", "street"],
                                label_name="cup", head="moe_dynamic")
    ax_img, ax_ctx = fig.axes[:2]
    shown = ax_img.images[0].get_array()
    assert shown.shape == (2, 4)
    np.testing.assert_allclose(ax_img.images[1].get_array()[0], [0, 0, 1, 1])  # context strip, sorted
    np.testing.assert_allclose(ax_ctx.collections[0].get_array().reshape(2, 2), [[0.1, 0.9], [0.75, 0.25]])
    assert _ticks(ax_ctx, "y") == ["kitchen (2)", "street (2)"]
    assert fig._suptitle.get_text() == "moe_dynamic: gates of 'cup' per image"


@pytest.mark.slow  # adjustText's 200 iterations: about 2 s
def test_routing_vs_labels_names_each_label_once_and_keeps_names_apart() -> None:
    rng = np.random.default_rng(0)
    names = [f"label{i}" for i in range(20)]
    frame = pd.concat([pd.DataFrame({"head": head, "label": names, "frequency": np.linspace(0.05, 0.3, 20),
                                     "heterogeneity": rng.random(20), "shared_share": share})
                       for head, share in (("moe_static", rng.random(20)),
                                           ("moe_dynamic", 0.6 + 0.01 * rng.random(20)))])
    fig = plots.routing_vs_labels(frame)
    for ax in fig.axes:
        named = [t for t in ax.texts if t.get_text() in names]
        assert sorted(t.get_text() for t in named) == sorted(names)  # once each, not once per head
        assert not _overlapping(_boxes(fig, named))
        offsets = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)][:2]
        np.testing.assert_allclose(offsets[1][:, 1], frame[frame["head"] == "moe_dynamic"]["shared_share"])
    rho = frame[frame["head"] == "moe_static"][["frequency", "shared_share"]].rank().corr().iloc[0, 1]
    assert _legend(fig.axes[0])[0] == f"moe_static (ρ = {rho:.2f})"


def test_routing_vs_labels_marks_a_constant_head() -> None:
    frame = pd.DataFrame({"head": ["moe_static"] * 3, "label": ["a", "b", "c"], "frequency": [0.1, 0.2, 0.3],
                          "heterogeneity": [0.5, 0.6, 0.7], "context_dependence": [0.0, 0.0, 0.0]})
    fig = plots.routing_vs_labels(frame, y="context_dependence")
    assert _legend(fig.axes[0]) == ["moe_static (constant)"] and not fig.axes[0].texts


def test_expert_utilisation_histogram_counts_experts() -> None:
    frame = pd.DataFrame({"utilisation": [0.1, 0.1, 0.5, 0.9], "kind": ["specific", "specific", "shared", "shared"]})
    fig = plots.expert_utilisation({"moe_dynamic": frame}, uniform=0.25, bins=4)
    ax = fig.axes[0]
    assert sum(b.get_height() for b in _bars(ax)) == 4
    assert ax.get_title() == "moe_dynamic (4 experts)" and list(ax.lines[0].get_xdata()) == [0.25, 0.25]


def test_gate_explorer_redraws_for_another_label() -> None:
    rng = np.random.default_rng(0)
    gates = {"moe_dynamic": rng.dirichlet(np.ones(2), (30, 3))}
    targets = rng.integers(0, 2, (30, 3))
    panel = plots.gate_explorer(gates, rng.integers(0, 2, 30), ["a", "b", "c"], ["specific 1", "shared 1"],
                                targets=targets, label=0)
    head_pick, label_pick, context_pick = panel.children[0].children
    output = panel.children[1]
    (first,) = output.outputs
    assert first["data"]["text/plain"] == "gates of a (moe_dynamic, context all)"
    assert base64.b64decode(first["data"]["image/png"]).startswith(b"\x89PNG")
    label_pick.value = 2  # what a pick in the browser does: the observer redraws
    (second,) = output.outputs
    assert second["data"]["text/plain"] == "gates of c (moe_dynamic, context all)"
    assert second["data"]["image/png"] != first["data"]["image/png"]
    context_pick.value = 1
    assert output.outputs[0]["data"]["text/plain"] == "gates of c (moe_dynamic, context 1)"
    fig = plots.gates_per_image(gates["moe_dynamic"][:, 2], np.zeros(30, int), ["s", "h"], label_name="c",
                                subset="context 1")
    assert fig._suptitle.get_text() == "gates of 'c' per image (context 1)"  # the title says which images


# ---------------------------------------------------------------------------------------------------------------------
# partial labels
# ---------------------------------------------------------------------------------------------------------------------
def test_observed_share_bars_per_variant_sorted_by_mean() -> None:
    shares = pd.DataFrame({"label": ["a", "b", "a", "b"], "share": [0.2, 0.6, 0.4, 0.8],
                           "variant": ["uniform", "uniform", "size", "size"]})
    ax = partial.observed_share(shares).axes[0]
    assert _ticks(ax) == ["b", "a"] and _legend(ax) == ["uniform", "size"]
    assert sorted(b.get_height() for b in _bars(ax)) == [0.2, 0.4, 0.6, 0.8]


def test_spml_losses_hatches_the_full_label_bound() -> None:
    runs = pd.DataFrame({"variant": ["bce", "an", "role"], "seed": [0, 0, 0], "test/mAP": [80.0, 60.0, 70.0],
                         "test_shift/mAP": [60.0, 40.0, 50.0]})
    fig = partial.spml_losses(runs)
    ax = fig.axes[0]
    assert _ticks(ax) == ["BCE (full labels)", "AN", "ROLE"]
    bars = sorted(_bars(ax), key=lambda b: b.get_x())
    assert [b.get_height() for b in bars] == [80.0, 60.0, 70.0] and bars[0].get_hatch() == "//"
    assert [t.get_text() for t in ax.texts] == ["80.0", "60.0", "70.0"]


def test_estimator_agreement_lines_in_percent() -> None:
    curves = pd.DataFrame({"epoch": [0, 1], "seed": [0, 0], "hidden_recall": [0.1, 0.5], "precision": [0.2, 0.6],
                           "accuracy": [0.9, 0.95]})
    ax = partial.estimator_agreement(curves).axes[0]
    assert [list(np.round(line.get_ydata(), 6)) for line in ax.lines[:3]] == [[10.0, 50.0], [20.0, 60.0],
                                                                              [90.0, 95.0]]
    assert _legend(ax) == ["hidden_recall", "precision", "accuracy"]
    assert "no ROLE run with track_truth" in _texts(partial.estimator_agreement(curves.iloc[:0]))


def test_recovered_positives_bars_include_the_estimator() -> None:
    runs = pd.DataFrame({"variant": ["an", "role"], "hidden_recall": [0.1, 0.3], "precision": [0.5, 0.7],
                         "estimator_hidden_recall": [np.nan, 0.4], "estimator_precision": [np.nan, 0.8]})
    ax = partial.recovered_positives(runs).axes[0]
    assert _ticks(ax) == ["AN", "ROLE", "ROLE estimator"]
    assert sorted(round(b.get_height(), 6) for b in _bars(ax)) == [10.0, 30.0, 40.0, 50.0, 70.0, 80.0]


# ---------------------------------------------------------------------------------------------------------------------
# shift
# ---------------------------------------------------------------------------------------------------------------------
def _drops() -> pd.DataFrame:
    return pd.DataFrame({"method": ["cpsd", "baseline"], "test/mAP": [80.0, 82.0], "test_shift/mAP": [70.0, 60.0],
                         "drop": [10.0, 22.0], "companion_energy": [0.1, 0.3]})


def test_shift_drops_bars_and_drop_labels() -> None:
    ax = shift.shift_drops(_drops()).axes[0]
    assert _ticks(ax) == ["cpsd", "baseline"]
    assert sorted(b.get_height() for b in _bars(ax)) == [60.0, 70.0, 80.0, 82.0]
    assert [t.get_text() for t in ax.texts] == ["−10.0", "−22.0"]


def test_label_drop_heatmap_is_centred_on_zero() -> None:
    drop = pd.DataFrame([[1.0, -3.0], [2.0, 0.5]], index=["a", "b"], columns=["x", "y"])
    ax = shift.label_drop_heatmap(drop).axes[0]
    mesh = ax.collections[0]
    np.testing.assert_allclose(mesh.get_array().reshape(2, 2), drop.to_numpy())
    assert mesh.norm.vmin == -3.0 and mesh.norm.vmax == 3.0


def test_drop_vs_companion_energy_points_in_percent() -> None:
    joined = _drops()
    joined.attrs["spearman"] = 1.0
    ax = shift.drop_vs_companion_energy(joined).axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[10.0, 10.0], [30.0, 22.0]])
    assert [t.get_text() for t in ax.texts] == ["cpsd", "baseline"] and ax.get_title().endswith("ρ = 1.00)")


def test_drop_vs_companion_energy_names_close_methods_without_overlap() -> None:
    methods = [f"method_{i} (study)" for i in range(8)]
    joined = pd.DataFrame({"method": methods, "companion_energy": [0.239, 0.2395, 0.24, 0.25, 0.2505, 0.26, 0.22,
                                                                   0.241],
                           "drop": [35.5, 35.5, 35.52, 38.6, 38.61, 36.0, 31.7, 35.49]})
    fig = shift.drop_vs_companion_energy(joined)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets()[:, 0], 100 * joined["companion_energy"])
    texts = [t for t in ax.texts if t.get_text() in methods]
    assert sorted(t.get_text() for t in texts) == sorted(methods)
    assert not _overlapping(_boxes(fig, texts))


def test_label_drop_vs_companion_energy_colours_by_method() -> None:
    long = pd.DataFrame({"method": ["a", "a", "b"], "companion_energy": [0.1, 0.2, 0.3], "drop": [1.0, 2.0, 3.0]})
    ax = shift.label_drop_vs_companion_energy(long).axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[10.0, 1.0], [20.0, 2.0], [30.0, 3.0]])
    assert _legend(ax) == ["a", "b"] and ax.get_title() == "Per label and method (Spearman ρ = 1.00)"


# ---------------------------------------------------------------------------------------------------------------------
# Every public figure has a test here
# ---------------------------------------------------------------------------------------------------------------------
def test_every_public_figure_function_is_tested() -> None:
    source = Path(__file__).read_text()
    public = {name for module in (core, cams, moe, partial, shift) for name in module.__all__}
    untested = sorted(name for name in public if f"{name}(" not in source.replace("plots.", "").replace(
        "partial.", "").replace("shift.", ""))
    assert not untested, f"figure functions without a test in {Path(__file__).name}: {untested}"
    assert all(isinstance(getattr(plots, name), type(test_every_public_figure_function_is_tested)) for name in public)


def test_shift_decomposition_draws_each_methods_mean_drops_ordered_by_the_cooccurrence_drop() -> None:
    frame = pd.DataFrame({"method": ["a", "b"], "drop_bg_mean": [10.0, 4.0], "drop_bg_std": [1.0, 0.5],
                          "drop_cooc_mean": [8.0, 2.0], "drop_cooc_std": [0.2, 0.3],
                          "drop_shift_mean": [20.0, 7.0], "drop_shift_std": [1.5, 0.7]})
    fig = shift.shift_decomposition(frame)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "a"]  # smallest drop to test_cooc first
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted([10.0, 4.0, 8.0, 2.0, 20.0, 7.0])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["background (test_bg)", "co-occurrence (test_cooc)", "both (test_shift)"]
    plt.close(fig)
