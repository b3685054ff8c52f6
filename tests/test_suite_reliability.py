"""The suite runner under trouble: a failed rerun never shows the earlier run's results as current, Ctrl-C stops the
running notebook and still writes the index of what finished, and parameters a notebook does not declare are
refused before anything runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mlic.core.errors import ConfigError
from mlic.report import run_suite
from tests.conftest import write_notebook as _notebook

ROOT = Path(__file__).resolve().parent.parent


_FLAKY = """
import pathlib
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
if fail:
    raise RuntimeError("deliberate failure")
fig = plt.figure()
plt.plot([0, 1], [0, 1])
pathlib.Path(output_dir, "figures").mkdir(exist_ok=True)
fig.savefig(pathlib.Path(output_dir, "figures", "curve.png"))
mlic.report.record(output_dir, metrics={"test": {"mAP": 42.0}}, tables={"numbers": pd.DataFrame({"x": [7.5]})})
"""


@pytest.mark.notebook
@pytest.mark.slow
def test_a_failed_rerun_does_not_show_the_earlier_results_as_current(tmp_path: Path) -> None:
    nbs = tmp_path / "notebooks"
    _notebook(nbs / "flaky.ipynb", "output_dir: str = 'x'\nfail: bool = False", _FLAKY)
    (nbs / "suites").mkdir()
    suite = nbs / "suites" / "s.yaml"
    suite.write_text("name: s\nentries:\n  - notebook: flaky.ipynb\n")
    first = run_suite(suite, reports_dir=tmp_path / "reports", notebooks_dir=nbs, progress=False)
    assert first.succeeded == ["flaky"]
    index = (first.suite_dir / "index.md").read_text()
    assert "42.00" in index and "flaky/figures/curve.png" in index and "7.50" in index

    again = run_suite(suite, reports_dir=tmp_path / "reports", notebooks_dir=nbs, progress=False, force=True,
                      overrides={"fail": True})
    assert again.failed == ["flaky"]
    assert (again.suite_dir / "flaky" / "results.json").exists()  # the earlier results are still on disk...
    for name in ("index.md", "index.html"):
        page = (again.suite_dir / name).read_text()
        assert "deliberate failure" in page
        assert "42.00" not in page and "7.50" not in page and "curve.png" not in page  # ...but not shown
        assert "not shown" in page
    runs = pd.read_csv(again.suite_dir / "runs.csv")
    assert runs.loc[0, "status"] == "failed" and "test/mAP" not in runs.columns


def test_parameters_a_notebook_does_not_declare_are_refused_before_anything_runs(tmp_path: Path) -> None:
    nbs = tmp_path / "notebooks"
    _notebook(nbs / "good.ipynb", "output_dir: str = 'x'\nvalue: int = 1", "print(value)")
    _notebook(nbs / "other.ipynb", "output_dir: str = 'x'\nseed: int = 0", "print(seed)")
    (nbs / "suites").mkdir()
    cases = {
        "entries:\n  - notebook: good.ipynb\n    name: typo\n    parameters: {valeu: 3}\n":
            "entry 'typo' sets 'valeu', which good.ipynb does not declare (it declares: output_dir, value)",
        "entries:\n  - notebook: good.ipynb\n    name: grid\n    grid: {seed: [0, 1]}\n":
            "entry 'grid' sets 'seed', which good.ipynb does not declare",
        "defaults: {colour: red}\nentries:\n  - notebook: good.ipynb\n  - notebook: other.ipynb\n":
            "defaults set 'colour', which none of the suite's notebooks declares",
    }
    for i, (text, message) in enumerate(cases.items()):
        suite = nbs / "suites" / f"s{i}.yaml"
        suite.write_text(f"name: s{i}\n{text}")
        with pytest.raises(ConfigError) as err:
            run_suite(suite, reports_dir=tmp_path / "reports", notebooks_dir=nbs, progress=False)
        assert str(err.value) == f"{suite}: {message}" or str(err.value).startswith(f"{suite}: {message}")
    suite = nbs / "suites" / "ok.yaml"
    suite.write_text("name: ok\ndefaults: {seed: 3}\nentries:\n  - notebook: good.ipynb\n  - notebook: other.ipynb\n")
    with pytest.raises(ConfigError, match="--set colour: none of the notebooks to run declares it"):
        run_suite(suite, reports_dir=tmp_path / "reports", notebooks_dir=nbs, progress=False,
                  overrides={"colour": "red"})
    assert not (tmp_path / "reports").exists()  # refused before any folder or notebook


_SLOW = """
import os, pathlib, time
pathlib.Path(marker_dir, "kernel.pid").write_text(str(os.getpid()))
for _ in range(1200):
    time.sleep(0.1)
