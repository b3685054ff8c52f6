"""`mlic import-checkpoint`: an author-released checkpoint (ASL, ML-Decoder, Query2Label, ML-GCN) as an mlic one."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

RELEASES = ("asl", "ml_decoder", "query2label", "ml_gcn")


def register(commands: Any) -> None:
    p = commands.add_parser(
        "import-checkpoint", help="import an author-released checkpoint (ASL, ML-Decoder, Query2Label, ML-GCN)",
        description="Read a checkpoint file as its authors released it and write an mlic checkpoint that `mlic eval` "
                    "and `mlic predict` load, with the release's class order and preprocessing. Every tensor of the "
                    "source must be consumed and every tensor of the model filled, else the leftovers and missing "
                    "tensors are listed and the import fails (unless --allow-partial).")
    p.add_argument("source", help="the released file (e.g. TRresNet_L_448_86.6.pth, checkpoint.pkl)")
    p.add_argument("--format", required=True, choices=RELEASES, dest="release", help="whose release it is")
    p.add_argument("--output", required=True, help="the mlic checkpoint to write (.pt)")
    p.add_argument("--backbone", default=None,
                   help="timm model name to load the backbone into (default: read from the tensors)")
    p.add_argument("--classes", default=None,
                   help="class names, one per line (or a JSON list); default: the release's, or COCO's 80")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side in pixels (default: Query2Label's from its position encoding, else 448)")
    p.add_argument("--config", default=None,
                   help="the release's JSON config (Query2Label's config_new.json: nheads, img_size, orid_norm)")
    p.add_argument("--word-vectors", default=None,
                   help="ML-GCN's label word vectors (data/coco/coco_glove_word2vec.pkl of its repository, or .npy)")
    p.add_argument("--dataset", default="coco", help="dataset reader `mlic eval` uses on the result (default coco)")
    p.add_argument("--data-root", default="data/coco", help="its folder (default data/coco; mlic eval --data-root "
                                                             "overrides it)")
    p.add_argument("--split", default="val2014", help="the split `mlic eval` evaluates by default (val2014)")
    p.add_argument("--allow-partial", action="store_true",
                   help="write the checkpoint even when tensors are left over, missing or of another shape")
    p.add_argument("--trust-source", action="store_true",
                   help="unpickle the file fully (only for files you trust; default: weights only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlic.core.errors import ConfigError
    from mlic.models.checkpoints import ImportOptions, import_checkpoint, read_class_names

    config: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as handle:
                config = json.load(handle)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{args.config}: not JSON ({err})") from None
    options = ImportOptions(classes=read_class_names(args.classes) if args.classes else None,
                            image_size=args.image_size, backbone=args.backbone, word_vectors=args.word_vectors,
                            source_config=config, dataset=args.dataset, data_root=args.data_root, split=args.split)
    report = import_checkpoint(args.release, args.source, args.output, options=options,
                               allow_partial=args.allow_partial, trust_source=args.trust_source)
    print(json.dumps({**dataclasses.asdict(report), "complete": report.complete}, indent=2))
    return 0
