"""`RunConfig`: one nested, validated config of literals for a training run, round-tripping through dicts and YAML.

Every field is a str, int, float, bool, list, dict or None, so the same object is what papermill injects, what a
YAML file holds and what a checkpoint stores. `None` means "the component's default"; each component receives only
its own section (the head its kwargs, the loss its kwargs), never the whole config.

Values are checked and coerced where the config is built, not an epoch later: ``"1e-5"`` for a float field becomes
``1e-05``, ``"three"`` for an int field raises a `ConfigError` naming ``train.epochs``, and fields with a closed set
of values (``data.bad_images``, ``train.selection_metric``, ...) or a range (``data.image_size > 0``) are checked.

The config has two kinds of fields. The **identity** of a run (data, model, loss, optim, train) decides its results
and is hashed (`RunConfig.identity_hash`) to tell whether a finished run folder holds this run. The **run-time
knobs** (`runtime`: device, progress bars, resume, compile, loader processes, threads), the folder (`output_dir`)
and the labels (`name`, `tags`, `recipe`) change how or where a run executes, never what it computes.

`PARAMETERS` is the one table of flat names (``data_root``, ``image_size``, ``epochs``, ...) that the command line
(``--data-root``) and the notebooks' parameter cells (``data_root = ...``) share; `RunConfig.from_params` turns a
notebook's flat parameters into a config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from mlic.core.errors import ConfigError

C = TypeVar("C")

#: metrics `train.selection_metric` may name (the keys of `mlic.metrics.evaluate`)
SELECTION_METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
BAD_IMAGE_POLICIES = ("skip", "raise")


# ---------------------------------------------------------------------------------------------------------------------
# Checks: each takes the coerced value and returns a problem (or None)
# ---------------------------------------------------------------------------------------------------------------------
def _positive(value: Any) -> str | None:
    return None if value is None or value > 0 else f"must be > 0, got {value}"


def _non_negative(value: Any) -> str | None:
    return None if value is None or value >= 0 else f"must be >= 0, got {value}"


def _fraction(value: Any) -> str | None:
    return None if value is None or 0 <= value <= 1 else f"must be in [0, 1], got {value}"


def _open_fraction(value: Any) -> str | None:
    return None if value is None or 0 < value < 1 else f"must be in (0, 1) or null, got {value}"


def _decay(value: Any) -> str | None:
    return None if value is None or 0 <= value < 1 else f"must be in [0, 1) (0 or null: none), got {value}"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value is None or value in choices else f"must be one of {', '.join(choices)}; got {value!r}"

    return check


def _not_empty(value: Any) -> str | None:
    return None if value else "must not be empty"


# ---------------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------------
class _Section:
    """Coerces and checks its fields after construction (`_CHECKS`: field name → check)."""

    section: ClassVar[str] = ""
    _CHECKS: ClassVar[dict[str, Callable[[Any], str | None]]] = {}

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            where = f"{self.section}.{f.name}" if self.section else f.name
            value = coerce(getattr(self, f.name), hints[f.name], where)
            problem = self._CHECKS.get(f.name, lambda v: None)(value)
            if problem:
                raise ConfigError(f"{where}: {problem}")
            object.__setattr__(self, f.name, value)


@dataclass
class DataConfig(_Section):
    """Where the images are and how they are fed.

    `dataset` names a reader in `mlic.data.DATASETS` (scenes, coco, voc, nuswide, csv); `options` go to that reader
    (e.g. `class_order`, `difficult`). Splits are the reader's split names.
    """

    section: ClassVar[str] = "data"
    _CHECKS: ClassVar[dict[str, Callable[[Any], str | None]]] = {
        "dataset": _not_empty, "image_size": _positive, "batch_size": _positive, "eval_batch_size": _positive,
        "cutout": _fraction, "bad_images": _one_of(*BAD_IMAGE_POLICIES), "max_bad_fraction": _fraction,
        "max_train_images": _positive,
    }

    dataset: str = "scenes"
    root: str = "data/scenes"
    train_split: str = "train"
    val_split: str | None = "val"
    #: the Scenes test splits by default: test (as train), test_bg (foreign background), test_cooc (no companions),
    #: test_shift (both)
    eval_splits: list[str] = field(default_factory=lambda: ["test", "test_bg", "test_cooc", "test_shift"])
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 64
    batch_size: int = 64
    eval_batch_size: int | None = None
    randaugment: bool = True
    cutout: float = 0.5
    hflip: bool = True
    #: an unreadable image: skipped and counted (`skip`) or the run stops (`raise`)
    bad_images: str = "skip"
    #: the largest share of a split's images that may be skipped before the run fails
    max_bad_fraction: float = 0.1
    normalize: bool = True
    max_train_images: int | None = None
    #: simulate partial labels on the training split: keyword arguments of `mlic.data.partial.simulate_observed`,
    #: e.g. `{"mode": "single_positive", "seed": 1200}`; evaluation always uses the full labels
    partial: dict[str, Any] | None = None


@dataclass
class ModelConfig(_Section):
    """Backbone (a timm name) and head (a name in `mlic.models.HEADS`) with the head's own kwargs."""

    section: ClassVar[str] = "model"
    _CHECKS: ClassVar[dict[str, Callable[[Any], str | None]]] = {"backbone": _not_empty, "head": _not_empty}

    backbone: str = "efficientnet_lite0"
    head: str = "gap"
    pretrained: bool = True
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    #: head-only training on cached backbone features (a linear probe for `gap`)
    freeze_backbone: bool = False
    #: a cut point of the backbone (`mlic.models.cuts`, e.g. "blocks.5"): the modules before it are frozen and their
    #: output is cached once; the rest of the backbone and the head train on the cache. None: end to end
    train_from: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.freeze_backbone and self.train_from is not None:
            raise ConfigError("model.freeze_backbone and model.train_from exclude each other: freeze_backbone trains "
                              "the head only, train_from trains from a backbone module on")


