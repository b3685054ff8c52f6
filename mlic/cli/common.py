"""What the commands share: the config options (one table, `mlic.core.config.PARAMETERS`), `--set` overrides,
and turning parsed options into a `RunConfig`."""

from __future__ import annotations

import argparse
import typing
from typing import Any

import yaml

from mlic.core.config import PARAMETERS, Parameter, RunConfig
from mlic.core.errors import ConfigError

#: flags every training command takes, in the order `--help` lists them
TRAINING_PARAMETERS = ("dataset", "data_root", "train_split", "val_split", "eval_splits", "image_size", "batch_size",
                       "hflip", "max_train_images", "backbone", "pretrained", "head", "freeze_backbone", "train_from",
                       "loss", "lr", "weight_decay", "epochs", "ema_decay", "ema_warmup", "seed", "device", "progress",
                       "resume", "compile", "num_workers", "threads", "output_dir")


def _is_bool(parameter: Parameter) -> bool:
    return parameter.kind() is bool


def add_config_arguments(parser: argparse.ArgumentParser, names: typing.Iterable[str] = TRAINING_PARAMETERS) -> None:
    """`--config`, `--recipe`, one flag per parameter of `names` (booleans as `--x/--no-x`) and `--set`."""
    parser.add_argument("--config", help="YAML file with RunConfig fields (data, model, loss, optim, train, runtime)")
    parser.add_argument("--recipe", default=None,
                        help="a paper's training recipe applied before the options below (mlic.train.recipes)")
    group = parser.add_argument_group("config fields (each sets one RunConfig field; see also --set)")
    for name in names:
        parameter = PARAMETERS[name]
        text = f"{parameter.help} [{parameter.field}]"
        if _is_bool(parameter):
            group.add_argument(parameter.flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=text)
        else:  # parsed as YAML then checked by the config, so `--lr 1e-5` and `--eval-splits [a, b]` both work
            group.add_argument(parameter.flag, dest=name, type=_yaml_value, default=None, metavar="VALUE",
                               help=text)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. --set loss.kwargs='{gamma_neg: 2}' (repeatable)")


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_set(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (dotted RunConfig keys, YAML values) as an overrides dict."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects section.field=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key.strip()}: not a YAML value: {value!r} ({err})") from None
    return overrides


def config_from_args(args: argparse.Namespace, names: typing.Iterable[str] = TRAINING_PARAMETERS) -> RunConfig:
    """A RunConfig from parsed options: `--config` YAML, then `--recipe`, then the parameter flags present, then
    `--set` overrides."""
    cfg = RunConfig.from_yaml(args.config) if args.config else RunConfig()
    if args.recipe:
        from mlic.train.recipes import apply_recipe

        cfg = apply_recipe(cfg, args.recipe)
    params = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    cfg = RunConfig.from_params(params, base=cfg)
    return cfg.updated(parse_set(args.set))