pathlib.Path(marker_dir, "finished").touch()
mlic.report.record(output_dir, metrics={"test": {"mAP": 99.0}})
"""


@pytest.mark.notebook
@pytest.mark.slow
def test_ctrl_c_stops_the_running_notebook_and_writes_the_index_of_what_finished(tmp_path: Path) -> None:
    nbs, markers, reports = tmp_path / "notebooks", tmp_path / "markers", tmp_path / "reports"
    markers.mkdir()
    _notebook(nbs / "fast.ipynb", "output_dir: str = 'x'",
              "mlic.report.record(output_dir, metrics={'test': {'mAP': 11.0}})")
    _notebook(nbs / "slow.ipynb", "output_dir: str = 'x'\nmarker_dir: str = ''", _SLOW)
    (nbs / "suites").mkdir()
    suite = nbs / "suites" / "c.yaml"
    suite.write_text("name: c\nentries:\n  - notebook: fast.ipynb\n  - notebook: slow.ipynb\n"
                     f"    parameters: {{marker_dir: {json.dumps(str(markers))}}}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "mlic", "run", str(suite), "--notebooks", str(nbs), "--reports",
                             str(reports)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (markers / "kernel.pid").exists():
            assert proc.poll() is None and time.time() < deadline, "the slow notebook did not start"
            time.sleep(0.1)
        kernel = int((markers / "kernel.pid").read_text())
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        started = time.perf_counter()
        _, stderr = proc.communicate(timeout=90)
        took = time.perf_counter() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    index = reports / "c" / "index.md"
    assert f"mlic: interrupted; the notebooks were stopped; the index of what finished is {index}" in stderr
    assert took < 30  # the notebook had two minutes to go
    assert not (markers / "finished").exists()
    for _ in range(50):  # the kernel is gone too
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"kernel {kernel} still runs")
    statuses = {name: json.loads((reports / "c" / name / "status.json").read_text())["status"]
                for name in ("fast", "slow")}
    assert statuses == {"fast": "ok", "slow": "interrupted"}
    text = index.read_text()
    assert "| fast | fast.ipynb | ok |" in text and "11.00" in text
    assert "| slow | slow.ipynb | interrupted |" in text and "interrupted (Ctrl-C)" in text


def test_a_summary_does_not_see_itself_while_it_runs_but_the_index_lists_a_run_left_running(tmp_path: Path) -> None:
    from mlic.report import collect, write_index

    suite = tmp_path / "s"
    for name, status in (("grid__a-1", "ok"), ("grid_summary", "running")):
        (suite / name).mkdir(parents=True)
        (suite / name / "status.json").write_text(json.dumps({"notebook": f"{name}.ipynb", "status": status,
                                                              "parameters": {"a": 1}, "seconds": 1.0}))
    assert list(collect(suite, prefix="grid")["run"]) == ["grid__a-1"]
    assert list(collect(suite, running=True)["run"]) == ["grid__a-1", "grid_summary"]
    index = write_index(suite).read_text()
    assert "| grid_summary | grid_summary.ipynb | running |" in index
