"""Engine speed, measured side by side in one process (ratios, not absolute times):

1. the engine's training step vs a bare PyTorch loop on the same model, batch, loss and optimiser (target ≥ 0.95);
2. a frozen-feature (head-only) epoch vs an end-to-end epoch on the same images (target ≥ 20×);
3. data loading (decode + augment) rate vs the rate training consumes images (loading must not be the bottleneck).

Run: `python benchmarks/bench_engine.py [--data data/scenes]` (needs the Scenes benchmark: `make scenes`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mlic.core.config import RunConfig
from mlic.losses import create_loss
from mlic.train.engine import Trainer
from mlic.train.optim import build_optimizer, build_scheduler


def _config(data: Path, out: Path, *, images: int, frozen: bool = False, ema: float | None = None,
            epochs: int = 1) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"root": str(data), "image_size": 64, "batch_size": 64, "max_train_images": images,
                 "val_split": None, "eval_splits": []},
        "model": {"backbone": "efficientnet_lite0", "freeze_backbone": frozen},
        "train": {"epochs": epochs, "ema_decay": ema},
        "runtime": {"progress": False},
        "output_dir": str(out),
    })


def bench_step(data: Path, tmp: Path, rounds: int = 10, steps: int = 2) -> tuple[float, float]:
    """Best seconds per step over interleaved rounds: engine `train_step` vs a bare loop. The minimum, not the median,
    because other processes only ever add time (timeit's advice for noisy machines)."""
    trainer = Trainer(_config(data, tmp / "step", images=256, epochs=100))  # room in the schedule for every step
    batch = next(iter(trainer.train_batches.epoch(0)))
    model = trainer.model
    bare_loss = create_loss("asl")
    bare_opt = build_optimizer(model, trainer.cfg.optim)
    bare_sched = build_scheduler(bare_opt, trainer.cfg.optim, 10_000)
    images, targets = batch["image"], batch["target"]

    def bare_step() -> None:
        loss = bare_loss(model(images), targets)
        bare_opt.zero_grad(set_to_none=True)
        loss.backward()
        bare_opt.step()
        bare_sched.step()

    engine, bare = [], []
    model.train()
    for _ in range(2):  # warm-up
        bare_step()
        trainer.train_step(batch)
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(batch)
        engine.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        for _ in range(steps):
            bare_step()
        bare.append((time.perf_counter() - start) / steps)
    return min(engine), min(bare)


def bench_epochs(data: Path, tmp: Path, images: int = 512) -> tuple[float, float, float]:
    """Seconds of one end-to-end epoch, one frozen epoch (cache warm), and the one-off feature extraction."""
    e2e = Trainer(_config(data, tmp / "e2e", images=images))
    start = time.perf_counter()
    e2e.train_one_epoch(0)
    e2e_seconds = time.perf_counter() - start

    start = time.perf_counter()
    frozen = Trainer(_config(data, tmp / "frozen", images=images, frozen=True, epochs=2))
    extraction = time.perf_counter() - start
    frozen.train_one_epoch(0)  # warm-up
    start = time.perf_counter()
    frozen.train_one_epoch(1)
    return e2e_seconds, time.perf_counter() - start, extraction


def bench_loading(data: Path, tmp: Path, images: int = 512) -> float:
    """Images per second the training loader delivers (decode, squish, flip, Cutout, RandAugment, normalise)."""
    trainer = Trainer(_config(data, tmp / "load", images=images))
    start = time.perf_counter()
    count = sum(len(b["image"]) for b in trainer.train_batches.epoch(0))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/scenes", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        import os

        os.environ["MLIC_CACHE"] = str(tmp / "cache")
        engine, bare = bench_step(args.data, tmp)
        ratio = bare / engine
        print(f"train step, batch 64 at 64 px: engine {engine * 1000:.1f} ms, bare loop {bare * 1000:.1f} ms")
        print(f"engine speed vs bare PyTorch loop: {ratio:.3f} (target >= 0.95)")

        e2e, frozen, extraction = bench_epochs(args.data, tmp)
        print(f"epoch on 512 images: end to end {e2e:.2f} s, frozen features {frozen * 1000:.1f} ms "
              f"(one-off extraction {extraction:.1f} s)")
        print(f"frozen-feature epoch speed-up: {e2e / frozen:.0f}x (target >= 20x)")

        loading = bench_loading(args.data, tmp)
        consumption = 64 / engine
        print(f"data loading {loading:.0f} images/s vs training consumption {consumption:.0f} images/s: "
              f"loading is {loading / consumption:.1f}x faster than needed (in-process, no workers)")


if __name__ == "__main__":
    main()
