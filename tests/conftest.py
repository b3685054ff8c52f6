"""Shared fixtures: a tiny Scenes dataset generated once per session, and a tiny run config over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlic.core.config import RunConfig

TINY_SCENES = dict(seed=0, image_size=32, n_train=96, n_val=48, n_test=48, n_shift=48, progress=False)


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Scenes benchmark (32 px) shared by the whole session; tests must not modify it."""
    from mlic.data.scenes import make_scenes

    return make_scenes(tmp_path_factory.mktemp("scenes") / "scenes", **TINY_SCENES)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feature caches go to a session temp folder, never to the user's ~/.cache."""
    monkeypatch.setenv("MLIC_CACHE", str(tmp_path_factory.getbasetemp() / "mlic-cache"))


def tiny_config(root: Path, out: Path, **overrides: object) -> RunConfig:
    """A run that takes seconds: small backbone without weights, 32 px, 2 epochs, no progress bars."""
    cfg = RunConfig.from_dict({
        "data": {"dataset": "scenes", "root": str(root), "image_size": 32, "batch_size": 16},
        "model": {"backbone": "test_efficientnet", "pretrained": False},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "ema_decay": 0.9},
        "runtime": {"progress": False},
        "output_dir": str(out),
    })
    return cfg.updated(dict(overrides))


@pytest.fixture
def tiny_cfg(scenes_root: Path, tmp_path: Path) -> RunConfig:
    return tiny_config(scenes_root, tmp_path / "run")


def write_notebook(path: Path, parameters: str, body: str, *, imports: str = "import mlic") -> None:
    """A small notebook for the suite runner's tests: a title, `imports`, a `parameters` cell, then `body`."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    params = new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell("# t"), new_code_cell(imports), params, new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
