"""`mlic` on the command line: `scenes`, `train`, `eval`, `cpsd`, `run`, `report`.

Every training option is a field of `RunConfig`: give a YAML file with `--config`, override single fields with
`--set section.field=value` (values parsed as YAML), or use the named shortcuts below.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from mlic.config import RunConfig

log = logging.getLogger("mlic")

# flag → (config field, type, help)
_TRAIN_SHORTCUTS: dict[str, tuple[str, Any, str]] = {
    "--dataset": ("data.dataset", str, "dataset reader: scenes, coco, voc, nuswide or csv"),
    "--data-root": ("data.root", str, "folder of the dataset in its own layout (e.g. the COCO root with "
                                      "annotations/ and train2014/)"),
    "--train-split": ("data.train_split", str, "split to train on (e.g. train, train2014, trainval)"),
    "--val-split": ("data.val_split", str, "split used to pick the best epoch and EMA vs raw weights"),
    "--image-size": ("data.image_size", int, "side of the square (squish) resize; the papers use 448"),
    "--batch-size": ("data.batch_size", int, "images per optimiser step (the global batch under torchrun)"),
    "--workers": ("data.num_workers", int, "data-loading processes"),
    "--backbone": ("model.backbone", str, "timm model name; efficientnet_lite0 has ImageNet weights offline"),
    "--head": ("model.head", str, "classification head (mlic.models.list_heads())"),
    "--loss": ("loss.name", str, "loss (mlic.losses.list_losses())"),
    "--lr": ("optim.lr", float, "peak learning rate of the OneCycle schedule"),
    "--epochs": ("train.epochs", int, "number of epochs"),
    "--seed": ("train.seed", int, "seed of weights init, data order and augmentation"),
    "--device": ("train.device", str, "auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ..."),
    "--output-dir": ("output_dir", str, "run folder: config, metrics, predictions, checkpoints"),
}


def parse_set(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (dotted RunConfig keys, YAML values) as an overrides dict."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects section.field=value, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run_config_from_args(args: argparse.Namespace, shortcuts: dict[str, tuple[str, Any, str]]) -> RunConfig:
    """A RunConfig from parsed options: `--config` YAML, then `--recipe`, then the `shortcuts` flags and the common
    switches present on `args`, then `--set` overrides (shared by `mlic train` and `mlic cpsd`)."""
    cfg = RunConfig.from_yaml(args.config) if args.config else RunConfig()
    if getattr(args, "recipe", None):
        from mlic.recipes import apply_recipe

        cfg = apply_recipe(cfg, args.recipe)
    overrides: dict[str, Any] = {}
    for flag, (key, _, _) in shortcuts.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides[key] = value
    switches = {"no_pretrained": ("model.pretrained", False), "freeze_backbone": ("model.freeze_backbone", True),
                "resume": ("train.resume", True), "no_progress": ("train.progress", False),
                "compile": ("train.compile", True)}
    for attribute, (key, value) in switches.items():
        if getattr(args, attribute, False):
            overrides[key] = value
    overrides.update(parse_set(args.set))
    return cfg.updated(overrides)


def build_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of `mlic train`."""
    return run_config_from_args(args, _TRAIN_SHORTCUTS)


