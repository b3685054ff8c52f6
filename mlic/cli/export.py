"""`mlic export`: a trained (or imported) model as ONNX, its preprocessing and classes beside it, parity-checked."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

FORMATS = ("onnx",)


def register(commands: Any) -> None:
    p = commands.add_parser(
        "export", help="export a model to ONNX (with model.json: size, mean, std, classes, thresholds)",
        description="Export a run's (or a checkpoint's) model with a dynamic batch size; graph heads with their "
                    "label graph precomputed. The preprocessing, class names and tuned thresholds go to a JSON file "
                    "beside it. Ends with a parity check of ONNX Runtime against PyTorch: max |Δ| reported, failure "
                    "(and no file) above the tolerance.")
    p.add_argument("model", help="a run folder or a checkpoint file")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="export format (onnx)")
    p.add_argument("--output", required=True, help="the .onnx file; its .json goes beside it")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--tolerance", type=float, default=None, help="largest accepted max |Δ| on the logits (1e-4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlic.inference import load_inference_model
    from mlic.models.export import DEFAULT_OPSET, DEFAULT_TOLERANCE, export_onnx

    loaded = load_inference_model(args.model, device="cpu")
    thresholds = None if loaded.thresholds is None else dict(zip(loaded.class_names, map(float, loaded.thresholds)))
    result = export_onnx(loaded.model, args.output, image_size=loaded.image_size, class_names=loaded.class_names,
                         mean=loaded.mean, std=loaded.std, normalize=loaded.normalize, thresholds=thresholds,
                         opset=args.opset or DEFAULT_OPSET, tolerance=args.tolerance or DEFAULT_TOLERANCE,
                         extra={"backbone": loaded.model.backbone_name, "head": loaded.model.head_name,
                                "source": str(loaded.checkpoint), "threshold_split": loaded.threshold_split})
    print(json.dumps(dataclasses.asdict(result), indent=2))
    return 0
