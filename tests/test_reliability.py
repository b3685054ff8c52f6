"""Failures caught where they start: a shared feature cache written by several processes at once, runs that read
no image (or too few), the skip policy with a frozen backbone, divergence before a checkpoint is written, numbers
refused before a folder exists, resume of another run, a full disk, per-class AP with an absent class, malformed
inputs, and one-line errors on the command line."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from mlic.core.config import RunConfig
from mlic.core.errors import (
    BadImageError,
    ConfigError,
    DataFormatError,
    DiskFullError,
    TooManyBadImagesError,
    TrainingDivergedError,
)
from mlic.core.io import append_jsonl, atomic_write_json, read_jsonl, save_checkpoint
from mlic.losses import LOSSES, MultiLabelLoss
from mlic.runs import Run
from mlic.train import fit
from tests.conftest import tiny_config

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1", **extra}


def _copy_with_bad_images(root: Path, dest: Path, count: int, *, split: str = "train", how: str = "garbage",
                          start: int = 0) -> list[Path]:
    """A copy of a Scenes dataset whose images `start` to `start + count` of `split` are undecodable (or deleted)."""
    shutil.copytree(root, dest)
    victims = sorted((dest / "images" / split).glob("*.png"))[start:start + count]
    for path in victims:
        if how == "delete":
            path.unlink()
        else:
            path.write_bytes(b"not an image")
    return victims


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".partial" in p.name)


# ---------------------------------------------------------------------------------- 2. a cold cache, two writers
_CACHE_WRITER = """
import logging, sys, time
from pathlib import Path
import numpy as np, torch
from mlic.data import load_split
from mlic.data.dataset import ImageDataset, build_transforms
from mlic.data.features import cached_features
from mlic.models import create_model

root, cache, out, go = sys.argv[1:5]
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO)

class SlowImages(ImageDataset):  # extraction takes seconds, so that the two writers surely overlap
    def __getitem__(self, index):
        time.sleep(0.02)
        return super().__getitem__(index)

torch.manual_seed(0)
table = load_split("scenes", root, "train")
model = create_model("test_efficientnet", "gap", table.num_classes, pretrained=False)
images = SlowImages(table, build_transforms(32, train=False, mean=(0.5,) * 3, std=(0.25,) * 3))
Path(out + ".ready").touch()
while not Path(go).exists():
    time.sleep(0.01)
features = cached_features(model, images, settings={"image_size": 32}, cache_dir=Path(cache),
                           device=torch.device("cpu"), batch_size=16, progress=False)