@dataclass
class LossConfig(_Section):
    """A loss by name from `mlic.losses.LOSSES`, with its kwargs."""

    section: ClassVar[str] = "loss"
    _CHECKS: ClassVar[dict[str, Callable[[Any], str | None]]] = {"name": _not_empty}

    name: str = "asl"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig(_Section):
    """Optimiser and schedule. Weight decay never applies to biases and normalisation parameters."""

    section: ClassVar[str] = "optim"
    _CHECKS: ClassVar[dict[str, Callable[[Any], str | None]]] = {
        "name": _one_of("adam", "adamw", "sgd"), "lr": _positive, "weight_decay": _non_negative,
        "scheduler": _one_of("onecycle", "cosine", "constant"), "pct_start": _open_fraction,
        "div_factor": _positive, "final_div_factor": _positive, "grad_clip": _positive, "sam_rho": _positive,
    }

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
class TrainConfig(_Section):
    """The loop: epochs, EMA, early stopping, selection, precision, reproducibility."""

    section: ClassVar[str] = "train"
    _CHECKS: ClassVar[dict[str, Callable[[Any], str | None]]] = {
        "epochs": _positive, "ema_decay": _decay, "early_stopping_patience": _positive,
        "early_stopping_smoothing": _open_fraction, "selection_metric": _one_of(*SELECTION_METRICS),
        "seed": _non_negative, "max_steps_per_epoch": _positive,
    }

    epochs: int = 10
    ema_decay: float | None = 0.9997
    #: grow the EMA decay from 0 over the first steps (timm's warmup), for short runs
    ema_warmup: bool = False
    early_stopping_patience: int | None = None
    early_stopping_smoothing: float | None = None
    threshold_split: str | None = None
    selection_metric: str = "mAP"
    amp: bool = True
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False
    max_steps_per_epoch: int | None = None
    #: DistributedDataParallel option for heads that leave parameters unused in a step
    find_unused_parameters: bool = False
    #: several GPUs: BatchNorm statistics over the global batch (SyncBatchNorm); CPU (gloo) keeps per-rank statistics
    sync_batchnorm: bool = True


