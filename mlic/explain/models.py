"""Models to explain, as runs: one run (a folder or a checkpoint), or a CPSD teacher family (one run per label part,
each label explained by the part that predicts it); which runs a notebook explains (`gather_runs`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlic import runs
from mlic.core.config import DataConfig, RunConfig
from mlic.data.sources import load_split
from mlic.data.table import LabelledImages
from mlic.explain.cams import CamResult, _as_pairs, _modes_restored, compute_cams
from mlic.explain.head_maps import available_methods, head_maps, list_methods, method_kind
from mlic.inference import load_images
from mlic.models import backbone_data_config
from mlic.train.engine import resolve_device

log = logging.getLogger(__name__)

#: what names a model to explain: a run folder or checkpoint, or the run folders of a family's parts (in part order)
ModelSource = str | Path | Sequence[str | Path]


@dataclass
class ExplainedModel:
    """A model to explain, made of one or more parts, each predicting some of the global labels.

    Attributes:
        name: display name.
        parts: `(model, columns)` pairs: a classifier and the global label column of each of its outputs.
        class_names: the global label names.
        data: the data config of the full label set (image size, normalisation, dataset, options).
        mean, std: the backbone's normalisation (timm's data config).
        source: the run folder or checkpoint it came from (the first part's, for a family).
    """

    name: str
    parts: list[tuple[nn.Module, np.ndarray]]
    class_names: list[str]
    data: DataConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: Path | None = None
    config: RunConfig | None = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        return int(self.data.image_size)

    @property
    def model(self) -> nn.Module:
        """The first (for a single run: the only) part's classifier."""
        return self.parts[0][0]

    def route(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Part index and local output column of each global label (-1 where no part predicts it)."""
        part = np.full(len(self.class_names), -1, dtype=np.int64)
        local = np.full(len(self.class_names), -1, dtype=np.int64)
        for p, (_, columns) in enumerate(self.parts):
            part[columns] = p
            local[columns] = np.arange(len(columns))
        labels = np.asarray(labels, dtype=np.int64)
        return part[labels], local[labels]

    def inputs(self, table: LabelledImages, rows: Sequence[int]) -> tuple[torch.Tensor, np.ndarray]:
        """Network inputs `[n, 3, S, S]` and displayable images `[n, S, S, 3]` of `rows` (evaluation transform)."""
        return load_images(table, list(rows), self.image_size, normalize=self.data.normalize, mean=self.mean,
                           std=self.std)

    def predict(self, inputs: torch.Tensor, *, batch_size: int = 64) -> np.ndarray:
        """Sigmoid scores `[n, C]` over the global labels (NaN where no part predicts a label)."""
        out = np.full((len(inputs), len(self.class_names)), np.nan, dtype=np.float32)
        for model, columns in self.parts:
            device = next(model.parameters()).device
            with _modes_restored(model), torch.inference_mode():
                model.eval()
                for start in range(0, len(inputs), batch_size):
                    logits = model(inputs[start:start + batch_size].to(device)).float()
                    out[start:start + len(logits), columns] = torch.sigmoid(logits).cpu().numpy()
        return out

    def explain(self, inputs: torch.Tensor, pairs: Any, *, method: str = "gradcam",
                target_layer: str | int | None = None, batch_size: int = 32) -> CamResult:
        """Maps for (row of `inputs`, global label) pairs, each label explained by the part that predicts it."""
        pairs = _as_pairs(pairs)
        kind = method_kind(method)
        part, local = self.route(pairs[:, 1])
        if (part < 0).any():
            missing = sorted({self.class_names[c] for c in pairs[part < 0, 1]})
            raise ValueError(f"{self.name}: no part predicts {missing}")
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        maps = np.zeros((len(pairs), *size), dtype=np.float32)
        scores = np.zeros(len(pairs), dtype=np.float32)
        layer = ""
        for p, (model, _) in enumerate(self.parts):
            sel = np.flatnonzero(part == p)
            if not len(sel):
                continue
            local_pairs = np.stack([pairs[sel, 0], local[sel]], axis=1)
            if kind == "cam":
                result = compute_cams(model, inputs, local_pairs, method=method, target_layer=target_layer,
                                      batch_size=batch_size)
            else:
                result = head_maps(model, inputs, local_pairs, method=method, batch_size=batch_size)
            maps[sel], scores[sel], layer = result.maps, result.scores, result.layer
        return CamResult(maps, pairs, scores, method, layer)

    def explain_table(self, table: LabelledImages, pairs: Any, *, method: str = "gradcam",
                      target_layer: str | int | None = None, batch_size: int = 32) -> CamResult:
        """`explain` for (table row, global label) pairs: loads the images of those rows."""
        pairs = _as_pairs(pairs)
        rows, inverse = np.unique(pairs[:, 0], return_inverse=True)
        inputs, _ = self.inputs(table, rows) if len(rows) else (torch.zeros(0, 3, self.image_size,
                                                                              self.image_size), None)
        result = self.explain(inputs, np.stack([inverse.reshape(-1), pairs[:, 1]], axis=1), method=method,
                              target_layer=target_layer, batch_size=batch_size)
        result.pairs = pairs
        return result

    def methods(self) -> list[str]:
        """Map names that apply to every part (`available_methods`)."""
        common = [set(available_methods(m, self.image_size)) for m, _ in self.parts]
        return [name for name in list_methods() if all(name in c for c in common)]


def _base_data(cfg: RunConfig) -> DataConfig:
    """The data config of the full label set: a `label_subset` view (CPSD teacher) is unwrapped to its base."""
    if cfg.data.dataset != "label_subset":
        return cfg.data
    options = dict(cfg.data.options)
    return cfg.updated({"data.dataset": options["base"], "data.options": dict(options.get("base_options") or {})}).data


def load_explained(source: ModelSource, *, name: str = "", device: str | torch.device = "cpu",
                   class_names: Sequence[str] | None = None) -> ExplainedModel:
    """A run folder, a checkpoint, or the part runs of a CPSD teacher family as one model.

    Args:
        source: a run folder (its best checkpoint, else its last), a checkpoint file, or a list of part run folders.
        name: display name (default: the folder's name).
        device: where the weights go (`auto`: CUDA when present).
        class_names: the global label order; by default the run's classes, and for a family those of the dataset
            the parts were cut from (its training split).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    paths = [Path(p) for p in source] if isinstance(source, (list, tuple)) else [Path(source)]
    loaded = [runs.load_model(runs.checkpoint_of(p), device=device) for p in paths]
    first_cfg = loaded[0][1]
    data = _base_data(first_cfg)
    if class_names is None:
        if len(loaded) == 1 and first_cfg.data.dataset != "label_subset":
            class_names = loaded[0][2]
        else:
            class_names = load_split(data.dataset, data.root, first_cfg.data.train_split, **data.options).class_names
    column = {c: i for i, c in enumerate(class_names)}
    parts = []
    for model, _, names in loaded:
        unknown = [c for c in names if c not in column]
        if unknown:
            raise ValueError(f"{paths[0]}: labels {unknown} are not among the global classes")
        parts.append((model, np.asarray([column[c] for c in names], dtype=np.int64)))
    dcfg = backbone_data_config(loaded[0][0].backbone)
    default = paths[0].parent.name if len(paths) > 1 else paths[0].name
    return ExplainedModel(name=name or default, parts=parts, class_names=list(class_names), data=data,
                          mean=tuple(dcfg["mean"]), std=tuple(dcfg["std"]), source=paths[0], config=first_cfg)


def find_runs(root: str | Path) -> dict[str, ModelSource]:
    """Run folders under `root` (itself included), named by their path relative to `root`; the part runs of a CPSD
    teacher family are listed once, as the family (``teachers/<family>``: the newest run of each part)."""
    root = Path(root)
    found: dict[str, ModelSource] = {}
    families: dict[str, dict[int, Path]] = {}
    for run in runs.find(root, finished=False):
        if not run.checkpoints():
            continue
        tags = run.config.tags
        if tags.get("role") == "teacher" and "family" in tags:
            families.setdefault(str(tags["family"]), {})[int(tags["part"])] = run.path
            continue
        key = run.path.name if run.path == root else str(run.path.relative_to(root))
        found[key] = run.path
    for family, parts in sorted(families.items()):
        found[f"teachers/{family}"] = [parts[t] for t in sorted(parts)]
    return found


def gather_runs(models: Mapping[str, ModelSource] | None = None, *, cpsd_root: str = "", k: int = 5, seed: int = 0,
                fallback: RunConfig | None = None) -> dict[str, ModelSource]:
    """The models a notebook explains: the CPSD study's Figure 4 models (`mlic.studies.cpsd.figure_models`) when
    `cpsd_root` has them, plus the explicit `models` (name → run folder, checkpoint or list of part runs); when both
    are empty, the run of `fallback` as ``baseline``: trained, or reused when a finished run of the same config is
    there (`mlic.runs.run_dir` under `fallback.output_dir`, so changed parameters train a new run)."""
    found: dict[str, ModelSource] = {}
    if cpsd_root:
        from mlic.studies.cpsd import figure_models

        found.update(figure_models(cpsd_root, k=k, seed=seed))
        if not found:
            log.warning("no CPSD runs under %s (k=%d, seed=%d)", cpsd_root, k, seed)
    found.update({str(n): p for n, p in (models or {}).items()})
    if found:
        return found
    if fallback is None:
        raise ValueError("no runs given and no fallback config to train one")
    cfg = fallback.updated({"output_dir": str(runs.run_dir(fallback.output_dir, "baseline", fallback))})
    return {"baseline": str(runs.ensure(cfg).path)}