np.save(out, np.asarray(features, dtype=np.float32))
"""


@pytest.mark.slow
def test_two_processes_filling_one_cold_cache_entry_both_succeed_and_compute_it_once(scenes_root: Path,
                                                                                      tmp_path: Path) -> None:
    cache, go = tmp_path / "cache", tmp_path / "go"
    outs = [tmp_path / f"features{i}.npy" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _CACHE_WRITER, str(scenes_root), str(cache), str(out), str(go)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for out in outs]
    try:
        deadline = time.time() + 120
        while not all(Path(str(out) + ".ready").exists() for out in outs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), "the writers did not start"
            time.sleep(0.05)
        go.touch()  # both ask for the same missing entry at the same moment
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for proc, (_, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr
    logs = [stderr for _, stderr in results]
    assert sum("computing features" in log for log in logs) == 1  # first writer wins
    assert sum("waiting for it" in log for log in logs) == 1  # the other one waits, then reads
    first, second = (np.load(out) for out in outs)
    np.testing.assert_array_equal(first, second)
    assert first.shape[0] == 96 and np.abs(first).sum() > 0
    assert len(list(cache.glob("*.npy"))) == 1 and len(list(cache.glob("*.json"))) == 1
    assert not _temporaries(cache)


def test_a_temporary_file_of_a_killed_writer_is_removed_unless_its_entry_is_being_written(tmp_path: Path) -> None:
    import filelock

    from mlic.data.features import remove_abandoned_temporaries

    cache = tmp_path / "cache"
    cache.mkdir()
    abandoned = cache / ".aaaa.npy.x1y2z3.tmp"
    in_progress = cache / ".bbbb.npy.q9w8e7.tmp"
    abandoned.write_bytes(b"half")
    in_progress.write_bytes(b"being written")
    with filelock.FileLock(cache / "bbbb.lock"):  # a live writer holds its entry's lock
        removed = remove_abandoned_temporaries(cache)
    assert removed == [abandoned] and not abandoned.exists() and in_progress.exists()


# ------------------------------------------------------------------------------ 3. no training image, too many bad
@pytest.mark.slow
@pytest.mark.parametrize("frozen", [False, True], ids=["end_to_end", "frozen"])
def test_a_run_that_finds_no_training_image_fails_saying_how_many_and_where(scenes_root: Path, tmp_path: Path,
                                                                           frozen: bool) -> None:
    data = tmp_path / "data"
    shutil.copytree(scenes_root / "annotations", data / "annotations")  # the images folder is elsewhere: none found
    cfg = tiny_config(data, tmp_path / "run", **{"model.freeze_backbone": frozen})
    with pytest.raises(TooManyBadImagesError) as err:
        fit(cfg)
    message = str(err.value)
    assert "no image of split 'train' could be read: all 96 were skipped" in message
    assert f"looked in {data.absolute() / 'images' / 'train'}" in message
    assert not (tmp_path / "run").exists()  # nothing pretends to be a run


@pytest.mark.slow
def test_an_empty_training_split_fails(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("path,labels\n")
    cfg = tiny_config(tmp_path, tmp_path / "run", **{"data.dataset": "csv", "data.val_split": None,
                                                     "data.eval_splits": []})
    with pytest.raises(TooManyBadImagesError, match="split 'train' has no images"):
        fit(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [False, True], ids=["end_to_end", "frozen"])
def test_more_unreadable_images_than_max_bad_fraction_fail_and_fewer_are_skipped(scenes_root: Path, tmp_path: Path,
                                                                                frozen: bool) -> None:
    victims = _copy_with_bad_images(scenes_root, tmp_path / "data", 20)  # 20 of 96 = 20.8 %
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", **{"model.freeze_backbone": frozen})
    with pytest.raises(TooManyBadImagesError) as err:
        fit(cfg)
    assert "20 of 96 images of split 'train' (20.8%) were skipped" in str(err.value)
    assert "data.max_bad_fraction=0.1" in str(err.value)
    assert not Run(cfg.output_dir).final_file.exists()
    allowed = fit(cfg.updated({"data.max_bad_fraction": 0.25}))
    assert sorted(Run(allowed.run_dir).final["skipped_images"]) == sorted(str(p) for p in victims)


@pytest.mark.slow
def test_missing_files_are_counted_before_anything_is_built(scenes_root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _copy_with_bad_images(scenes_root, tmp_path / "data", 30, split="val", how="delete")
    built = []
    import mlic.train.engine as engine

    monkeypatch.setattr(engine, "create_model", lambda *a, **k: built.append(1))
    with pytest.raises(TooManyBadImagesError, match="30 of 48 images of split 'val'"):
        engine.Trainer(tiny_config(tmp_path / "data", tmp_path / "run"))
    assert not built


# --------------------------------------------------------------------------- 4. skip policy with a frozen backbone
@pytest.mark.slow
def test_frozen_backbone_skips_an_unreadable_image_by_default(scenes_root: Path, tmp_path: Path) -> None:
    from mlic.train import Trainer

    [victim] = _copy_with_bad_images(scenes_root, tmp_path / "data", 1)
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", **{"model.freeze_backbone": True, "train.epochs": 1})
    result = fit(cfg)
    assert Run(result.run_dir).final["skipped_images"] == [str(victim)]
    trainer = Trainer(cfg.updated({"output_dir": str(tmp_path / "again")}))  # from the cache this time
    row = trainer.train_table.paths.index(victim)
    served = np.concatenate([b["index"].numpy() for b in trainer.train_batches.epoch(0)])
    assert row not in served and sorted(served) == sorted(set(range(96)) - {row})
    assert trainer.skipped_in["train"] == {str(victim)}
    cache = Path(os.environ["MLIC_CACHE"]) / "features"
    infos = [json.loads(p.read_text()) for p in cache.glob("*.json")]
    assert any(info.get("skipped_rows") == [row] for info in infos)
    assert not _temporaries(cache)


@pytest.mark.slow
def test_frozen_backbone_raises_by_policy_and_leaves_no_partial_file(scenes_root: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLIC_CACHE", str(cache))
    [victim] = _copy_with_bad_images(scenes_root, tmp_path / "data", 1, start=40)  # after rows were written
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", **{"model.freeze_backbone": True,
                                                             "data.bad_images": "raise"})
    with pytest.raises(BadImageError, match=victim.name):
        fit(cfg)
    assert not list((cache / "features").glob("*.npy")) and not _temporaries(cache)


@pytest.mark.parametrize("frozen", [False, True])
def test_an_unknown_bad_image_policy_is_refused_in_both_modes(frozen: bool, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.bad_images: must be one of skip, raise; got 'ignore'"):
        tiny_config(tmp_path, tmp_path / "run", **{"data.bad_images": "ignore", "model.freeze_backbone": frozen})


# ----------------------------------------------------------------------------------------------- 5. divergence
class _InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad * float("inf")


class _FiniteLossExplodingWeights(MultiLabelLoss):
    """BCE whose value stays finite (non-finite logits read as 0) while, after `after` calls, its gradient is
    infinite: the weights overflow and the loss never shows it."""

    def __init__(self, after: int = 0) -> None:
        super().__init__(reduction="mean")
        self.calls = 0
        self.after = after

    def forward(self, logits, targets, *, mask=None, index=None):  # noqa: ANN001, ANN201
        self.calls += 1
        if self.calls > self.after:
            logits = _InfiniteGradient.apply(logits)
        safe = torch.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0)
        return torch.nn.functional.binary_cross_entropy_with_logits(safe, targets)


def _register_exploding_loss() -> None:
    if "finite_loss_exploding_weights" not in LOSSES:
        LOSSES.register("finite_loss_exploding_weights")(_FiniteLossExplodingWeights)


@pytest.mark.slow
def test_weights_that_overflow_under_a_finite_loss_are_never_saved(tiny_cfg: RunConfig) -> None:
    _register_exploding_loss()
    cfg = tiny_cfg.updated({"loss.name": "finite_loss_exploding_weights", "loss.kwargs": {"after": 6},
                            "train.epochs": 3})
    with pytest.raises(TrainingDivergedError) as err:
        fit(cfg)  # 6 steps per epoch: the gradient turns infinite in epoch 2
    run = Run(cfg.output_dir)
    assert "training diverged in epoch 2" in str(err.value) and "NaN or infinite" in str(err.value)
    assert f"{run.checkpoint('last')} (after epoch 1)" in str(err.value)
    for which in ("best", "last"):
        state = run.state(which)
        assert state["epoch"] == 0
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())
    assert not run.final_file.exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exploding_weights", "lr_1e30"])
def test_a_run_that_diverges_in_its_first_epoch_names_no_checkpoint(tiny_cfg: RunConfig, how: str) -> None:
    _register_exploding_loss()
    overrides = ({"loss.name": "finite_loss_exploding_weights"} if how == "exploding_weights" else
                 {"optim.lr": 1e30})
    cfg = tiny_cfg.updated(overrides)
    with pytest.raises(TrainingDivergedError) as err:
        fit(cfg)
    assert "No checkpoint of this run was written" in str(err.value)
    assert "last.pt" not in str(err.value)
    assert not Run(cfg.output_dir).checkpoints()


# ------------------------------------------------------------------------------ 6. bad numbers, before any folder
@pytest.mark.parametrize(("flag", "value", "field"), [("--epochs", "0", "train.epochs"),
                                                       ("--image-size", "0", "data.image_size"),
                                                       ("--batch-size", "-4", "data.batch_size")])
def test_bad_numbers_are_one_line_errors_and_leave_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             flag: str, value: str, field: str) -> None:
    from mlic.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--data-root", str(tmp_path), flag, value, "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"mlic: error: {field}: must be > 0, got {value}"
    assert "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------------------- 7. resume of another identity
@pytest.mark.slow
def test_resume_refuses_a_changed_identity_naming_what_changed(tiny_cfg: RunConfig) -> None:
    fit(tiny_cfg.updated({"train.epochs": 2}))
    run = Run(tiny_cfg.output_dir)
    config_before, last_before = run.config_file.read_text(), run.checkpoint("last").stat().st_mtime_ns
    with pytest.raises(ConfigError) as err:
        fit(tiny_cfg.updated({"train.seed": 1, "optim.lr": 1e-3, "runtime.resume": True}))
    assert "train.seed: 0 → 1" in str(err.value) and "optim.lr: 0.003 → 0.001" in str(err.value)
    assert run.config_file.read_text() == config_before  # nothing rewritten
    assert run.checkpoint("last").stat().st_mtime_ns == last_before
    fit(tiny_cfg.updated({"runtime.resume": True, "runtime.progress": False}))  # run-time knobs may change


# ------------------------------------------------------------------------------------------------ 8. a full disk
@contextlib.contextmanager
def _small_disk(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes at `path` (needs root; the test is skipped elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_checkpoint_that_does_not_fit_is_one_error_and_the_old_one_stays(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"epoch": 0, "w": torch.ones(3)})

    def full_disk(obj: object, handle: object) -> None:
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError, match=f"^{path}: no space left on device"):
        save_checkpoint(path, {"epoch": 1, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 0
    assert not _temporaries(tmp_path)


@pytest.mark.slow
def test_train_on_a_full_disk_ends_in_one_line_and_keeps_the_earlier_checkpoints(scenes_root: Path,
                                                                                 tmp_path: Path) -> None:
    sizing = fit(tiny_config(scenes_root, tmp_path / "sizing", **{"train.epochs": 1}))
    best, last = (Run(sizing.run_dir).checkpoint(w).stat().st_size for w in ("best", "last"))
    disk = tmp_path / "disk"
    # room for epoch 1's best.pt and last.pt and the small files, not for another checkpoint beside them
    with _small_disk(disk, best + last + min(best, last) // 2 + 64 * 1024):
        out = disk / "run"
        cfg = tiny_config(scenes_root, out, **{"train.epochs": 3})
        cfg.to_yaml(tmp_path / "cfg.yaml")
        done = subprocess.run([sys.executable, "-m", "mlic", "train", "--config", str(tmp_path / "cfg.yaml")],
                              env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("mlic: error:")]
        assert len(errors) == 1 and "Traceback" not in done.stderr
        assert errors[0].startswith(f"mlic: error: {out / 'checkpoints'}/")
        assert ".pt: no space left on device" in errors[0]
        run = Run(out)
        assert run.state("best")["epoch"] == 0 and run.state("last")["epoch"] == 0  # intact, loadable
        assert not _temporaries(out)
        assert [row["epoch"] for row in read_jsonl(run.history_file)][0] == 0


@pytest.mark.slow
def test_caching_features_on_a_full_disk_is_one_line_not_a_bus_error(scenes_root: Path, tmp_path: Path) -> None:
    with _small_disk(tmp_path / "cache", 16 * 1024) as cache:
        cfg = tiny_config(scenes_root, tmp_path / "run", **{"model.freeze_backbone": True})
        cfg.to_yaml(tmp_path / "cfg.yaml")
        done = subprocess.run([sys.executable, "-m", "mlic", "train", "--config", str(tmp_path / "cfg.yaml")],
                              env=_env(MLIC_CACHE=str(cache)), capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, (done.returncode, done.stderr[-2000:])  # not -7 (SIGBUS) or 135
        errors = [line for line in done.stderr.splitlines() if line.startswith("mlic: error:")]
        assert len(errors) == 1 and "Traceback" not in done.stderr
        assert errors[0].startswith(f"mlic: error: {cache / 'features'}/") and ".npy: no space left" in errors[0]
        assert not list((cache / "features").glob("*.npy")) and not _temporaries(cache)


def test_reserving_cache_space_that_is_not_there_is_a_disk_full_error(scenes_root: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mlic.data import load_split
    from mlic.data.dataset import ImageDataset, build_transforms
    from mlic.data.features import cached_features
    from mlic.models import create_model

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    table = load_split("scenes", scenes_root, "val")
    model = create_model("test_efficientnet", "gap", table.num_classes, pretrained=False)
    images = ImageDataset(table, build_transforms(32, train=False, mean=(0.5,) * 3, std=(0.25,) * 3))
    with pytest.raises(DiskFullError, match=r"\.npy: no space left on device"):
        cached_features(model, images, settings={"image_size": 32}, cache_dir=tmp_path, device=torch.device("cpu"),
                        progress=False)
    assert not list(tmp_path.glob("*.npy")) and not _temporaries(tmp_path)


def test_an_append_that_does_not_fit_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    with _small_disk(tmp_path / "disk", 64 * 1024) as disk:
        history = disk / "metrics.jsonl"
        append_jsonl(history, {"epoch": 0})
        before = history.read_bytes()
        (disk / "filler").write_bytes(b"x" * (64 * 1024 - 8192))
        with pytest.raises(DiskFullError, match="metrics.jsonl: no space left on device"):
            append_jsonl(history, {"epoch": 1, "pad": "y" * 20000})
        assert history.read_bytes() == before


@pytest.mark.slow
def test_temporary_files_of_killed_writes_are_cleaned_at_the_next_start(tiny_cfg: RunConfig) -> None:
    cfg = tiny_cfg.updated({"model.freeze_backbone": True, "train.epochs": 1})
    run = Run(cfg.output_dir)
    (run.path / "checkpoints").mkdir(parents=True)
    left = [run.path / "checkpoints" / ".last.pt.k1ll3d.tmp", run.path / ".final.json.abc123.tmp"]
    cache = Path(os.environ["MLIC_CACHE"]) / "features"
    cache.mkdir(parents=True, exist_ok=True)
    left.append(cache / ".0123456789abcdef01234567.npy.zz9.tmp")
    for path in left:
        path.write_bytes(b"killed mid-write")
    fit(cfg)
    assert not any(path.exists() for path in left)
    assert run.is_finished(cfg)


def test_atomic_writes_use_unique_temporary_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlic.core.io as io

    seen: list[str] = []
    real = io.os.replace
    monkeypatch.setattr(io.os, "replace", lambda src, dst: (seen.append(str(src)), real(src, dst)))
    for _ in range(3):
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert len(set(seen)) == 3 and all(Path(s).parent == tmp_path for s in seen)


# ------------------------------------------------------------------------------- 9. per-class AP, absent classes
def test_per_class_ap_draws_a_split_where_a_class_has_no_positive() -> None:
    from mlic import plots

    names = ["a", "b", "c", "d"]
    ap = {"test": np.array([50.0, np.nan, 70.0, np.nan]), "test_shift": np.array([40.0, 30.0, np.nan, 20.0])}
    fig = plots.per_class_ap(ap, names)
    ax = fig.axes[0]
    order = ["c", "a", "b", "d"]  # by the first split's AP, classes without one last
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c*", "a", "b*", "d*"]
    drawn = {}
    for container, split in zip(ax.containers, ap):
        for bar in container:
            drawn[(split, order[round(bar.get_x() + bar.get_width() / 2)])] = bar.get_height()
    expected = {(s, n): v for s, values in ap.items() for n, v in zip(names, values) if not np.isnan(v)}
    assert drawn == pytest.approx(expected)
    assert "no positive, no AP — test: b, d; test_shift: c" in ax.get_title()


# ----------------------------------------------------------------------------------- 11. inputs and the CLI
def test_a_csv_with_a_byte_order_mark_reads_like_any_csv(tmp_path: Path) -> None:
    from mlic.data.csv import load_csv

    plain, marked = tmp_path / "plain.csv", tmp_path / "marked.csv"
    plain.write_text("path,labels\na.jpg,cat|dog\nb.jpg,dog\n", encoding="utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    a, b = load_csv(plain, tmp_path), load_csv(marked, tmp_path)
    assert a.class_names == b.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.image_ids == b.image_ids == ["a.jpg", "b.jpg"]


def test_a_csv_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    from mlic.data.csv import load_csv

    path = tmp_path / "latin1.csv"
    path.write_bytes("path,labels\ncafé.jpg,x\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match="not UTF-8") as err:
        load_csv(path, tmp_path)
    assert err.value.path == str(path)


def _coco(**changes: object) -> dict:
    data = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"image_id": 1, "category_id": 3}, {"image_id": 2, "category_id": 4}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 4, "name": "dog"}]}
    for path, value in changes.items():
        section, index, key = path.split(".")
        data[section][int(index)][key] = value
    return data


@pytest.mark.parametrize(("change", "field", "problem"), [
    ({"annotations.1.category_id": 3.7}, "category_id", "annotations[1] has category_id 3.7, expected an integer"),
    ({"annotations.0.image_id": True}, "image_id", "annotations[0] has image_id True"),
    ({"categories.0.id": None}, "id", "categories[0] has id None"),
    ({"images.1.file_name": None}, "file_name", "images[1] (id 2) has file_name None, expected a non-empty path"),
    ({"images.0.file_name": ""}, "file_name", "images[0] (id 1) has file_name ''"),
])
def test_coco_ids_and_file_names_of_the_wrong_kind_are_refused(tmp_path: Path, change: dict, field: str,
                                                              problem: str) -> None:
    from mlic.data.coco import load_coco

    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_coco(**change)))
    with pytest.raises(DataFormatError) as err:
        load_coco(path, tmp_path)
    assert (err.value.path, err.value.field) == (str(path), field)
    assert problem in err.value.problem


def test_coco_integral_float_ids_are_integers(tmp_path: Path) -> None:
    from mlic.data.coco import load_coco

    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_coco(**{"annotations.1.category_id": 4.0, "images.1.id": 2.0,
                                        "annotations.1.image_id": 2})))
    table = load_coco(path, tmp_path)
    assert table.image_ids == ["1", "2"] and table.labels.tolist() == [[1, 0], [0, 1]]


def test_a_suite_yaml_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    from mlic.report import load_suite

    path = tmp_path / "suite.yaml"
    path.write_text("name: s\nentries:\n  - notebook: [a.ipynb\n")
    with pytest.raises(ConfigError, match=rf"^{path} \(line \d+, column \d+\): not valid YAML"):
        load_suite(path)


def test_an_unknown_option_of_a_component_is_a_config_error_naming_it() -> None:
    from mlic.losses import create_loss

    with pytest.raises(ConfigError, match=r"loss 'asl': got an unexpected keyword argument 'gamma'.*gamma_neg"):
        create_loss("asl", gamma=2)


_BAD_COMMANDS = {
    "scenes": ["scenes", "--out", "{tmp}/scenes", "--image-size", "0"],
    "train": ["train", "--config", "{tmp}/bad.yaml"],
    "train-option": ["train", "--data-root", "{scenes}", "--image-size", "32", "--backbone", "test_efficientnet",
                     "--no-pretrained", "--no-progress", "--output-dir", "{tmp}/run",
                     "--set", "loss.kwargs={{foo: 1}}"],
    "eval": ["eval", "{tmp}/broken.pt"],
    "cpsd": ["cpsd", "--data-root", "{tmp}/nowhere", "--root", "{tmp}/cpsd"],
    "run": ["run", "{tmp}/bad_suite.yaml"],
    "report": ["report", "nothing", "--reports", "{tmp}/reports"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(_BAD_COMMANDS))
def test_every_command_shows_one_line_errors_and_the_traceback_only_when_asked(command: str, scenes_root: Path,
                                                                               tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("data: {image_size: [1\n")
    (tmp_path / "bad_suite.yaml").write_text("name: s\nentries:\n  - notebook: [x\n")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    args = [a.format(tmp=tmp_path, scenes=scenes_root) for a in _BAD_COMMANDS[command]]
    plain = subprocess.run([sys.executable, "-m", "mlic", *args], env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert plain.returncode == 1
    errors = [line for line in plain.stderr.splitlines() if line.startswith("mlic: error:")]
    assert len(errors) == 1 and "Traceback" not in plain.stderr, plain.stderr
    named = {"train": "bad.yaml", "eval": "broken.pt", "run": "bad_suite.yaml", "cpsd": "nowhere", "report": "reports",
             "scenes": "image_size", "train-option": "foo"}[command]
    assert named in errors[0]
    for how in (["--debug"], []):
        env = _env() if how else _env(MLIC_DEBUG="1")
        debug = subprocess.run([sys.executable, "-m", "mlic", *how, *args], env=env, capture_output=True, text=True,
                               timeout=300)
        assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


@pytest.mark.slow
def test_concurrent_runs_sharing_a_cold_cache_all_succeed_and_agree(scenes_root: Path, tmp_path: Path) -> None:
    """The small version of `benchmarks/load_shared_cache.py` (4 processes, 10 repeats there)."""
    from benchmarks.load_shared_cache import load_test

    report = load_test(scenes_root, tmp_path, processes=2, repeats=2)
    assert report["failed_repeats"] == 0 and report["failed_runs"] == 0, report["problems"]


@pytest.mark.slow
def test_train_runs_in_parallel_workers_share_a_cold_cache(scenes_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm-up fills only the first run's entries; the other two runs need the same new entries (another image
    size) and start at the same moment in two worker processes."""
    from mlic.runs import train_runs

    cache = tmp_path / "cache"
    monkeypatch.setenv("MLIC_CACHE", str(cache))
    base = tiny_config(scenes_root, tmp_path / "a", **{"model.freeze_backbone": True, "runtime.threads": 1})
    cfgs = [base, *(base.updated({"data.image_size": 40, "loss.name": loss, "output_dir": str(tmp_path / loss)})
                    for loss in ("bce", "focal"))]
    runs = train_runs(cfgs, workers=3)
    assert all(run.is_finished(cfg) for run, cfg in zip(runs, cfgs))
    entries = sorted(p.stem for p in (cache / "features").glob("*.npy"))
    splits = {base.data.train_split, base.data.val_split, *base.data.eval_splits}
    assert len(entries) == 2 * len(splits) and sorted(p.stem for p in (cache / "features").glob("*.json")) == entries
    assert not _temporaries(cache)
