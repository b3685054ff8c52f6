"""`mlic scenes`: generate the Scenes benchmark."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    p = commands.add_parser("scenes", help="generate the Scenes benchmark (COCO format)",
                            description="Write the Scenes benchmark: images/<split>/, annotations/<split>.json (COCO "
                                        "instances with boxes) and meta.json (planted groups, contexts).")
    p.add_argument("--out", default="data/scenes", help="output folder (default: data/scenes)")
    p.add_argument("--seed", type=int, default=0, help="generator seed; same seed, same bytes")
    p.add_argument("--image-size", type=int, default=None, help="image side in pixels (default 64)")
    p.add_argument("--n-train", type=int, default=None, help="training images (default 4000)")
    p.add_argument("--n-val", type=int, default=None, help="validation images (default 1000)")
    p.add_argument("--n-test", type=int, default=None, help="test images, same distribution as train (default 1000)")
    p.add_argument("--n-shift", type=int, default=None, help="images of each shifted test split (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with other settings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlic.data.scenes import make_scenes

    knobs = {name: getattr(args, name) for name in ("image_size", "n_train", "n_val", "n_test", "n_shift")
             if getattr(args, name) is not None}
    print(make_scenes(args.out, seed=args.seed, overwrite=args.overwrite, **knobs))
    return 0
