"""Benchmark: Scenes generation speed (target >= 1,000 images/s at 64 px on 2 CPU cores) and label statistics.

Run as ``python benchmarks/bench_scenes.py``. Each repeat generates a fresh data set of `--n` images (split like the
default: 4/7 train, 1/7 each val, test, test_shift) into a temporary folder with `make_scenes`, end to end: sampling
plan, rendering, PNG writing, COCO and meta JSON. The one-time import of scikit-learn's digits is timed apart. The
best repeat is reported; the rate is printed, not asserted (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mlic.data import scenes
from mlic.data.scenes import CLASS_NAMES, GROUPS, make_scenes

TARGET = 1000.0


def split_sizes(n: int) -> dict[str, int]:
    """`n` images split 4:1:1:1 over train, val, test, test_shift (the defaults' proportions)."""
    val = n // 7
    return {"n_train": n - 3 * val, "n_val": val, "n_test": val, "n_shift": val}


def group_ratio(root: Path, split: str) -> float:
    """Mean P(j | i) for j in i's planted group over the mean for j outside it (1 means no planted structure)."""
    coco = json.loads((root / "annotations" / f"{split}.json").read_text())
    row = {image["id"]: i for i, image in enumerate(coco["images"])}
    labels = np.zeros((len(row), len(CLASS_NAMES)))
    for ann in coco["annotations"]:
        labels[row[ann["image_id"]], ann["category_id"] - 1] = 1
    counts = labels.T @ labels
    within, across = [], []
    for i, group in ((i, g) for g in GROUPS for i in g):
        if counts[i, i]:
            within += [counts[i, j] / counts[i, i] for j in group if j != i]
            across += [counts[i, j] / counts[i, i] for j in range(len(CLASS_NAMES)) if j not in group]
    return float(np.mean(within) / np.mean(across))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=7000, help="images per repeat, all splits together")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: make_scenes' choice)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    scenes._glyph_images()
    print(f"one-time load of scikit-learn's digits: {time.perf_counter() - start:.2f} s")

    sizes = split_sizes(args.n)
    best, root_kept = float("inf"), None
    with tempfile.TemporaryDirectory(prefix="bench_scenes_") as tmp:
        for repeat in range(args.repeats):
            root = Path(tmp) / f"run{repeat}"
            start = time.perf_counter()
            make_scenes(root, seed=args.seed, image_size=args.image_size, workers=args.workers, progress=False, **sizes)
            elapsed = time.perf_counter() - start
            print(f"repeat {repeat}: {args.n} images in {elapsed:.2f} s = {args.n / elapsed:.0f} images/s")
            if elapsed < best:
                best, root_kept = elapsed, root
        meta = json.loads((root_kept / "meta.json").read_text())
        ratios = {split: group_ratio(root_kept, split) for split in ("train", "test_shift")}
        megabytes = sum(p.stat().st_size for p in root_kept.rglob("*.png")) / 2**20

    print(f"\nsplits {sizes}; PNG files {megabytes:.1f} MiB")
    for split, stats in meta["stats"].items():
        share = stats.get("in_group_fraction")
        print(
            f"{split:>10}: {stats['n_images']:5d} images, {stats['mean_labels']:.2f} labels/image, label frequency "
            f"{stats['label_frequency_min']:.3f}..{stats['label_frequency_max']:.3f}"
            + (f", {share:.0%} of labels from the context group" if share is not None else "")
        )
    print(f"within/across-group P(j|i) ratio: train {ratios['train']:.2f}, test_shift {ratios['test_shift']:.2f}")
    frequency = meta["stats"]["train"]["label_frequency"]
    order = np.argsort(frequency)[::-1]
    print("train label frequency: " + ", ".join(f"{CLASS_NAMES[i]} {frequency[i]:.3f}" for i in order))

    rate = args.n / best
    verdict = "OK" if rate >= TARGET else "BELOW TARGET"
    print(f"\nScenes generation: {rate:.0f} images/s at {args.image_size} px (target >= {TARGET:.0f}) {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