@dataclass
class RuntimeConfig(_Section):
    """How a run executes, never what it computes: not part of a run's identity."""

    section: ClassVar[str] = "runtime"
    _CHECKS: ClassVar[dict[str, Callable[[Any], str | None]]] = {"num_workers": _non_negative,
                                                                 "threads": _positive}

    #: auto (CUDA when present), cpu, cuda, cuda:1, ...
    device: str = "auto"
    progress: bool = True
    #: continue from `checkpoints/last.pt` of the run folder
    resume: bool = False
    #: `torch.compile` the training forward: True (inductor) or a backend name ("aot_eager", ...)
    compile: bool | str = False
    #: data-loading processes
    num_workers: int = 0
    #: torch intra-op threads (None: torch's default)
    threads: int | None = None


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
}
IDENTITY_SECTIONS = ("data", "model", "loss", "optim", "train")


@dataclass
class RunConfig:
    """Everything one training run needs; `output_dir` becomes the run folder.

    `name` and `tags` (free-form literals, e.g. ``{"study": "cpsd", "role": "teacher"}``) label a run for the
    studies that look for it; like `recipe` (the name of the recipe applied) they are not part of its identity.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output_dir: str = "runs/default"
    name: str = ""
    tags: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name}: expected a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        self.output_dir = coerce(self.output_dir, str, "output_dir")
        self.name = coerce(self.name, str, "name")
        self.tags = coerce(self.tags, dict[str, Any], "tags")
        self.recipe = coerce(self.recipe, str | None, "recipe")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of literals."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that decide a run's results: data, model, loss, optim and train (not the run-time knobs, the
        folder or the labels)."""
        full = self.to_dict()
        return {name: full[name] for name in IDENTITY_SECTIONS}

    def identity_hash(self) -> str:
        """A short stable digest of `identity()`: equal for two configs exactly when they train the same run."""
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None) -> RunConfig:
        """Build from a (possibly partial) nested dict; unknown keys and bad values are errors naming the field."""
        data = dict(data or {})
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; valid keys: {sorted(fields)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            section = _SECTIONS.get(name)
            kwargs[name] = _section_from_dict(section, value, name) if section is not None else value
        return cls(**kwargs)

    def to_yaml(self, path: str | Path) -> None:
        """Write as YAML (atomically)."""
        from mlic.core.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Read a YAML file written by `to_yaml` or by hand (loaded with `yaml.safe_load`); errors name the file."""
        from mlic.core.io import read_yaml

        path = Path(path)
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def updated(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with `overrides` applied; keys may be dotted (`"train.epochs": 3`) or nested dicts."""
        merged = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(merged, key, value)
        return RunConfig.from_dict(merged)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
        """A config from a notebook's flat parameters (`PARAMETERS` names: ``data_root``, ``epochs``, ...).

        Names that are not in `PARAMETERS` are ignored, so a notebook may pass ``globals()``. `base` (default: the
        defaults) provides every field the parameters leave out.
        """
        overrides = {}
        for name, parameter in PARAMETERS.items():
            if name in params:
                overrides[parameter.field] = parameter.to_field(params[name])
        return (base or cls()).updated(overrides)


def _section_from_dict(cls: type[C], data: Any, where: str) -> C:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    return cls(**data)


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        nested = target.setdefault(part, {})
        if not isinstance(nested, dict):
            raise ConfigError(f"{key}: {part!r} is not a section")
        target = nested
    if isinstance(value, dict) and isinstance(target.get(parts[-1]), dict) and len(parts) == 1:
        target[parts[-1]].update(value)
    else:
        target[parts[-1]] = value


# ---------------------------------------------------------------------------------------------------------------------
# Coercion of literals to a field's declared type
# ---------------------------------------------------------------------------------------------------------------------
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, kind: Any, where: str) -> Any:
    """`value` as the type `kind` (int, float, bool, str, `X | None`, `list[X]`, `dict[str, X]`, `bool | str`, Any),
    converting unambiguous literals (``"1e-5"`` → 1e-05, ``"3"`` → 3, ``"true"`` → True); a `ConfigError` naming
    `where` otherwise."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, _UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        exact = [a for a in options if _is_instance(value, a)]
        for option in exact + [a for a in options if a not in exact]:
            try:
                return coerce(value, option, where)
            except ConfigError:
                continue
        names = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if value is None:
        raise ConfigError(f"{where}: expected {_type_name(kind)}, got null")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {str(k): coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"{where}: no coercion to {kind!r}")  # pragma: no cover - a field of an unsupported type


_UnionType = type(int | None)


def _is_instance(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind) or kind
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(origin, type) and isinstance(value, origin)


def _type_name(kind: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if kind in names:
        return names[kind]
    origin = typing.get_origin(kind)
    return {list: "a list", dict: "a mapping"}.get(origin, str(kind))


# ---------------------------------------------------------------------------------------------------------------------
# The flat parameters shared by the command line and the notebooks
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parameter:
    """A flat name for one config field: ``--<name with dashes>`` on the command line, ``<name>`` in a notebook.

    `zero_is_none`: 0 or an empty string (literals a notebook can hold) mean null, "off" or "all" for fields like
    ``train.ema_decay``, ``data.max_train_images`` and ``model.train_from``.
    """

    name: str
    field: str
    help: str
    zero_is_none: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag: ``--data-root`` for ``data_root``."""
        return "--" + self.name.replace("_", "-")

    def kind(self) -> Any:
        """The declared type of the field."""
        section, _, name = self.field.rpartition(".")
        cls = _SECTIONS[section] if section else RunConfig
        return _hints(cls)[name]

    def to_field(self, value: Any) -> Any:
        """`value` as the field holds it (0 → None where `zero_is_none`)."""
        if self.zero_is_none and (value == "" or (value in (0, 0.0) and not isinstance(value, bool))):
            return None
        return value


