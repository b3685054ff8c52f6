"""ONNX export of a classifier, with its preprocessing and class names beside it and a parity check against ONNX
Runtime at the end of every export.

The graph takes `images` `[batch, 3, S, S]` (float32, already resized and normalised as `preprocessing` in the JSON
says) and returns `logits` and `scores` (their sigmoid), both `[batch, C]`; the batch size is dynamic. Graph heads
(ML-GCN, graph re-weighting) export with their label-graph branch precomputed: in eval mode they serve it from
their cache, so the traced graph holds the branch's result as a constant, not the GCN over the label embeddings
(the AAM paper's argument for deployment).

The TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`) is used: the dynamo exporter of torch 2.14
fails on the graph and mixture-of-experts heads (their caches read tensor storage, which `torch.export` cannot
trace) and needs the extra `onnxscript` package.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlic._version import __version__
from mlic.core.errors import MlicError
from mlic.core.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
#: largest |ONNX Runtime − PyTorch| accepted on the logits of the parity batch
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAMES = "images", ("logits", "scores")


class ExportError(MlicError, RuntimeError):
    """The ONNX export failed or its parity check did not pass; no file is left behind."""


@dataclass
class ExportResult:
    """Where the model went and how closely ONNX Runtime reproduces PyTorch on the parity batch."""

    onnx: str
    metadata: str
    max_abs_diff_logits: float
    max_abs_diff_scores: float
    parity_batch: int
    tolerance: float


class _ExportedClassifier(nn.Module):
    """Images → (logits, sigmoid scores): the classifier's forward with a single positional input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return logits, torch.sigmoid(logits)


def metadata_path(onnx_path: str | Path) -> Path:
    """The JSON written beside an exported model: `model.onnx` → `model.json`."""
    return Path(onnx_path).with_suffix(".json")


def export_onnx(model: nn.Module, output: str | Path, *, image_size: int, class_names: list[str],
                mean: tuple[float, ...], std: tuple[float, ...], normalize: bool = True,
                thresholds: dict[str, float] | None = None, opset: int = DEFAULT_OPSET,
                tolerance: float = DEFAULT_TOLERANCE, parity_batch: int = 3, seed: int = 0,
                extra: dict[str, Any] | None = None) -> ExportResult:
    """Export `model` to ONNX at `output`, check it against PyTorch with ONNX Runtime, write `<output>.json`.

    Args:
        model: a `MultiLabelClassifier` (any registered head).
        output: the `.onnx` file.
        image_size: the input side S (the graph's spatial size is fixed, its batch size dynamic).
        class_names: the C classes, in output order.
        mean, std, normalize: the preprocessing the model expects, written to the JSON.
        thresholds: per-class decision thresholds of the run, if tuned (written to the JSON).
        opset: the ONNX opset.
        tolerance: the largest accepted max |Δ| between ONNX Runtime and PyTorch logits.
        parity_batch: images in the parity batch (other than the export's batch of 2, so the dynamic batch size
            is exercised too).
        seed: seed of the random parity images.
        extra: more fields for the JSON (e.g. backbone and head names).

    Returns:
        Paths and the measured max |Δ| of logits and scores.

    Raises:
        ExportError: export or parity failure; nothing is written then.
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as err:
        raise ExportError("ONNX export needs the packages onnx and onnxruntime (pip install 'mlic[onnx]')") from err
    output = Path(output)
    wrapped = _ExportedClassifier(model).eval()
    generator = torch.Generator().manual_seed(seed)
    example = _example_inputs(2, image_size, mean, std, normalize, generator)
    parity = _example_inputs(parity_batch, image_size, mean, std, normalize, generator)
    device = next(model.parameters()).device  # exported where the model is (a GPU too); compared on the CPU
    example = example.to(device)
    with torch.no_grad():
        wrapped(example)  # fills the graph heads' caches, so the branch is traced as a constant
        expected_logits, expected_scores = (t.cpu().numpy() for t in wrapped(parity.to(device)))
    with atomic_path(output) as tmp:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # a note, not a fault
            try:
                torch.onnx.export(wrapped, (example,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                                  output_names=list(OUTPUT_NAMES), opset_version=opset,
                                  dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)})
            except Exception as err:  # the exporter raises many types; one message naming the model and file
                raise ExportError(f"{output}: ONNX export failed ({type(err).__name__}: {err})") from err
        onnx.checker.check_model(str(tmp))
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(tmp), providers=providers)
        logits, scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: parity.numpy()})
        diff_logits = float(np.abs(logits - expected_logits).max())
        diff_scores = float(np.abs(scores - expected_scores).max())
        log.info("ONNX parity on %d images: max |Δ| logits %.3g, scores %.3g (tolerance %.1g)", parity_batch,
                 diff_logits, diff_scores, tolerance)
        if not diff_logits <= tolerance:  # also catches NaN
            raise ExportError(f"{output}: ONNX Runtime differs from PyTorch by max |Δ| {diff_logits:.3g} on the "
                              f"logits of {parity_batch} images (tolerance {tolerance:g}); nothing written")
    result = ExportResult(onnx=str(output), metadata=str(metadata_path(output)), max_abs_diff_logits=diff_logits,
                          max_abs_diff_scores=diff_scores, parity_batch=parity_batch, tolerance=tolerance)
    atomic_write_json(metadata_path(output), {
        "format": "onnx", "opset": opset, "mlic_version": __version__,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, image_size, image_size], "dtype": "float32"},
        "outputs": {"logits": ["batch", len(class_names)], "scores": ["batch", len(class_names)]},
        "preprocessing": {"resize": [image_size, image_size], "resize_mode": "squish (aspect ratio not kept), "
                          "bilinear with antialiasing", "scale": "RGB pixels / 255", "normalize": normalize,
                          "mean": list(mean), "std": list(std)},
        "class_names": list(class_names), "thresholds": thresholds,
        "parity": {k: v for k, v in asdict(result).items() if k not in ("onnx", "metadata")},
        **(extra or {}),
    })
    return result


def _example_inputs(n: int, size: int, mean: tuple[float, ...], std: tuple[float, ...], normalize: bool,
                    generator: torch.Generator) -> torch.Tensor:
    """Random images in the range the model sees: [0, 1] pixels, normalised when the model expects it."""
    images = torch.rand(n, 3, size, size, generator=generator)
    if normalize:
        images = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return images