def cmd_scenes(args: argparse.Namespace) -> int:
    from mlic.data.scenes import make_scenes

    root = make_scenes(args.out, seed=args.seed, image_size=args.image_size, n_train=args.n_train, n_val=args.n_val,
                       n_test=args.n_test, n_shift=args.n_shift, overwrite=args.overwrite)
    print(root)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mlic.train import fit

    cfg = build_config(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from mlic.train import distributed

    try:
        result = fit(cfg)
    finally:
        distributed.cleanup()
    if distributed.env_world_size() <= 1 or os.environ.get("RANK", "0") == "0":
        print(json.dumps({"run_dir": str(result.run_dir), "weights": result.weights, "best_epoch": result.best_epoch,
                          "metrics": result.metrics}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mlic.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(args.checkpoint, splits=args.split, data_root=args.data_root, device=args.device,
                                  batch_size=args.batch_size, top_k=args.top_k, threshold=args.threshold)
    text = json.dumps(results, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from mlic.report import run_suite

    suite = Path(args.suite)
    if not suite.exists():
        suite = Path(args.notebooks) / "suites" / f"{args.suite}.yaml"
    if not suite.exists():
        raise SystemExit(f"no suite {args.suite!r}: expected a YAML file or notebooks/suites/{args.suite}.yaml")
    result = run_suite(suite, reports_dir=args.reports, notebooks_dir=args.notebooks, force=args.force,
                       only=args.only or None, kernel_name=args.kernel, overrides=parse_set(args.set),
                       workers=args.workers)
    print(f"report: {result.suite_dir / 'index.md'} (and index.html); {len(result.succeeded)} ran, "
          f"{len(result.skipped)} already done, {len(result.failed)} failed")
    for name in result.failed:
        print(f"  FAILED: {name} (see {result.suite_dir / name / 'status.json'})")
    return 1 if result.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from mlic.report import write_index

    suite_dir = Path(args.reports) / args.suite
    if not suite_dir.is_dir():
        raise SystemExit(f"no results in {suite_dir}; run `mlic run {args.suite}` first")
    print(write_index(suite_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlic", description="Multi-label image classification lab.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scenes", help="generate the Scenes benchmark (COCO format)",
                       description="Write the Scenes benchmark: images/<split>/, annotations/<split>.json (COCO "
                                   "instances with boxes) and meta.json (planted groups, contexts).")
    p.add_argument("--out", default="data/scenes", help="output folder (default: data/scenes)")
    p.add_argument("--seed", type=int, default=0, help="generator seed; same seed, same bytes")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    p.add_argument("--n-train", type=int, default=4000, help="training images")
    p.add_argument("--n-val", type=int, default=1000, help="validation images")
    p.add_argument("--n-test", type=int, default=1000, help="test images (same distribution as train)")
    p.add_argument("--n-shift", type=int, default=1000, help="test_shift images (co-occurrence and background "
                                                             "cues removed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with other settings")
    p.set_defaults(func=cmd_scenes)

    p = sub.add_parser("train", help="train and evaluate one run",
                       description="Train a model from a RunConfig and write the run folder (config.yaml, "
                                   "metrics.jsonl, final.json, predictions/, checkpoints/). On several GPUs or "
                                   "machines: torchrun --nproc_per_node N -m mlic train ... (DistributedDataParallel; "
                                   "--batch-size stays the global batch).")
    p.add_argument("--config", help="YAML file with RunConfig fields (data, model, loss, optim, train)")
    p.add_argument("--recipe", default=None,
                   help="a paper's training recipe applied before the options below: asl_paper, aam_paper")
    for flag, (_, kind, text) in _TRAIN_SHORTCUTS.items():
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--no-pretrained", action="store_true", help="random backbone initialisation")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="cache backbone features once (memory-mapped) and train only the head")
    p.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training forward (inductor; worth it on GPUs for long runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set loss.kwargs='{gamma_neg: 2}' (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on dataset splits",
                       description="Load a checkpoint (weights_only) and report mAP, CP, CR, CF1, OP, OR, OF1.")
    p.add_argument("checkpoint", help="path to best.pt or last.pt")
    p.add_argument("--split", action="append", default=None, help="split(s) to evaluate (default: the run's)")
    p.add_argument("--data-root", default=None, help="dataset folder, if it moved since training")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch")
    p.add_argument("--threshold", type=float, default=0.5, help="score threshold for CP/CR/OP/OR")
    p.add_argument("--top-k", type=int, default=None, help="report top-k metrics instead of the threshold ones")
    p.add_argument("--output", default=None, help="also write the results JSON here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("run", help="run a suite of notebooks with papermill and write its report",
                       description="Execute notebooks/suites/SUITE.yaml into reports/SUITE/ and write index.md/html.")
    p.add_argument("suite", help="suite name (notebooks/suites/<name>.yaml) or a YAML path")
    p.add_argument("--reports", default="reports", help="reports folder")
    p.add_argument("--notebooks", default="notebooks", help="notebooks folder")
    p.add_argument("--force", action="store_true", help="rerun notebooks that already succeeded")
    p.add_argument("--only", action="append", default=[], help="run only runs whose name starts with this")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    p.add_argument("--workers", type=int, default=1,
                   help="notebooks executed at once (each in its own kernel; summaries run after the others)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="parameter given to every notebook of the suite (repeatable)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="rewrite reports/SUITE/index.md and index.html from the runs there")
    p.add_argument("suite", help="suite name")
    p.add_argument("--reports", default="reports", help="reports folder")
    p.set_defaults(func=cmd_report)

    from mlic.cpsd import add_cpsd_parser

    add_cpsd_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
