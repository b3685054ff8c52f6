"""The GPU check: the CUDA paths of the lab, run and timed on one GPU in a few minutes (`make gpu-check`).

Prints, each measured side by side in this process (ratios, not absolute claims):

1. training steps per second of mlic's engine (`Trainer.train_step`) against a bare timm loop on the same model,
   batch and AMP dtype — EfficientNet-B0 and ResNet-50 at 224 px, bf16, batch 64 (target >= 0.95);
2. the `runtime.compile` (inductor) speed-up of the engine's step;
3. channels-last on and off;
4. SAM with bf16 autocast (two forward/backward passes per step);
5. peak GPU memory per step of each setting;
6. `torchrun --nproc_per_node 1` with NCCL: one short training run of the command line;
7. ONNX export on the GPU with its ONNX Runtime parity check (when `mlic.models.export` and onnxruntime exist).

Weights are random (`pretrained: false`): speed does not depend on them, and nothing is downloaded. On a machine
without CUDA it says so and exits 0. Run: `python benchmarks/gpu_check.py [--steps 20] [--batch 64]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mlic.core.config import RunConfig
from mlic.data.scenes import make_scenes
from mlic.losses import create_loss
from mlic.train.engine import Trainer

MODELS = ("efficientnet_b0", "resnet50")


def _config(data: Path, out: Path, backbone: str, batch: int, **overrides: Any) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"root": str(data), "image_size": 224, "batch_size": batch, "val_split": None, "eval_splits": [],
                 "randaugment": False, "cutout": 0.0},
        "model": {"backbone": backbone, "pretrained": False},
        "train": {"epochs": 1000, "ema_decay": None, "amp": True},
        "runtime": {"progress": False, "device": "cuda"},
        "output_dir": str(out),
    }).updated(overrides)


def _timed(step: Callable[[], Any], steps: int) -> tuple[float, float]:
    """Steps per second (after two warm-up steps) and the peak GPU memory of a step in GiB."""
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - started), torch.cuda.max_memory_allocated() / 2**30


def engine_step(cfg: RunConfig, steps: int) -> tuple[float, float]:
    """The engine's training step on one batch of the data, repeated."""
    trainer = Trainer(cfg)
    batch = next(iter(trainer.train_batches.epoch(0)))
    return _timed(lambda: trainer.train_step(batch), steps)


def bare_step(backbone: str, batch: int, steps: int, *, channels_last: bool = True) -> tuple[float, float]:
    """A bare timm loop: model, bf16 autocast, ASL, AdamW, on a random batch of the same shape."""
    import timm

    model = timm.create_model(backbone, pretrained=False, num_classes=20).cuda()
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    targets = (torch.rand(batch, 20, device="cuda") < 0.15).float()
    loss_fn = create_loss("asl")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(images)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _timed(step, steps)


def _report(name: str, run: Callable[[], str]) -> None:
    try:
        print(f"{name}: {run()}", flush=True)
    except Exception as err:  # one failing check must not hide the others
        print(f"{name}: FAILED ({type(err).__name__}: {err})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; the GPU check needs one (nothing was run).")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 "
          f"{'supported' if torch.cuda.is_bf16_supported() else 'NOT supported'}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MLIC_CACHE"] = str(tmp / "cache")
        data = make_scenes(tmp / "scenes", seed=0, image_size=224, n_train=2 * args.batch, n_val=0, n_test=0,
                           n_shift=0, progress=False)
        for backbone in MODELS:
            cfg = _config(data, tmp / backbone, backbone, args.batch)
            bare, bare_mem = bare_step(backbone, args.batch, args.steps)
            engine, engine_mem = engine_step(cfg, args.steps)
            print(f"{backbone} 224 px bf16 batch {args.batch}: engine {engine:.2f} steps/s ({engine_mem:.1f} GiB), "
                  f"bare timm loop {bare:.2f} steps/s ({bare_mem:.1f} GiB): ratio {engine / bare:.3f} "
                  "(target >= 0.95)", flush=True)

            def compiled(cfg: RunConfig = cfg, engine: float = engine) -> str:
                speed, memory = engine_step(cfg.updated({"runtime.compile": True}), args.steps)
                return f"{speed:.2f} steps/s ({memory:.1f} GiB): {speed / engine:.2f}x the eager step"

            def layout(cfg: RunConfig = cfg, engine: float = engine) -> str:
                speed, memory = engine_step(cfg.updated({"train.channels_last": False}), args.steps)
                return f"off {speed:.2f} steps/s ({memory:.1f} GiB) vs on {engine:.2f}: on is {engine / speed:.2f}x"

            def sam(cfg: RunConfig = cfg, engine: float = engine) -> str:
                speed, memory = engine_step(cfg.updated({"optim.sam": True, "optim.name": "sgd"}), args.steps)
                return f"{speed:.2f} steps/s ({memory:.1f} GiB), {engine / speed:.2f}x the time of a plain step"

            _report(f"{backbone} --compile", compiled)
            _report(f"{backbone} channels-last", layout)
            _report(f"{backbone} SAM + bf16", sam)

        def torchrun() -> str:
            cfg = _config(data, tmp / "torchrun", "efficientnet_b0", args.batch, **{"train.epochs": 1})
            cfg.to_yaml(tmp / "torchrun.yaml")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m",
                                   "mlic", "train", "--config", str(tmp / "torchrun.yaml")], capture_output=True,
                                  text=True, timeout=600)
            if done.returncode:
                raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
            return f"one epoch through torchrun (NCCL) in {time.perf_counter() - started:.1f} s, exit 0"

        def onnx() -> str:
            from mlic.models import create_model
            from mlic.models.export import export_onnx  # with its ONNX Runtime parity check

            model = create_model("efficientnet_b0", "ml_decoder", 20, pretrained=False).cuda().eval()
            started = time.perf_counter()
            result = export_onnx(model, tmp / "model.onnx", image_size=224, class_names=[str(i) for i in range(20)],
                                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
            return (f"EfficientNet-B0 + ML-Decoder exported from the GPU in {time.perf_counter() - started:.1f} s, "
                    f"parity max |Δ| logits {result.max_abs_diff_logits:.2e}")

        _report("torchrun --nproc_per_node 1", torchrun)
        _report("ONNX export on the GPU", onnx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
