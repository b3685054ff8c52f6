"""`RunConfig`: one nested config of literals for a training run, round-tripping through dicts and YAML.

Every field is a str, int, float, bool, list, dict or None, so the same object is what papermill injects, what a
YAML file holds and what a checkpoint stores. `None` means "the component's default"; each component receives only
its own section (the head its kwargs, the loss its kwargs), never the whole config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


@dataclass
class DataConfig:
    """Where the images are and how they are fed.

    `dataset` names a reader in `mlic.data.DATASETS` (scenes, coco, voc, nuswide, csv); `options` go to that reader
    (e.g. `class_order`, `difficult`). Splits are the reader's split names.
    """

    dataset: str = "scenes"
    root: str = "data/scenes"
    train_split: str = "train"
    val_split: str | None = "val"
    eval_splits: list[str] = field(default_factory=lambda: ["test", "test_shift"])
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 64
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 0
    randaugment: bool = True
    cutout: float = 0.5
    hflip: bool = True
    bad_images: str = "skip"
    normalize: bool = True
    max_train_images: int | None = None
    #: simulate partial labels on the training split: keyword arguments of `mlic.data.partial.simulate_observed`,
    #: e.g. `{"mode": "single_positive", "seed": 1200}`; evaluation always uses the full labels
    partial: dict[str, Any] | None = None


@dataclass
class ModelConfig:
    """Backbone (a timm name) and head (a name in `mlic.models.HEADS`) with the head's own kwargs."""

    backbone: str = "efficientnet_lite0"
    head: str = "gap"
    pretrained: bool = True
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    freeze_backbone: bool = False


@dataclass
class LossConfig:
    """A loss by name from `mlic.losses.LOSSES`, with its kwargs."""

    name: str = "asl"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser and schedule. Weight decay never applies to biases and normalisation parameters."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "onecycle"
    pct_start: float = 0.2
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    grad_clip: float | None = None
    sam: bool = False
    sam_rho: float = 0.05
    sam_adaptive: bool = False


@dataclass
class TrainConfig:
    """The loop: epochs, EMA, early stopping, device, precision, reproducibility, resume."""

    epochs: int = 10
    ema_decay: float | None = 0.9997
    ema_warmup: bool = False
    early_stopping_patience: int | None = None
    early_stopping_smoothing: float | None = None
    threshold_split: str | None = None
    selection_metric: str = "mAP"
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False
    resume: bool = False
    progress: bool = True
    max_steps_per_epoch: int | None = None
    #: `torch.compile` the training forward: True (inductor) or a backend name ("aot_eager", ...)
    compile: bool | str = False
    #: DistributedDataParallel option for heads that leave parameters unused in a step
    find_unused_parameters: bool = False
    #: several GPUs: BatchNorm statistics over the global batch (SyncBatchNorm); CPU (gloo) keeps per-rank statistics
    sync_batchnorm: bool = True


@dataclass
class RunConfig:
    """Everything one training run needs; `output_dir` becomes the run folder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/default"
    name: str = ""
    recipe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of literals."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None = None) -> RunConfig:
        """Build from a (possibly partial) nested dict; unknown keys are an error naming the key."""
        return _from_dict(cls, data or {}, "RunConfig")

    def to_yaml(self, path: str | Path) -> None:
        """Write as YAML (atomically)."""
        from mlic.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Read a YAML file written by `to_yaml` or by hand (loaded with `yaml.safe_load`)."""
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

    def updated(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with `overrides` applied; keys may be dotted (`"train.epochs": 3`) or nested dicts."""
        merged = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(merged, key, value)
        return RunConfig.from_dict(merged)


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    if isinstance(value, dict) and isinstance(target.get(parts[-1]), dict) and len(parts) == 1:
        target[parts[-1]].update(value)
    else:
        target[parts[-1]] = value


def _from_dict(cls: type[C], data: dict[str, Any], where: str) -> C:
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _SECTIONS.get(name) if cls is RunConfig else None
        kwargs[name] = _from_dict(sub, value, f"{where}.{name}") if sub is not None else value
    return cls(**kwargs)


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}
