"""Model cost: parameters, FLOPs (PyTorch's own `FlopCounterMode`, no fvcore) and CPU latency.

FLOPs count the matrix products and convolutions (2 per multiply-add), which dominate these models; element-wise
operations, normalisation and softmax are not counted. Latency is the fastest of repeated forward passes in eval mode
under `torch.inference_mode()`, after warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with `requires_grad`)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(module: nn.Module, *inputs: Any) -> int:
    """FLOPs of `module(*inputs)` (matrix products and convolutions, 2 per multiply-add).

    The module's parameters are marked as not requiring gradients while counting: the counter's module tracker
    fails on a parameter passed as an argument to a submodule under inference mode (Query2Label's label queries).
    """
    counter = FlopCounterMode(display=False)
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with counter, torch.inference_mode():
            module(*inputs)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


def measure_latency(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 10) -> float:
    """Fastest wall-clock seconds of one call of `fn` under `torch.inference_mode()`, after warm-up.

    The minimum, as `timeit` advises: on a shared machine the slower calls measure the other processes.
    """
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times)


def profile_model(model: nn.Module, image_size: int, *, batch_size: int = 1, repeats: int = 10,
                  device: str | torch.device = "cpu") -> dict[str, float]:
    """Cost of a `MultiLabelClassifier` on `image_size` inputs, whole model and head alone.

    Returns:
        `params_M`, `head_params_M` (millions), `GFLOPs`, `head_GFLOPs` (per image), `latency_ms` (per image, at
        `batch_size`, whole model, eval mode).
    """
    was_training = model.training
    model.eval().to(device)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    try:
        with torch.inference_mode():
            features = model.forward_features(images)
            model.forward_head(features)  # warm-up: fills per-size and precomputed-branch caches
        total = count_flops(model, images)
        head = count_flops(model.head, features)
        latency = measure_latency(lambda: model(images), repeats=repeats)
    finally:
        model.train(was_training)
    return {
        "params_M": count_parameters(model) / 1e6,
        "head_params_M": count_parameters(model.head) / 1e6,
        "GFLOPs": total / batch_size / 1e9,
        "head_GFLOPs": head / batch_size / 1e9,
        "latency_ms": 1000 * latency / batch_size,
    }
