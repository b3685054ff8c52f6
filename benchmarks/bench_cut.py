"""Training from a backbone cut (`model.train_from`): seconds per forward+backward step of the trainable part, on
its cached input, against the whole network on images — measured side by side in one process.

EfficientNet-Lite0 (ImageNet weights, offline), GAP head, ASL, a batch of 64 random images at 128 px by default.
Each setting is timed over interleaved rounds and the best round is kept (other processes only ever add time).
The cached input of a cut is the frozen prefix's output on the same batch, computed once outside the timing.

Run: `python benchmarks/bench_cut.py [--size 128] [--batch 64] [--cuts blocks.4 blocks.5 blocks.6] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import time

import torch

from mlic.losses import create_loss
from mlic.models import create_model


def _step_seconds(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, from_cut: bool,
                  loss: torch.nn.Module, rounds: int) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    best = float("inf")
    model.train()
    for _ in range(rounds):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        value = loss(model(inputs, from_cut=from_cut), targets)
        value.backward()
        optimizer.step()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cuts", nargs="+", default=["blocks.4", "blocks.5", "blocks.6"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    targets = (torch.rand(args.batch, 20) < 0.15).float()
    loss = create_loss("asl")
    whole = create_model("efficientnet_lite0", "gap", 20, pretrained=True)
    reference = _step_seconds(whole, images, targets, from_cut=False, loss=loss, rounds=args.rounds)
    rows = [("whole network", reference)]
    for cut in args.cuts:
        model = create_model("efficientnet_lite0", "gap", 20, pretrained=True, train_from=cut)
        with torch.no_grad():
            cached = model.forward_prefix(images)
        rows.append((f"from {cut} on cached input {tuple(cached.shape[1:])}",
                     _step_seconds(model, cached, targets, from_cut=True, loss=loss, rounds=args.rounds)))
    print(f"EfficientNet-Lite0, {args.size} px, batch {args.batch}, {args.threads} threads, forward+backward+step")
    print(f"{'trained part':<44} {'s/step':>8} {'speed-up':>9}")
    for name, seconds in rows:
        print(f"{name:<44} {seconds:>8.3f} {reference / seconds:>8.1f}x")


if __name__ == "__main__":
    main()
