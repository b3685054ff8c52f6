"""`mlic predict`: scores and predicted labels of a trained (or imported) model on one's own images."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(commands: Any) -> None:
    p = commands.add_parser(
        "predict", help="predict the labels of images, folders, a CSV or a COCO file",
        description="Score every class on each image and predict its label set: with the run's tuned per-class "
                    "thresholds (thresholds.json) when it has them, else 0.5, unless --threshold or --top-k says "
                    "otherwise. Unreadable images are listed with an error, never skipped.")
    p.add_argument("model", help="a run folder or a checkpoint file (mlic's, or one made by mlic import-checkpoint)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively), a dataset CSV (path column) or a COCO JSON")
    p.add_argument("--output", default=None, help="write the table here (.csv or .json); default: print path,labels")
    decision = p.add_mutually_exclusive_group()
    decision.add_argument("--threshold", type=float, default=None, help="one threshold for every class")
    decision.add_argument("--top-k", type=int, default=None, help="predict each image's k best classes")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--image-dir", default=None, help="folder a CSV's or COCO file's image paths are relative to")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlic.inference import predict, write_predictions

    table = predict(args.model, args.inputs, threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
                    device=args.device, num_workers=args.num_workers, image_dir=args.image_dir,
                    progress=args.progress)
    failed = int((table["error"] != "").sum())
    if args.output:
        write_predictions(table, args.output)
        print(f"{len(table)} images ({failed} unreadable), labels by {table.attrs['decision']}: {args.output}")
    else:
        table[["path", "labels", "error"]].to_csv(sys.stdout, index=False)
    return 0
