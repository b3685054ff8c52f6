"""Every notebook runs under papermill with tiny parameters; the suite runner survives a failing notebook."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mlic.report import load_suite, run_suite

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# Tiny parameters for each notebook (every notebook must have an entry: a new notebook without one fails here).
_TINY_MODEL = {"backbone": "test_efficientnet", "pretrained": False, "image_size": 32, "batch_size": 16}
_TINY_CUT = {"train_from": "blocks.4", "seeds": [0]}  # the studies' regime: the last block and the head train
TINY: dict[str, dict] = {
    "00_quickstart.ipynb": {**_TINY_MODEL, "epochs": 1},
    "01_label_graph.ipynb": {"k_values": [2, 3, 5], "n_init": 5},
    "02_heads.ipynb": {**_TINY_MODEL, **_TINY_CUT, "epochs": 1, "label_embeddings": "learned", "decoder_embedding": 32,
                       "decoder_feedforward": 64, "q2l_hidden_dim": 32, "q2l_feedforward": 64,
                       "heads": ["gap", "ml_decoder", "query2label", "ml_gcn"], "attention_images": 2,
                       "latency_repeats": 2},
    "03_aam.ipynb": {**_TINY_MODEL, **_TINY_CUT, "epochs": 2, "lrs": [0.01]},
    "03b_aam_sweeps.ipynb": {},  # summarises a suite: run by test_aam_sweeps_summarise_a_suite_of_grid_runs
    "04_cpsd.ipynb": {**_TINY_MODEL, **_TINY_CUT, "epochs": 1, "k": 2, "seeds": [0], "k_values": [2]},
    "05_moe.ipynb": {**_TINY_MODEL, **_TINY_CUT, "epochs": 1, "seeds": [0], "hidden_dim": 16, "dim_feedforward": 32,
                     "expert_hidden": 16, "shown_images": 50},
    "06_cams.ipynb": {**_TINY_MODEL, "epochs": 1, "max_images": 16, "figure_images": 2},
    "07_single_positive.ipynb": {**_TINY_MODEL, **_TINY_CUT, "epochs": 1, "seeds": [0]},
    "08_thresholds.ipynb": {**_TINY_MODEL, **_TINY_CUT, "epochs": 2},
    "09_cooccurrence_shift.ipynb": {**_TINY_MODEL, **_TINY_CUT, "epochs": 1, "decoder_width": 16,
                                    "label_embeddings": "learned", "cpsd_k": 2, "cam_images": 8,
                                    "methods": ["baseline", "ml_decoder", "aam", "moe_dynamic",
                                                "single_positive_role", "cpsd"]},
    "10_explorer.ipynb": {**_TINY_MODEL, "epochs": 1, "max_images": 16, "figure_images": 2},
    "11_claims.ipynb": {"n_boot": 20},  # judges a suite's runs: with none, every claim is listed inconclusive
    "12_context_bias.ipynb": {**_TINY_MODEL, "epochs": 1, "k": 5},
}
SUITE_SUMMARIES = {"03b_aam_sweeps.ipynb"}
SPLIT_NAMES = {"train", "val", "test", "test_shift", "test_bg", "test_cooc"}

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_every_notebook_has_tiny_parameters_and_a_parameters_cell() -> None:
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found and sorted(TINY) == found
    for name in found:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[1].metadata.get("tags", []), f"{name}: the parameters cell must follow imports"
        assert not any(c.get("outputs") for c in code), f"{name}: committed with outputs"
        assert not any("def " in c.source or "sys.path" in c.source for c in code), f"{name}: logic in notebook"
        assigned = [line.split(":")[0].split("=")[0].strip() for line in code[1].source.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
        inspected = pm.inspect_notebook(str(NOTEBOOKS / name))
        assert sorted(inspected) == sorted(assigned), f"{name}: papermill cannot parse some parameter lines"


@pytest.mark.parametrize("name", sorted(set(TINY) - SUITE_SUMMARIES))
def test_notebook_runs_with_tiny_parameters(name: str, scenes_root: Path, tmp_path: Path) -> None:
    declared = pm.inspect_notebook(str(NOTEBOOKS / name))
    unknown = set(TINY[name]) - set(declared)
    assert not unknown, f"tiny parameters not declared by {name}: {unknown}"
    out = tmp_path / "out"
    params = {**TINY[name], "data_root": str(scenes_root), "output_dir": str(out)}
    if "progress" in declared:
        params["progress"] = False
    pm.execute_notebook(str(NOTEBOOKS / name), str(tmp_path / name), parameters=params, kernel_name="python3",
                        progress_bar=False, cwd=str(tmp_path))
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"], f"{name} recorded no metrics"
    # one schema: {split: {metric: value}} for the headline and for every method
    for metrics in [results["metrics"], *results["methods"].values()]:
        assert set(metrics) <= SPLIT_NAMES, f"{name}: {sorted(set(metrics) - SPLIT_NAMES)} are not split names"
    assert list((out / "figures").glob("*.png")), f"{name} saved no figure"


def _write_notebook(path: Path, body: str) -> None:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    params = new_code_cell("output_dir: str = 'x'\nvalue: int = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell("# t"), new_code_cell("import mlic"), params, new_code_cell(body)]
    nbformat.write(nb, path)


def test_suite_records_a_failure_keeps_the_other_result_and_skips_on_rerun(tmp_path: Path) -> None:
    nbs = tmp_path / "notebooks"
    (nbs / "suites").mkdir(parents=True)
    _write_notebook(nbs / "good.ipynb", "mlic.report.record(output_dir, metrics={'test': {'mAP': 10.0 * value}})")
    _write_notebook(nbs / "bad.ipynb", "raise ValueError('deliberate failure')")
    (nbs / "suites" / "mini.yaml").write_text(
        "name: mini\nentries:\n  - notebook: bad.ipynb\n  - notebook: good.ipynb\n    grid: {value: [1, 2]}\n")
    assert [r.name for r in load_suite(nbs / "suites" / "mini.yaml")[1]] == ["bad", "good__value-1", "good__value-2"]

    result = run_suite(nbs / "suites" / "mini.yaml", reports_dir=tmp_path / "reports", notebooks_dir=nbs,
                       progress=False)
    assert result.failed == ["bad"] and result.succeeded == ["good__value-1", "good__value-2"]
    status = json.loads((result.suite_dir / "bad" / "status.json").read_text())
    assert "deliberate failure" in status["error"] and status["cell"] is not None
    index = (result.suite_dir / "index.md").read_text()
    assert "## Failures" in index and "deliberate failure" in index and "| 20.00 |" in index
    assert (result.suite_dir / "index.html").exists() and (result.suite_dir / "timings.json").exists()

    again = run_suite(nbs / "suites" / "mini.yaml", reports_dir=tmp_path / "reports", notebooks_dir=nbs,
                      progress=False, workers=2)
    assert again.skipped == ["good__value-1", "good__value-2"] and again.failed == ["bad"]
    timings = json.loads((result.suite_dir / "timings.json").read_text())
    assert set(timings["runs"]) == {"bad", "good__value-1", "good__value-2"} and timings["wall_seconds_last_call"] > 0


def test_parallel_workers_run_every_notebook_and_summaries_last(tmp_path: Path) -> None:
    nbs = tmp_path / "notebooks"
    (nbs / "suites").mkdir(parents=True)
    _write_notebook(nbs / "good.ipynb", "import time; time.sleep(1)\n"
                                        "mlic.report.record(output_dir, metrics={'test': {'mAP': 10.0 * value}})")
    summary = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                    "language": "python"}})
    params = new_code_cell("output_dir: str = 'x'\nsuite_dir: str = ''")
    params.metadata["tags"] = ["parameters"]
    summary.cells = [new_code_cell("import mlic"), params, new_code_cell(
        "frame = mlic.report.collect(suite_dir, prefix='good')\n"
        "mlic.report.record(output_dir, metrics={'seen': {'runs': float(len(frame))}})")]
    nbformat.write(summary, nbs / "summary.ipynb")
    (nbs / "suites" / "par.yaml").write_text(
        "name: par\nentries:\n  - notebook: summary.ipynb\n  - notebook: good.ipynb\n    grid: {value: [1, 2, 3]}\n")
    result = run_suite(nbs / "suites" / "par.yaml", reports_dir=tmp_path / "reports", notebooks_dir=nbs,
                       progress=False, workers=3)
    assert not result.failed and result.succeeded == ["summary", "good__value-1", "good__value-2", "good__value-3"]
    seen = json.loads((result.suite_dir / "summary" / "results.json").read_text())
    assert seen["metrics"]["seen"]["runs"] == 3.0  # the summary ran after all three grid points


def test_aam_sweeps_summarise_a_suite_of_grid_runs(scenes_root: Path, tmp_path: Path) -> None:
    suite = tmp_path / "aam.yaml"
    tiny = {**TINY["03_aam.ipynb"], "epochs": 1, "losses": ["aam"], "data_root": str(scenes_root)}
    suite.write_text(json.dumps({"name": "aam_tiny", "defaults": tiny, "entries": [
        {"notebook": "03_aam.ipynb", "name": "aam_s", "grid": {"s": [5.0, 20.0]}},
        {"notebook": "03_aam.ipynb", "name": "aam_m", "grid": {"m": [0.0, 0.2]}},
        {"notebook": "03_aam.ipynb", "name": "aam_gamma", "grid": {"gamma_neg": [0.0, 2.0], "gamma_pos": [0.0]}},
        {"notebook": "03b_aam_sweeps.ipynb", "name": "aam_sweeps", "parameters": {}},
    ]}))
    result = run_suite(suite, reports_dir=tmp_path / "reports", notebooks_dir=NOTEBOOKS, progress=False)
    assert not result.failed, result.failed
    summary = json.loads((result.suite_dir / "aam_sweeps" / "results.json").read_text())
    s_runs = pd.read_csv(result.suite_dir / "aam_sweeps" / "tables" / "aam_s.csv")
    assert sorted(s_runs["param/s"]) == [5.0, 20.0]
    assert summary["metrics"]["test"]["mAP_best_aam_s"] == pytest.approx(s_runs["test/mAP"].max())
    for figure in ("sweep_s", "sweep_m", "gamma_grid"):
        assert (result.suite_dir / "aam_sweeps" / "figures" / f"{figure}.png").exists()


@pytest.mark.parametrize("suite", ["quick", "paper"])
def test_committed_suites_load_and_pass_only_declared_parameters(suite: str) -> None:
    """Every run of the shipped suites has its own folder name, and every parameter an entry sets (beyond the suite's
    shared defaults) is one its notebook declares: a typo would otherwise be ignored by papermill."""
    import yaml

    path = NOTEBOOKS / "suites" / f"{suite}.yaml"
    _, runs = load_suite(path)
    assert len({r.name for r in runs}) == len(runs)
    for entry in yaml.safe_load(path.read_text())["entries"]:
        declared = set(pm.inspect_notebook(str(NOTEBOOKS / entry["notebook"])))
        given = set(entry.get("parameters") or {}) | set(entry.get("grid") or {})
        assert given <= declared, f"{suite}: {entry.get('name')} sets undeclared {sorted(given - declared)}"
