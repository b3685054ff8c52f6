"""An ipywidgets explorer of runs: pick a run, a split, an image (or the worst false positives of a label), see the
predictions against the truth, every label's score, and the CAM of any label under any CAM method.

All the logic lives here so that a notebook only builds an `Explorer` and shows it. Each change of a widget calls
`Explorer.update()`, which draws the view into the `Output` widget's outputs (a PNG) and the score table into an
`HTML` widget — plain widget state, so it renders in JupyterLab and can be checked without a browser. Under papermill
(no widget front end) `Explorer.figure()` gives the same view as a static matplotlib figure.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlic.core import paths
from mlic.data.table import LabelledImages
from mlic.explain import models, scoring
from mlic.runs import CHECKPOINTS_DIR, Run, is_run

log = logging.getLogger(__name__)

__all__ = ["Explorer", "MODES", "LABEL_AGNOSTIC_METHODS", "run_name"]

MODES: tuple[str, ...] = ("browse", "worst false positives")
"""How the image list is made: every image of the split, or the images where a label is absent but scored highest."""

LABEL_AGNOSTIC_METHODS: frozenset[str] = frozenset({"eigencam"})
"""CAM methods whose map ignores the target label: pytorch-grad-cam's EigenCAM projects the activations on their
first principal component (Muhammad & Yeasin 2020), so every label gets the same map."""

_RUN_FOLDER = re.compile(r"seed\d+-[0-9a-f]+")
"""The name `mlic.runs.run_dir` gives a run folder (``seed<seed>-<identity hash>``, under its variant's folder)."""


def run_name(path: str | Path) -> str:
    """A readable name of a run folder (or of a checkpoint in one): the folder's name, or ``<variant>/<folder>``
    for a folder named by `mlic.runs.run_dir` (whose own name is only the seed and a hash)."""
    folder = paths.resolve(path)
    if folder.is_file():
        folder = folder.parent.parent if folder.parent.name == CHECKPOINTS_DIR else folder.parent
    return f"{folder.parent.name}/{folder.name}" if _RUN_FOLDER.fullmatch(folder.name) else folder.name


def expand_runs(runs: Mapping[str, Any] | Sequence[str | Path] | str | Path) -> dict[str, Any]:
    """Runs by name: a mapping is kept (a value that is a folder of runs is expanded with `models.find_runs`; a list
    value is a teacher family); a path or a list of paths is named by `run_name`. Relative paths resolve against
    the lab's home (`mlic.core.paths`)."""
    if isinstance(runs, (str, Path)):
        runs = [runs]
    items = list(runs.items()) if isinstance(runs, Mapping) else [(run_name(p), p) for p in runs]
    out: dict[str, Any] = {}
    for name, value in items:
        if isinstance(value, (list, tuple)):
            out[str(name)] = [paths.resolve(p) for p in value]
            continue
        value = paths.resolve(value)
        if value.is_file() or is_run(value):
            out[str(name)] = value
            continue
        found = models.find_runs(value)
        if not found:
            raise FileNotFoundError(f"{paths.where(value)}: no run folder (with checkpoints) in it")
        out.update({f"{name}/{key}" if len(items) > 1 else key: p for key, p in found.items()})
    if not out:
        raise ValueError("no runs to explore")
    return out


class Explorer:
    """Widgets over runs: run, split, mode (browse / worst false positives of a label), image, CAM label, method.

    Args:
        runs: name → run folder (or checkpoint, or teacher family, or a folder of runs); a single path is fine.
        data_root: dataset folder (default: each run's own `data.root`).
        splits: splits offered (default: the first run's validation and evaluation splits).
        device: where models run.
        method: the first CAM method shown.
        target_layer: the CAMs' layer (see `mlic.explain.resolve_target_layer`).
        threshold: score above which a label counts as predicted.
        top_false_positives: images listed in the "worst false positives" mode.
    """

    def __init__(self, runs: Mapping[str, str | Path] | Sequence[str | Path] | str | Path, *,
                 data_root: str | None = None, splits: Sequence[str] | None = None, device: str = "cpu",
                 method: str = "gradcam", target_layer: str | int | None = None, threshold: float = 0.5,
                 top_false_positives: int = 24) -> None:
        import ipywidgets as widgets

        self.runs = expand_runs(runs)
        self.data_root = data_root
        self.device = device
        self.target_layer = target_layer
        self.threshold = threshold
        self.top_false_positives = top_false_positives
        self._models: dict[str, models.ExplainedModel] = {}
        self._tables: dict[tuple[str, str, str], LabelledImages] = {}
        self._scores: dict[tuple[str, str], np.ndarray] = {}
        self._hold = 0
        self.renders = 0
        self.last_error = ""

        first = self.model(next(iter(self.runs)))
        data = first.data
        offered = list(splits) if splits else [s for s in [data.val_split, *data.eval_splits] if s] or ["test"]
        names = first.class_names
        self.run_pick = widgets.Dropdown(options=list(self.runs), description="run")
        self.split_pick = widgets.Dropdown(options=offered, value=offered[-1], description="split")
        self.mode_pick = widgets.ToggleButtons(options=list(MODES), value=MODES[0], description="images",
                                               style={"button_width": "auto"})  # whole names, not "worst fal..."
        self.fp_label_pick = widgets.Dropdown(options=[(n, i) for i, n in enumerate(names)], value=0,
                                              description="of label")
        self.image_pick = widgets.Dropdown(options=[], description="image", layout=widgets.Layout(width="30em"))
        self.label_pick = widgets.Dropdown(options=[(n, i) for i, n in enumerate(names)], value=0,
                                           description="CAM of")
        methods = first.methods()
        self.method_pick = widgets.Dropdown(options=methods, value=method if method in methods else methods[0],
                                            description="method")
        self.scores_html = widgets.HTML()
        self.status = widgets.HTML()
        self.output = widgets.Output()
        self.widget = widgets.VBox([
            widgets.HBox([self.run_pick, self.split_pick]),
            widgets.HBox([self.mode_pick, self.fp_label_pick]),
            widgets.HBox([self.image_pick, self.label_pick, self.method_pick]),
            self.status, self.output, self.scores_html,
        ])
        self.run_pick.observe(self._on_run, names="value")
        self.split_pick.observe(self._on_images, names="value")
        self.mode_pick.observe(self._on_images, names="value")
        self.fp_label_pick.observe(self._on_images, names="value")
        self.image_pick.observe(self._on_image, names="value")
        self.label_pick.observe(self._on_change, names="value")
        self.method_pick.observe(self._on_change, names="value")
        with self._held():
            self._refresh_images()
        self.update()

    # ---------------------------------------------------------------- data
    def model(self, name: str) -> models.ExplainedModel:
        """The run `name` as an `ExplainedModel` (loaded once)."""
        if name not in self._models:
            self._models[name] = models.load_explained(self.runs[name], name=name, device=self.device)
        return self._models[name]

    def table(self, name: str, split: str) -> LabelledImages:
        """Split `split` of run `name`'s dataset (its full label set)."""
        from mlic.data.sources import load_split

        data = self.model(name).data
        root = self.data_root or data.root
        key = (data.dataset, str(root), split)
        if key not in self._tables:
            self._tables[key] = load_split(data.dataset, root, split, **data.options)
        return self._tables[key]

    def scores(self, name: str, split: str) -> np.ndarray:
        """Sigmoid scores `[N, C]` of run `name` on `split`: the run's saved predictions when they cover the
        split's images in order and its labels, else computed (and kept)."""
        key = (name, split)
        if key in self._scores:
            return self._scores[key]
        model, table = self.model(name), self.table(name, split)
        scores = None
        source = model.source
        if source is not None and source.is_dir() and len(model.parts) == 1:
            run = Run(source)
            if run.predictions_file(split).is_file():
                saved = run.predictions(split)
                same_images = [str(i) for i in saved["image_ids"]] == [str(i) for i in table.image_ids]
                same_labels = [str(c) for c in saved["class_names"]] == list(model.class_names)
                if same_images and same_labels:
                    scores = saved["scores"].astype(np.float32)
        if scores is None:
            out = []
            for start in range(0, len(table), 256):
                rows = np.arange(start, min(start + 256, len(table)))
                out.append(model.predict(model.inputs(table, rows)[0]))
            scores = np.concatenate(out) if out else np.zeros((0, len(model.class_names)), np.float32)
        self._scores[key] = scores
        return scores

    def false_positives(self, label: int, *, n: int | None = None) -> np.ndarray:
        """Rows of the current split where `label` is absent, highest score for it first (`n` of them)."""
        name, split = self.run_pick.value, self.split_pick.value
        table, scores = self.table(name, split), self.scores(name, split)
        negatives = np.flatnonzero(table.labels[:, label] == 0)
        order = negatives[np.argsort(-np.nan_to_num(scores[negatives, label], nan=-1.0), kind="stable")]
        return order[: n or self.top_false_positives]

    def false_positive_pairs(self, n: int | None = None) -> np.ndarray:
        """`[n, 2]` (row, label) of the current split's worst false positives of the "of label" widget's label."""
        label = int(self.fp_label_pick.value)
        return np.array([[r, label] for r in self.false_positives(label, n=n)], dtype=np.int64).reshape(-1, 2)

    def most_confused_label(self, split: str | None = None) -> str:
        """The label whose highest-scored absent occurrence scores highest on `split` (default: the current one):
        where a model is most sure of an object that is not there."""
        name, split = self.run_pick.value, split or self.split_pick.value
        table, scores = self.table(name, split), np.nan_to_num(self.scores(name, split), nan=-1.0)
        worst = np.where(table.labels == 0, scores, -1.0).max(axis=0)
        return table.class_names[int(np.argmax(worst))]

    # ---------------------------------------------------------------- widgets
    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """Change several widgets with one redraw at the end (observers return early while held)."""
        self._hold += 1
        try:
            yield
        finally:
            self._hold -= 1

    def _refresh_images(self) -> None:
        name, split = self.run_pick.value, self.split_pick.value
        table, scores = self.table(name, split), self.scores(name, split)
        names = table.class_names
        if self.mode_pick.value == MODES[1]:
            c = int(self.fp_label_pick.value)
            rows = self.false_positives(c)
            options = [(f"image {table.image_ids[r]} · {names[c]} {scores[r, c]:.2f} · truth: "
                        f"{self._truth_text(table, r)}", int(r)) for r in rows]
        else:
            options = [(f"image {table.image_ids[r]} · {self._truth_text(table, r)}", r) for r in range(len(table))]
        self.image_pick.options = options
        self.image_pick.value = options[0][1] if options else None
        self._default_label()

    @staticmethod
    def _truth_text(table: LabelledImages, row: int) -> str:
        return ", ".join(table.class_names[c] for c in np.flatnonzero(table.labels[row])) or "(none)"

    def _default_label(self) -> None:
        """The CAM label that fits the image: the false-positive label in that mode, else the best-scored true label
        (the best-scored label when none is true)."""
        if self.image_pick.value is None:
            return
        if self.mode_pick.value == MODES[1]:
            self.label_pick.value = int(self.fp_label_pick.value)
            return
        name, split, row = self.run_pick.value, self.split_pick.value, int(self.image_pick.value)
        table, scores = self.table(name, split), np.nan_to_num(self.scores(name, split)[row], nan=-1.0)
        truth = np.flatnonzero(table.labels[row])
        self.label_pick.value = int(truth[np.argmax(scores[truth])]) if len(truth) else int(np.argmax(scores))

    def _apply_run(self) -> None:
        """A new run: its methods (head-native maps differ between heads), then its images."""
        methods = self.model(self.run_pick.value).methods()
        current = self.method_pick.value
        self.method_pick.options = methods
        self.method_pick.value = current if current in methods else methods[0]
        self._refresh_images()

    def _on_run(self, _: Any = None) -> None:
        if self._hold:
            return
        self.status.value = "<i>loading the run and scoring the split ...</i>"  # a teacher family takes seconds
        with self._held():
            self._apply_run()
        self.update()

    def _on_images(self, _: Any = None) -> None:
        if self._hold:
            return
        with self._held():
            self._refresh_images()
        self.update()

    def _on_image(self, _: Any = None) -> None:
        if self._hold:
            return
        with self._held():
            self._default_label()
        self.update()

    def _on_change(self, _: Any = None) -> None:
        if not self._hold:
            self.update()

    def select(self, **values: Any) -> None:
        """Set widgets by name — ``run``, ``split``, ``mode``, ``fp_label`` (name or column), ``image`` (row),
        ``label`` (name or column), ``method`` — in that order, then draw once."""
        picks = {"run": self.run_pick, "split": self.split_pick, "mode": self.mode_pick,
                 "fp_label": self.fp_label_pick, "image": self.image_pick, "label": self.label_pick,
                 "method": self.method_pick}
        unknown = set(values) - set(picks)
        if unknown:
            raise ValueError(f"unknown explorer widgets {sorted(unknown)}; use {list(picks)}")
        for key in picks:
            if key not in values or values[key] is None:
                continue
            value = values[key]
            if key in ("fp_label", "label") and isinstance(value, str):
                names = self.model(self.run_pick.value).class_names
                if value not in names:
                    raise ValueError(f"unknown label {value!r}; labels: {', '.join(names)}")
                value = names.index(value)
            with self._held():
                picks[key].value = value
                if key == "run":
                    self._apply_run()
                elif key in ("split", "mode", "fp_label"):
                    self._refresh_images()
                elif key == "image":
                    self._default_label()
        self.update()

    # ---------------------------------------------------------------- drawing
    def state(self) -> dict[str, Any]:
        """The current selection: run, split, row, image id, label, method, the image's true and predicted labels."""
        name, split, row = self.run_pick.value, self.split_pick.value, self.image_pick.value
        out: dict[str, Any] = {"run": name, "split": split, "mode": self.mode_pick.value, "row": row,
                               "label": self.label_pick.label, "method": self.method_pick.value,
                               "renders": self.renders}
        if row is not None:
            table, scores = self.table(name, split), self.scores(name, split)
            out["image_id"] = table.image_ids[row]
            out["truth"] = [table.class_names[c] for c in np.flatnonzero(table.labels[row])]
            out["predicted"] = [table.class_names[c] for c in np.flatnonzero(scores[row] >= self.threshold)]
        return out

    def cam(self, method: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """The displayed image `[S, S, 3]`, the CAM `[S, S]` of the current label under `method` (default: the
        selected one) and the label's score."""
        name, split, row, label = (self.run_pick.value, self.split_pick.value, int(self.image_pick.value),
                                   int(self.label_pick.value))
        model, table = self.model(name), self.table(name, split)
        inputs, images = model.inputs(table, [row])
        result = model.explain(inputs, [[0, label]], method=method or self.method_pick.value,
                               target_layer=self.target_layer)
        return images[0], result.maps[0], float(result.scores[0])

    def boxes(self) -> np.ndarray | None:
        """The current image's boxes scaled to the shown image (class, x, y, w, h)."""
        name, split, row = self.run_pick.value, self.split_pick.value, int(self.image_pick.value)
        table, size = self.table(name, split), self.model(name).image_size
        if table.boxes is None:
            return None
        w, h = scoring.image_sizes(table, [row])[0]
        boxes = np.asarray(table.boxes[row], dtype=np.float64).reshape(-1, 5).copy()
        boxes[:, [1, 3]] *= size / w
        boxes[:, [2, 4]] *= size / h
        return boxes

    def figure(self) -> Any:
        """The current view as a matplotlib figure (`mlic.plots.explorer_view`)."""
        from mlic import plots

        name, split, row = self.run_pick.value, self.split_pick.value, int(self.image_pick.value)
        table, scores = self.table(name, split), self.scores(name, split)
        image, cam, _ = self.cam()
        return plots.explorer_view(image, cam, class_names=table.class_names, scores=scores[row],
                                   truth=table.labels[row], label=int(self.label_pick.value), boxes=self.boxes(),
                                   threshold=self.threshold, method=self.method_pick.value,
                                   label_agnostic=self.method_pick.value in LABEL_AGNOSTIC_METHODS,
                                   title=f"{name} · {split} · image {table.image_ids[row]}")

    def method_figure(self, methods: Sequence[str]) -> Any:
        """The current image and label under several CAM methods (`mlic.plots.cam_methods`)."""
        from mlic import plots

        available = set(self.method_pick.options)
        maps, scores = {}, {}
        image = None
        for method in methods:
            if method not in available:
                log.warning("method %s does not apply to run %s; skipped", method, self.run_pick.value)
                continue
            image, maps[method], scores[method] = self.cam(method)
        if image is None:
            image = self.cam()[0]
        label = int(self.label_pick.value)
        return plots.cam_methods(image, maps, boxes=self.boxes(), target=label, label=self.label_pick.label,
                                 scores=scores)

    def score_table(self) -> pd.DataFrame:
        """Every label of the current image: truth, score, predicted, and the verdict (TP, FP, FN, TN)."""
        name, split, row = self.run_pick.value, self.split_pick.value, int(self.image_pick.value)
        table, scores = self.table(name, split), self.scores(name, split)
        truth, score = table.labels[row].astype(bool), scores[row]
        predicted = score >= self.threshold
        verdict = np.where(truth & predicted, "TP", np.where(predicted, "FP", np.where(truth, "FN", "TN")))
        frame = pd.DataFrame({"label": table.class_names, "truth": truth, "score": np.round(score, 3),
                              "predicted": predicted, "verdict": verdict})
        return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    def update(self) -> None:
        """Redraw the view (a PNG in the `Output` widget) and the score table for the current selection."""
        import matplotlib.pyplot as plt

        if self.image_pick.value is None:
            self.output.outputs = ()
            self.status.value = "<i>no image to show</i>"
            return
        try:
            fig = self.figure()
        except (ValueError, RuntimeError) as err:  # e.g. a method that does not apply: say so in the panel
            self.last_error = f"{type(err).__name__}: {err}"
            log.warning("explorer: %s", self.last_error)
            self.status.value = f"<span style='color:#b00'>{html.escape(self.last_error)}</span>"
            return
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        png = base64.b64encode(buffer.getvalue()).decode("ascii")
        self.output.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": png, "text/plain": "<explorer view>"}},)
        frame = self.score_table()
        shown = frame[(frame["truth"]) | (frame["predicted"])] if len(frame) > 12 else frame
        self.scores_html.value = shown.to_html(index=False, float_format=lambda v: f"{v:.3f}")
        self.renders += 1
        self.last_error = ""
        s = self.state()
        self.status.value = html.escape(f"{s['run']} · {s['split']} · image {s.get('image_id')} · truth: "
                                        f"{', '.join(s.get('truth', [])) or '(none)'} · predicted: "
                                        f"{', '.join(s.get('predicted', [])) or '(none)'}")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
