"""`mlic eval`: the metrics of a checkpoint on dataset splits."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(commands: Any) -> None:
    p = commands.add_parser("eval", help="evaluate a checkpoint on dataset splits",
                            description="Load a checkpoint (weights_only) and report mAP, CP, CR, CF1, OP, OR, OF1.")
    p.add_argument("checkpoint", help="a run folder, or a checkpoint file (best.pt, last.pt)")
    p.add_argument("--split", action="append", default=None, help="split(s) to evaluate (default: the run's)")
    p.add_argument("--data-root", default=None, help="dataset folder, if it moved since training")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch")
    p.add_argument("--threshold", type=float, default=0.5, help="score threshold for CP/CR/OP/OR")
    p.add_argument("--top-k", type=int, default=None, help="report top-k metrics instead of the threshold ones")
    p.add_argument("--ap-mode", choices=("noninterp", "voc", "sklearn"), default="noninterp",
                   help="AP convention: noninterp (ASL, ML-Decoder, ML-GCN, CPSD), voc (Query2Label's interpolated "
                        "AP), sklearn")
    p.add_argument("--output", default=None, help="also write the results JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlic.core.io import atomic_write_text
    from mlic.inference import evaluate_checkpoint

    results = evaluate_checkpoint(args.checkpoint, splits=args.split, data_root=args.data_root, device=args.device,
                                  batch_size=args.batch_size, top_k=args.top_k, threshold=args.threshold,
                                  mode=args.ap_mode)
    text = json.dumps(results, indent=2)
    if args.output:
        atomic_write_text(args.output, text + "\n")
    print(text)
    return 0
