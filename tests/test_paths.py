"""Relative paths mean one folder from a notebook, papermill and the CLI: `mlic.core.paths` and the boundaries that
take user paths (dataset roots, Scenes output, run folders, figures, results, suites)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mlic
from mlic.core import paths

REPO = Path(mlic.__file__).resolve().parent.parent


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder is not the repository (as a kernel started in notebooks/ is not)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(paths.HOME_VARIABLE, raising=False)
    return cwd


def test_relative_paths_resolve_against_the_repository_root_not_the_cwd(elsewhere: Path) -> None:
    assert paths.home() == REPO and (REPO / "pyproject.toml").is_file()
    assert paths.resolve("data/scenes") == REPO / "data" / "scenes"
    assert paths.resolve(elsewhere / "x") == elsewhere / "x"  # absolute paths are kept
    assert paths.resolve("~/x") == Path.home() / "x"
    assert "repository root" in paths.where("data/scenes") and str(REPO / "data" / "scenes") in paths.where(
        "data/scenes")


def test_mlic_home_overrides_the_repository_root(elsewhere: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.HOME_VARIABLE, str(tmp_path / "lab"))
    assert paths.home() == tmp_path / "lab"
    assert paths.resolve("runs/a") == tmp_path / "lab" / "runs" / "a"
    lab = tmp_path / "lab"
    assert paths.where("runs/a") == f"{lab / 'runs' / 'a'} ('runs/a' is relative to MLIC_HOME={lab})"


def test_a_missing_dataset_error_says_where_it_looked(elsewhere: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mlic.data import load_split

    monkeypatch.setenv(paths.HOME_VARIABLE, str(tmp_path / "lab"))
    with pytest.raises(FileNotFoundError) as err:
        load_split("scenes", "data/scenes", "test_shift")
    message = str(err.value)
    assert str(tmp_path / "lab" / "data" / "scenes") in message and "MLIC_HOME" in message
    assert f"mlic scenes --out {tmp_path / 'lab' / 'data' / 'scenes'}" in message  # the advice builds it there
    assert not (elsewhere / "data").exists()


def test_every_boundary_resolves_against_the_home(elsewhere: Path, tmp_path: Path, scenes_root: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlic import plots, report, runs
    from mlic.core.config import RunConfig
    from mlic.data import load_split

    monkeypatch.setenv(paths.HOME_VARIABLE, str(scenes_root.parent))
    table = load_split("scenes", scenes_root.name, "val")  # a relative data root
    assert len(table) == 48 and table.paths[0].is_relative_to(scenes_root)
    assert runs.Run("runs/a").path == scenes_root.parent / "runs" / "a"
    cfg = RunConfig()
    assert runs.run_dir("runs/grid", "gap", cfg).parent == scenes_root.parent / "runs" / "grid" / "gap"
    monkeypatch.setenv(paths.HOME_VARIABLE, str(tmp_path / "lab"))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    plots.save(fig, "out/nb", "line")
    assert (tmp_path / "lab" / "out" / "nb" / "figures" / "line.png").is_file()
    report.record("out/nb", metrics={"test": {"mAP": 1.0}})
    assert (tmp_path / "lab" / "out" / "nb" / "results.json").is_file()
    assert report.collect("out").empty  # the suite folder is looked for under the home too (no status files)
    assert not any(elsewhere.iterdir())  # nothing was written in the current folder
    plt.close(fig)


def test_make_scenes_writes_a_relative_folder_under_the_home(elsewhere: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from mlic.data import make_scenes

    monkeypatch.setenv(paths.HOME_VARIABLE, str(tmp_path / "lab"))
    root = make_scenes("data/tiny", seed=0, image_size=16, n_train=4, n_val=2, n_test=2, n_shift=2, progress=False)
    assert root == tmp_path / "lab" / "data" / "tiny" and (root / "meta.json").is_file()
    assert not any(elsewhere.iterdir())
    assert np.all([p.is_file() for p in (root / "images" / "train").iterdir()])
