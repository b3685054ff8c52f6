"""`mlic train`: train and evaluate one run."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from mlic.cli.common import add_config_arguments, config_from_args


def register(commands: Any) -> None:
    p = commands.add_parser("train", help="train and evaluate one run",
                            description="Train a model from a RunConfig and write the run folder (config, per-epoch "
                                        "metrics, final metrics, predictions, checkpoints). On several GPUs or "
                                        "machines: torchrun --nproc_per_node N -m mlic train ... "
                                        "(DistributedDataParallel; --batch-size stays the global batch).")
    add_config_arguments(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    cfg = config_from_args(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from mlic.train import distributed, fit

    try:
        result = fit(cfg)
    finally:
        distributed.cleanup()
    if distributed.env_world_size() <= 1 or os.environ.get("RANK", "0") == "0":
        print(json.dumps({"run_dir": str(result.run_dir), "weights": result.weights, "best_epoch": result.best_epoch,
                          "metrics": result.metrics}, indent=2))
    return 0
