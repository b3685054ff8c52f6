"""`mlic cpsd`: CPSD's label partitions, part teachers and distilled students for one base recipe."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mlic.cli.common import TRAINING_PARAMETERS, add_config_arguments, config_from_args, parse_set

#: the training flags, less those the study sets itself (seeds are repeatable here; run folders go under --root)
CPSD_PARAMETERS = tuple(name for name in TRAINING_PARAMETERS if name not in ("seed", "output_dir", "resume"))
VARIANT_NAMES = ("baseline", "sd", "cgpd", "dgpd", "cpsd", "rpd")


def register(commands: Any) -> None:
    p = commands.add_parser(
        "cpsd", help="CPSD: label partitions, part teachers, distilled student",
        description="Train the teachers of each partition (reusing finished ones, resuming interrupted ones), "
                    "cache their merged logits, and train the distilled student(s). Run folders go under --root.")
    add_config_arguments(p, CPSD_PARAMETERS)
    study = p.add_argument_group("the study")
    study.add_argument("--root", default="runs/cpsd", help="study folder (default: runs/cpsd)")
    study.add_argument("--variant", action="append", choices=VARIANT_NAMES, default=None,
                       help="student variant(s) to train (default: cpsd; repeatable)")
    study.add_argument("--k", type=int, default=5, help="number of parts (paper: 5)")
    study.add_argument("--seed", type=int, action="append", default=None, help="seed(s) (default: 0; repeatable)")
    study.add_argument("--tau", type=float, default=2.0, help="affinity exponent (reference code 2, paper 3)")
    study.add_argument("--partition-method", choices=("reference", "mlic"), default="reference",
                       help="spectral procedure: the reference code's (reproduces CPSD's COCO partitions) or mlic's")
    study.add_argument("--alpha", type=float, default=0.5, help="CGP/DGP balance of the student loss (reference 0.5)")
    study.add_argument("--cls-weight", type=float, default=0.5, help="weight of the student's ASL (reference 0.5)")
    study.add_argument("--teacher-set", action="append", default=[], metavar="KEY=VALUE",
                       help="override for teachers only, e.g. train.epochs=20 (the paper's)")
    study.add_argument("--student-set", action="append", default=[], metavar="KEY=VALUE",
                       help="override for distilled students only, e.g. optim.lr=1e-5 (the reference code's)")
    study.add_argument("--jobs", type=int, default=1, help="teachers trained at once, each in its own process")
    study.add_argument("--keep-last", action="store_true",
                       help="keep finished runs' last checkpoints (dropped by default; the best ones are kept)")
    study.add_argument("--evaluate-teachers", action="store_true", help="also evaluate teachers on the eval splits")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlic.studies.cpsd import CPSDSettings, CPSDStudy

    base = config_from_args(args, CPSD_PARAMETERS)
    settings = CPSDSettings(tau=args.tau, partition_method=args.partition_method, alpha=args.alpha,
                            cls_weight=args.cls_weight,
                            teacher_overrides=parse_set(args.teacher_set),
                            student_overrides=parse_set(args.student_set), workers=args.jobs,
                            keep_last=args.keep_last, evaluate_teachers=args.evaluate_teachers)
    with CPSDStudy(base, args.root, settings) as study:
        results = [study.run(variant, k=args.k, seed=seed) for seed in (args.seed or [0])
                   for variant in (args.variant or ["cpsd"])]
    print(json.dumps([{"variant": r.variant, "k": r.k, "seed": r.seed, "run_dir": str(r.run_dir),
                       "teachers": r.teachers, "teacher_seconds": round(r.teacher_seconds, 2),
                       "student_seconds": round(r.student_seconds, 2), "metrics": r.metrics} for r in results],
                     indent=2))
    return 0
