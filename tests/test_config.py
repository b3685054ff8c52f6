"""RunConfig checks and coerces values where it is built, keeps run-time knobs out of a run's identity, and turns
a notebook's flat parameters or the command line's flags (one table) into a config."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlic.cli.common import parse_set
from mlic.cli.main import build_parser
from mlic.core.config import PARAMETERS, RunConfig
from mlic.core.errors import ConfigError


def test_strings_that_are_numbers_become_numbers() -> None:
    cfg = RunConfig().updated(parse_set(["optim.lr=1e-5", "train.epochs=3", "data.hflip=false"]))
    assert cfg.optim.lr == 1e-05 and isinstance(cfg.optim.lr, float)  # YAML reads 1e-5 as a string
    assert cfg.train.epochs == 3 and cfg.data.hflip is False
    assert RunConfig().updated({"train.epochs": "4", "optim.weight_decay": 0}).optim.weight_decay == 0.0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train.epochs": "three"}, "train.epochs: expected an integer, got 'three'"),
    ({"train.epochs": 2.5}, "train.epochs: expected an integer"),
    ({"train.epochs": 0}, "train.epochs: must be > 0"),
    ({"data.image_size": 0}, "data.image_size: must be > 0"),
    ({"data.bad_images": "ignore"}, "data.bad_images: must be one of skip, raise; got 'ignore'"),
    ({"train.selection_metric": "map"}, "train.selection_metric: must be one of mAP"),
    ({"optim.name": "lamb"}, "optim.name: must be one of adam, adamw, sgd"),
    ({"optim.lr": -1}, "optim.lr: must be > 0"),
    ({"data.max_bad_fraction": 1.5}, r"data.max_bad_fraction: must be in \[0, 1\]"),
    ({"data.eval_splits": "test"}, "data.eval_splits: expected a list"),
    ({"model.head_kwargs": [1]}, "model.head_kwargs: expected a mapping"),
    ({"runtime.progress": "maybe"}, "runtime.progress: expected true or false"),
])
def test_bad_values_are_refused_at_construction_naming_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig().updated(overrides)


def test_yaml_errors_name_the_file_and_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: [3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml \(line \d+, column \d+\): not valid YAML"):
        RunConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "typed.yaml").write_text("train: {epochs: three}\n")
    with pytest.raises(ConfigError, match=r"typed\.yaml: train\.epochs: expected an integer"):
        RunConfig.from_yaml(tmp_path / "typed.yaml")


def test_identity_leaves_out_run_time_knobs_folder_and_labels() -> None:
    cfg = RunConfig()
    knobs = cfg.updated({"runtime.device": "cpu", "runtime.progress": False, "runtime.resume": True,
                         "runtime.compile": "aot_eager", "runtime.num_workers": 4, "runtime.threads": 1,
                         "output_dir": "x", "name": "y", "tags": {"t": 1}, "recipe": "aam_paper"})
    assert knobs.identity_hash() == cfg.identity_hash() and "runtime" not in cfg.identity()
    for changed in ({"optim.lr": 2e-3}, {"train.seed": 1},
                    {"data.eval_splits": ["test"]}, {"loss.kwargs": {"gamma_neg": 2}}):
        assert cfg.updated(changed).identity_hash() != cfg.identity_hash()


def test_notebook_parameters_map_to_fields_and_others_are_ignored() -> None:
    params = {"data_root": "/d", "epochs": 3, "lr": 0.01, "ema_decay": 0.0, "max_train_images": 0, "loss": "bce",
              "device": "cpu", "freeze_backbone": True, "seed": 2, "output_dir": "out", "unrelated": object(),
              "In": [], "threads": 0}
    cfg = RunConfig.from_params(params)
    assert (cfg.data.root, cfg.train.epochs, cfg.optim.lr, cfg.loss.name) == ("/d", 3, 0.01, "bce")
    assert cfg.train.ema_decay is None and cfg.data.max_train_images is None  # 0: none / all
    assert cfg.runtime.device == "cpu" and cfg.runtime.threads is None and cfg.model.freeze_backbone
    assert cfg.train.seed == 2 and cfg.output_dir == "out"
    base = RunConfig().updated({"optim.name": "sgd"})
    assert RunConfig.from_params({"epochs": 1}, base=base).optim.name == "sgd"


def test_one_table_gives_the_flags_of_train_and_cpsd() -> None:
    parser = build_parser()
    for command in ("train", "cpsd"):
        sub = next(a for a in parser._subparsers._actions if a.dest == "command").choices[command]
        flags = {s for a in sub._actions for s in a.option_strings}
        assert {"--data-root", "--train-split", "--num-workers", "--threads", "--epochs", "--lr"} <= flags
        assert "--workers" not in flags
        assert "--jobs" in flags or command == "train"
    assert all(p.flag.startswith("--") and p.name in p.flag.replace("-", "_") for p in PARAMETERS.values())


def test_cli_flags_are_typed_by_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlic.cli.main import main

    assert main(["train", "--epochs", "three"]) == 1
    assert "mlic: error: train.epochs: expected an integer, got 'three'" in capsys.readouterr().err
    assert main(["train", "--lr", "1e-5", "--no-pretrained", "--eval-splits", "[test]", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "lr: 1.0e-05" in printed and "pretrained: false" in printed and "- test" in printed
