"""ONNX export of every registered head: ONNX Runtime against PyTorch on a batch of another size than the export's,
the graph branch of the graph heads exported as a constant, the JSON beside the model, and the CLI on a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from mlic.cli.main import main as cli_main
from mlic.core.config import RunConfig
from mlic.core.io import save_checkpoint
from mlic.models import create_model, list_heads
from mlic.models.export import ExportError, export_onnx, metadata_path
from tests.test_heads import CASES, _labels_of, _random_table
from tests.test_moe import SMALL as MOE_SMALL

EXPORT_CASES = {
    "gap": ("gap", {}),
    "gap (cosine)": ("gap", {"cosine": True, "scale": 10.0}),
    **CASES,
    "moe_static": ("moe_static", MOE_SMALL),
    "moe_dynamic (top-k)": ("moe_dynamic", {**MOE_SMALL, "n_specific": 2, "routing": "topk", "top_k": 1}),
}
CLASSES = 4
SIZE = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _model(case: str) -> torch.nn.Module:
    head, kwargs = EXPORT_CASES[case]
    torch.manual_seed(0)
    model = create_model("test_efficientnet", head, CLASSES, pretrained=False, head_kwargs=kwargs)
    model.head.bind(*_labels_of(_random_table(24, CLASSES)))
    return model.eval()


def _onnx_scores(path: Path, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, scores = session.run(["logits", "scores"], {"images": images.numpy()})
    return logits, scores


def test_every_registered_head_has_an_export_case() -> None:
    assert {head for head, _ in EXPORT_CASES.values()} == set(list_heads())


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_matches_onnx_runtime_on_a_dynamic_batch(case: str, tmp_path: Path) -> None:
    model = _model(case)
    names = [f"class {i}" for i in range(CLASSES)]
    result = export_onnx(model, tmp_path / "model.onnx", image_size=SIZE, class_names=names, mean=MEAN, std=STD)
    assert result.max_abs_diff_logits <= 1e-4 and result.parity_batch == 3

    images = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))  # neither 2 nor 3
    logits, scores = _onnx_scores(tmp_path / "model.onnx", images)
    with torch.no_grad():
        expected = model(images)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(scores, torch.sigmoid(expected).numpy(), atol=1e-5, rtol=0)

    meta = json.loads(metadata_path(tmp_path / "model.onnx").read_text())
    assert meta["class_names"] == names and meta["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    assert meta["preprocessing"]["mean"] == list(MEAN) and meta["preprocessing"]["std"] == list(STD)
    assert meta["parity"]["max_abs_diff_logits"] == result.max_abs_diff_logits


@pytest.mark.parametrize("case", ["ml_gcn", "gat_reweight"])
def test_graph_heads_export_their_branch_precomputed(case: str, tmp_path: Path) -> None:
    model = _model(case)
    export_onnx(model, tmp_path / "g.onnx", image_size=SIZE, class_names=list("abcd"), mean=MEAN, std=STD)
    graph = onnx.load(str(tmp_path / "g.onnx")).graph
    constants = [numpy_helper.to_array(t) for t in graph.initializer]
    constants += [numpy_helper.to_array(a.t) for node in graph.node if node.op_type == "Constant"
                  for a in node.attribute if a.name == "value"]
    shapes = {c.shape for c in constants}
    head = model.head
    first_layer = head.graph_parameters()[0]
    assert tuple(head.embeddings.shape) not in shapes and tuple(first_layer.shape) not in shapes
    with torch.no_grad():
        branch = head.compute_graph().numpy()
    as_stored = [branch, branch.T, branch.reshape(1, -1, 1, 1), branch.reshape(1, 1, -1), branch.reshape(1, -1)]
    assert any(c.shape == b.shape and np.allclose(c, b, atol=1e-6) for c in constants for b in as_stored)


def test_a_failed_parity_check_leaves_no_file(tmp_path: Path) -> None:
    model = _model("gap")
    with pytest.raises(ExportError, match=r"differs from PyTorch by max \|Δ\|.*nothing written"):
        export_onnx(model, tmp_path / "m.onnx", image_size=SIZE, class_names=list("abcd"), mean=MEAN, std=STD,
                    tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_export_of_a_run_writes_its_thresholds_and_preprocessing(tmp_path: Path, scenes_root: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from mlic.runs import Run
    from tests.conftest import tiny_config

    cfg = tiny_config(scenes_root, tmp_path / "run", **{"train.epochs": 1, "train.threshold_split": "train",
                                                         "model.head": "ml_gcn",
                                                         "model.head_kwargs": CASES["ml_gcn"][1]})
    from mlic.train import fit

    fit(cfg)
    run = Run(tmp_path / "run")
    values, names, _ = run.thresholds()
    out = tmp_path / "export" / "model.onnx"
    assert cli_main(["export", str(run.path), "--format", "onnx", "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["max_abs_diff_logits"] <= 1e-4
    meta = json.loads((tmp_path / "export" / "model.json").read_text())
    assert meta["class_names"] == names and meta["head"] == "ml_gcn"
    assert meta["thresholds"] == pytest.approx(dict(zip(names, values.tolist())))
    assert meta["preprocessing"]["resize"] == [32, 32] and meta["threshold_split"] == "train"


def test_export_of_a_saved_checkpoint_uses_its_config(tmp_path: Path) -> None:
    model = _model("query2label")
    cfg = RunConfig.from_dict({"data": {"image_size": SIZE, "normalize": False},
                               "model": {"backbone": "test_efficientnet", "head": "query2label", "pretrained": False,
                                         "head_kwargs": EXPORT_CASES["query2label"][1]}})
    save_checkpoint(tmp_path / "best.pt", {"state_dict": model.state_dict(), "config": cfg.to_dict(),
                                           "class_names": list("abcd")})
    assert cli_main(["export", str(tmp_path / "best.pt"), "--output", str(tmp_path / "q.onnx")]) == 0
    meta = json.loads((tmp_path / "q.json").read_text())
    assert meta["preprocessing"]["normalize"] is False and meta["thresholds"] is None
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        np.testing.assert_allclose(_onnx_scores(tmp_path / "q.onnx", images)[0], model(images).numpy(), atol=1e-4)
