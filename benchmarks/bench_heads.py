"""Each head's share of inference time, measured side by side on one backbone (ratios, not absolute times).

For every head (reference default sizes) on EfficientNet-Lite0 at 224 px, in eval mode under inference mode, the
backbone (`forward_features`) and the head (on those features) are timed in interleaved rounds, so both share the
machine's noise; the head's share is `head / (backbone + head)`. For the graph heads, the image-independent graph
branch is also timed alone: "share if not precomputed" is what the head would cost if it recomputed the branch for
every batch — the AAM paper's argument is that the branch is free at inference because it can be precomputed, and
`precomputed` says whether mlic's head does so (it caches the branch in eval mode).

Run: `python benchmarks/bench_heads.py [--size 224] [--batch 1] [--rounds 5] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from mlic.models import create_model
from mlic.models.profile import count_flops, count_parameters

HEADS: dict[str, tuple[str, dict[str, Any]]] = {
    "gap": ("gap", {}),
    "ml_decoder": ("ml_decoder", {}),
    "query2label": ("query2label", {}),
    "ml_gcn": ("ml_gcn", {"label_embeddings": "learned"}),
    "gat_reweight (gcn)": ("gat_reweight", {"label_embeddings": "learned"}),
    "gat_reweight (gat)": ("gat_reweight", {"label_embeddings": "learned", "layer_type": "gat"}),
    "gat_reweight + ml_decoder": ("gat_reweight", {"label_embeddings": "learned", "decoder": "ml_decoder"}),
}


def _seconds(fn: Callable[[], Any], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_head(name: str, head: str, kwargs: dict[str, Any], *, size: int, batch: int, classes: int, rounds: int,
               repeats: int) -> dict[str, Any]:
    """Median backbone, head and (graph heads) graph-branch seconds per batch, timed in interleaved rounds."""
    model = create_model("efficientnet_lite0", head, classes, pretrained=False, head_kwargs=kwargs).eval()
    images = torch.randn(batch, 3, size, size)
    graph = getattr(model.head, "compute_graph", None)
    with torch.inference_mode():
        features = model.forward_features(images)
        model.forward_head(features)  # warm-up; fills the graph cache
        backbone_t, head_t, graph_t = [], [], []
        for _ in range(rounds):
            backbone_t.append(_seconds(lambda: model.forward_features(images), repeats))
            head_t.append(_seconds(lambda: model.forward_head(features), repeats))
            if graph is not None:
                graph_t.append(_seconds(graph, repeats))
    backbone_s, head_s = statistics.median(backbone_t), statistics.median(head_t)
    graph_s = statistics.median(graph_t) if graph_t else 0.0
    return {
        "head": name, "backbone_ms": 1000 * backbone_s, "head_ms": 1000 * head_s,
        "share": head_s / (backbone_s + head_s),
        "share_if_not_precomputed": (head_s + graph_s) / (backbone_s + head_s + graph_s),
        "precomputed": bool(getattr(model.head, "precomputed_at_inference", False)) if graph else None,
        "head_params_M": count_parameters(model.head) / 1e6,
        "head_GFLOPs": count_flops(model.head, features) / batch / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=80, help="labels (COCO: 80)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 keeps ratios sane on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"efficientnet_lite0 at {args.size} px, batch {args.batch}, {args.classes} labels, "
          f"{torch.get_num_threads()} threads; medians of {args.rounds} interleaved rounds")
    print(f"{'head':28s} {'backbone ms':>11s} {'head ms':>8s} {'share':>7s} {'share if not precomputed':>25s} "
          f"{'precomputed':>11s} {'params M':>9s} {'GFLOPs':>7s}")
    for name, (head, kwargs) in HEADS.items():
        row = bench_head(name, head, kwargs, size=args.size, batch=args.batch, classes=args.classes,
                         rounds=args.rounds, repeats=args.repeats)
        precomputed = "-" if row["precomputed"] is None else ("yes" if row["precomputed"] else "no")
        print(f"{row['head']:28s} {row['backbone_ms']:11.1f} {row['head_ms']:8.2f} {row['share']:7.1%} "
              f"{row['share_if_not_precomputed']:25.1%} {precomputed:>11s} {row['head_params_M']:9.2f} "
              f"{row['head_GFLOPs']:7.3f}")


if __name__ == "__main__":
    main()