PARAMETERS: dict[str, Parameter] = {p.name: p for p in [
    Parameter("dataset", "data.dataset", "dataset reader: scenes, coco, voc, nuswide or csv"),
    Parameter("data_root", "data.root", "folder of the dataset in its own layout (e.g. the COCO root with "
                                        "annotations/ and train2014/)"),
    Parameter("train_split", "data.train_split", "split to train on (e.g. train, train2014, trainval)"),
    Parameter("val_split", "data.val_split", "split used to pick the best epoch and EMA vs raw weights"),
    Parameter("eval_splits", "data.eval_splits", "splits evaluated at the end (a YAML list on the command line)"),
    Parameter("image_size", "data.image_size", "side of the square (squish) resize; the papers use 448"),
    Parameter("batch_size", "data.batch_size", "images per optimiser step (the global batch under torchrun)"),
    Parameter("hflip", "data.hflip", "horizontal flips in training"),
    Parameter("max_train_images", "data.max_train_images", "train on the first N images only (0: all)",
              zero_is_none=True),
    Parameter("backbone", "model.backbone", "timm model name; efficientnet_lite0 has ImageNet weights offline"),
    Parameter("pretrained", "model.pretrained", "ImageNet weights for the backbone"),
    Parameter("head", "model.head", "classification head (mlic.models.list_heads())"),
    Parameter("freeze_backbone", "model.freeze_backbone",
              "cache backbone features once (memory-mapped) and train only the head"),
    Parameter("train_from", "model.train_from", "a backbone module (e.g. blocks.5): freeze and cache what comes "
                                                "before it, train the rest (empty: end to end)", zero_is_none=True),
    Parameter("loss", "loss.name", "loss (mlic.losses.list_losses())"),
    Parameter("lr", "optim.lr", "peak learning rate of the OneCycle schedule"),
    Parameter("weight_decay", "optim.weight_decay", "weight decay (never on biases and norms)"),
    Parameter("epochs", "train.epochs", "number of epochs"),
    Parameter("ema_decay", "train.ema_decay", "EMA of the weights (0: none)", zero_is_none=True),
    Parameter("ema_warmup", "train.ema_warmup", "grow the EMA decay from 0 over the first steps (short runs)"),
    Parameter("seed", "train.seed", "seed of weights init, data order and augmentation"),
    Parameter("device", "runtime.device", "auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ..."),
    Parameter("progress", "runtime.progress", "progress bars"),
    Parameter("resume", "runtime.resume", "continue from <output-dir>/checkpoints/last.pt"),
    Parameter("compile", "runtime.compile", "torch.compile the training forward (inductor; worth it on GPUs)"),
    Parameter("num_workers", "runtime.num_workers", "data-loading processes"),
    Parameter("threads", "runtime.threads", "torch threads of the process (0: torch's default)", zero_is_none=True),
    Parameter("output_dir", "output_dir", "run folder: config, metrics, predictions, checkpoints"),
]}
"""Flat names of config fields, shared by the command line (`mlic train --data-root`) and notebooks."""
