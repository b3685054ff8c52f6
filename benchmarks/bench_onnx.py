"""ONNX Runtime against PyTorch: CPU latency per image of exported models, measured side by side (ratios).

For each head (reference default sizes) on EfficientNet-Lite0 at 224 px, the model is exported with
`mlic.models.export.export_onnx` (which checks parity), then PyTorch (eval mode, inference mode) and ONNX Runtime
(CPU provider) run the same batch in interleaved rounds, each with one intra-op thread, so both share the machine's
noise. The ratio is ONNX Runtime's median time over PyTorch's (below 1: ONNX Runtime is faster).

Run: `python benchmarks/bench_onnx.py [--size 224] [--batch 1] [--rounds 7] [--repeats 5] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from mlic.models import backbone_data_config, create_model
from mlic.models.export import export_onnx

HEADS: dict[str, tuple[str, dict[str, Any]]] = {
    "gap": ("gap", {}),
    "ml_decoder": ("ml_decoder", {}),
    "query2label": ("query2label", {}),
    "ml_gcn": ("ml_gcn", {"label_embeddings": "learned"}),
    "gat_reweight": ("gat_reweight", {"label_embeddings": "learned"}),
}


def _seconds(fn: Callable[[], Any], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_head(name: str, head: str, kwargs: dict[str, Any], *, size: int, batch: int, classes: int, rounds: int,
               repeats: int, threads: int, folder: Path) -> dict[str, Any]:
    """Median PyTorch and ONNX Runtime milliseconds per image, timed in interleaved rounds."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", head, classes, pretrained=False, head_kwargs=kwargs).eval()
    dcfg = backbone_data_config(model.backbone)
    path = folder / f"{head}.onnx"
    parity = export_onnx(model, path, image_size=size, class_names=[str(i) for i in range(classes)],
                         mean=tuple(dcfg["mean"]), std=tuple(dcfg["std"]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    images = torch.randn(batch, 3, size, size)
    feed = {"images": images.numpy()}
    with torch.inference_mode():
        model(images), session.run(["logits"], feed)  # warm-up
        torch_t, onnx_t = [], []
        for _ in range(rounds):
            torch_t.append(_seconds(lambda: model(images), repeats))
            onnx_t.append(_seconds(lambda: session.run(["logits"], feed), repeats))
    torch_s, onnx_s = statistics.median(torch_t), statistics.median(onnx_t)
    return {"head": name, "torch_ms_per_image": 1000 * torch_s / batch, "onnx_ms_per_image": 1000 * onnx_s / batch,
            "ratio": onnx_s / torch_s, "parity_max_abs_diff": parity.max_abs_diff_logits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=80, help="labels (COCO: 80)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of each runtime (default 1)")
    parser.add_argument("--heads", nargs="*", default=list(HEADS), choices=list(HEADS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"EfficientNet-Lite0 at {args.size} px, batch {args.batch}, {args.threads} thread(s) each; "
          "ratio = ONNX Runtime / PyTorch (median of interleaved rounds)")
    print(f"{'head':<14} {'torch ms/img':>13} {'onnx ms/img':>12} {'ratio':>7} {'parity |Δ|':>11}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.heads:
            head, kwargs = HEADS[name]
            row = bench_head(name, head, kwargs, size=args.size, batch=args.batch, classes=args.classes,
                             rounds=args.rounds, repeats=args.repeats, threads=args.threads, folder=Path(folder))
            print(f"{row['head']:<14} {row['torch_ms_per_image']:>13.1f} {row['onnx_ms_per_image']:>12.1f} "
                  f"{row['ratio']:>7.2f} {row['parity_max_abs_diff']:>11.2e}")


if __name__ == "__main__":
    main()
