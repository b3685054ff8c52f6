"""The training engine: run folder, weights selection, resume after a kill, NaN stop, bad images, frozen mode."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlic import metrics
from mlic.core.config import RunConfig
from mlic.core.errors import BadImageError, TrainingDivergedError
from mlic.core.io import read_jsonl
from mlic.data import load_split
from mlic.data.dataset import ImageDataset, build_transforms
from mlic.inference import evaluate_checkpoint
from mlic.losses import LOSSES, MultiLabelLoss
from mlic.models.heads import Head
from mlic.runs import Run
from mlic.train import fit
from mlic.train.optim import parameter_groups
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def test_run_folder_is_complete_and_self_describing(tiny_cfg: RunConfig) -> None:
    result = fit(tiny_cfg)
    run = result.run_dir
    assert RunConfig.from_yaml(run / "config.yaml") == tiny_cfg
    history = read_jsonl(run / "metrics.jsonl")
    assert [row["epoch"] for row in history] == [0, 1]
    for row in history:  # the reported weights are the better of raw and EMA on validation
        assert row["weights"] == max(("raw", "ema"), key=lambda n: row[f"val_mAP_{n}"])
    final = json.loads((run / "final.json").read_text())
    assert set(final["metrics"]) == {"val", "test", "test_bg", "test_cooc", "test_shift"}
    assert {"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "top3_OF1"} <= set(final["metrics"]["test"])
    best = Run(run).state("best")
    assert best["weights"] == final["weights"] == result.weights
    assert best["class_names"] == final["class_names"] and len(best["class_names"]) == 20
    assert best["config"] == tiny_cfg.to_dict()
    preds = Run(run).predictions("test")
    assert preds["scores"].shape == preds["targets"].shape == (48, 20)
    assert len(preds["image_ids"]) == 48 and len(set(preds["image_ids"])) == 48


def test_reported_metrics_come_from_the_saved_best_weights(tiny_cfg: RunConfig) -> None:
    result = fit(tiny_cfg)
    again = evaluate_checkpoint(result.run_dir, splits=["test"], device="cpu")
    for key in ("mAP", "CF1", "OF1"):
        assert again["test"][key] == pytest.approx(result.metrics["test"][key], abs=1e-4)


def test_metrics_equal_a_recomputation_from_saved_predictions(tiny_cfg: RunConfig) -> None:
    result = fit(tiny_cfg)
    preds = Run(result.run_dir).predictions("test_shift")
    recomputed = metrics.evaluate(preds["scores"], preds["targets"])
    assert recomputed["mAP"] == pytest.approx(result.metrics["test_shift"]["mAP"])


def _wait_for_rows(path: Path, rows: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(read_jsonl(path)) >= rows:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with code {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError("training did not reach the kill point in time")


def test_resume_after_kill_reaches_the_same_final_metrics(scenes_root: Path, tmp_path: Path) -> None:
    overrides = {"train.epochs": 4}
    straight = fit(tiny_config(scenes_root, tmp_path / "straight", **overrides))

    killed_cfg = tiny_config(scenes_root, tmp_path / "killed", **overrides)
    killed_cfg.to_yaml(tmp_path / "killed.yaml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mlic", "train", "--config", str(tmp_path / "killed.yaml")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # an epoch's row is written just before its `last.pt`: after 3 rows, epoch 1's checkpoint is surely on disk
        _wait_for_rows(tmp_path / "killed" / "metrics.jsonl", 3, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "killed" / "final.json").exists()
    last = Run(tmp_path / "killed").state("last")
    assert 1 <= last["epoch"] < 3
    subprocess.run(cmd + ["--resume"], env=env, check=True, capture_output=True, timeout=300)

    resumed = json.loads((tmp_path / "killed" / "final.json").read_text())
    assert resumed["epochs_run"] == 4
    assert [r["epoch"] for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")] == [0, 1, 2, 3]
    for split, values in straight.metrics.items():
        for key in ("mAP", "CF1", "OF1"):
            assert resumed["metrics"][split][key] == pytest.approx(values[key], abs=1e-3), (split, key)


class _NaNOnSecondEpoch(MultiLabelLoss):
    """BCE that turns NaN after a number of calls: a stand-in for a diverging run."""

    def __init__(self, after: int = 6) -> None:
        super().__init__(reduction="mean")
        self.calls = 0
        self.after = after

    def forward(self, logits, targets, *, mask=None, index=None):
        self.calls += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return loss * float("nan") if self.calls > self.after else loss


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny_cfg: RunConfig) -> None:
    if "nan_after_epoch" not in LOSSES:
        LOSSES.register("nan_after_epoch")(_NaNOnSecondEpoch)
    cfg = tiny_cfg.updated({"loss.name": "nan_after_epoch", "loss.kwargs": {"after": 6}, "train.epochs": 3})
    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        fit(cfg)  # 96 images / 16 = 6 steps per epoch: the 7th call (epoch 2) is NaN
    last = Run(Path(cfg.output_dir)).state("last")
    assert last["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    assert not (Path(cfg.output_dir) / "final.json").exists()


def _copy_with_corrupt_image(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest)
    victim = sorted((dest / "images" / "train").glob("*.png"))[3]
    victim.write_bytes(b"not a png at all")
    return victim


def test_corrupt_image_is_skipped_counted_and_named(tiny_cfg: RunConfig, scenes_root: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    victim = _copy_with_corrupt_image(scenes_root, tmp_path / "data")
    cfg = tiny_cfg.updated({"data.root": str(tmp_path / "data"), "train.epochs": 1})
    result = fit(cfg)
    assert result.skipped_images == 1
    final = json.loads((result.run_dir / "final.json").read_text())
    assert final["skipped_images"] == [str(victim)]
    assert str(victim) in caplog.text


def test_corrupt_image_raises_by_policy(tiny_cfg: RunConfig, scenes_root: Path, tmp_path: Path) -> None:
    victim = _copy_with_corrupt_image(scenes_root, tmp_path / "data")
    cfg = tiny_cfg.updated({"data.root": str(tmp_path / "data"), "data.bad_images": "raise", "train.epochs": 1})
    with pytest.raises(BadImageError, match=victim.name):
        fit(cfg)


def test_frozen_backbone_caches_features_and_trains_only_the_head(tiny_cfg: RunConfig, tmp_path: Path) -> None:
    cfg = tiny_cfg.updated({"model.freeze_backbone": True, "train.epochs": 3})
    first = fit(cfg)
    cache = Path(os.environ["MLIC_CACHE"]) / "features"
    cached = sorted(cache.glob("*.npy"))
    assert len(cached) >= 4  # train, val, test, test_shift
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    second = fit(cfg.updated({"output_dir": str(tmp_path / "again")}))
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps  # reused, not recomputed
    assert second.metrics["test"]["mAP"] == pytest.approx(first.metrics["test"]["mAP"], abs=1e-6)
    start = Run(Path(cfg.output_dir)).state("best")["state_dict"]
    from mlic.models import create_model

    torch.manual_seed(cfg.train.seed)  # the engine seeds before building the model: same initial weights
    fresh = create_model("test_efficientnet", "gap", 20, pretrained=False)
    backbone_keys = [k for k in start if k.startswith("backbone.") and start[k].is_floating_point()]
    assert backbone_keys and all(torch.equal(start[k], fresh.state_dict()[k]) for k in backbone_keys)
    assert not torch.equal(start["head.fc.weight"], fresh.state_dict()["head.fc.weight"])


def test_cached_features_equal_the_backbone_output(tiny_cfg: RunConfig) -> None:
    from mlic.train.engine import Trainer

    trainer = Trainer(tiny_cfg.updated({"model.freeze_backbone": True}))
    batches = trainer.eval_batches["test"]
    dcfg = trainer.model.backbone.pretrained_cfg
    dataset = ImageDataset(batches.table, build_transforms(32, train=False, mean=dcfg["mean"], std=dcfg["std"]))
    with torch.no_grad():
        direct = trainer.model.eval().forward_features(torch.stack([dataset[i]["image"] for i in range(4)]))
    cached = torch.from_numpy(np.asarray(batches.features.features[:4], dtype=np.float32))
    torch.testing.assert_close(cached, direct, atol=2e-2, rtol=1e-2)  # stored as float16


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[3].bias)}


def test_cli_train_help_explains_options() -> None:
    out = subprocess.run([sys.executable, "-m", "mlic", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--data-root", "--backbone", "--freeze-backbone", "--resume", "--set", "--device"):
        assert flag in out


def test_cli_set_overrides_and_print_config(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mlic", "train", "--epochs", "3", "--set",
                          "loss.kwargs={gamma_neg: 2}", "--print-config"], capture_output=True, text=True,
                         check=True).stdout
    cfg = RunConfig.from_dict(yaml.safe_load(out))
    assert cfg.train.epochs == 3 and cfg.loss.kwargs == {"gamma_neg": 2}


class _AuxHead(Head):
    """A linear head with a constant-gradient auxiliary loss and a recorded per-image output, to test the hooks."""

    recorded_aux = ("probe",)

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(in_features, num_classes)
        self.aux_weight = torch.nn.Parameter(torch.zeros(()))
        self.aux_calls = 0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean((2, 3)))

    def forward_aux(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self(features)
        return logits, {"probe": logits[:, :2] * 0 + torch.arange(2.0)}

    def forward_train(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.aux_calls += 1
        return self(features), {"pull": 1.0 * self.aux_weight}  # d/dw = 1: SGD moves w by −lr each step


def test_head_aux_losses_are_trained_and_recorded_outputs_saved(scenes_root: Path, tmp_path: Path) -> None:
    from mlic.models.heads import HEADS

    if "test_aux_head" not in HEADS.list():
        HEADS.register("test_aux_head")(_AuxHead)
    cfg = tiny_config(scenes_root, tmp_path / "aux", **{"model.head": "test_aux_head", "model.freeze_backbone": True,
                                                         "optim.name": "sgd", "optim.scheduler": "constant",
                                                         "optim.weight_decay": 0.0, "train.ema_decay": 0.0})
    result = fit(cfg)
    steps = sum(1 for _ in range(cfg.train.epochs)) * int(np.ceil(96 / 16))
    state = Run(result.run_dir).state("last")["state_dict"]
    # SGD with momentum 0.9 on a constant gradient 1: w after n steps is −lr·Σ_k (1−0.9^k)/0.1
    expected = -cfg.optim.lr * sum((1 - 0.9 ** k) / 0.1 for k in range(1, steps + 1))
    assert float(state["head.aux_weight"]) == pytest.approx(expected, rel=1e-4)
    preds = Run(result.run_dir).predictions("test")
    assert preds["aux_probe"].shape == (len(preds["scores"]), 2)
    np.testing.assert_array_equal(preds["aux_probe"][:, 1], 1.0)


def test_extra_modules_train_at_their_learning_rate_multiplier() -> None:
    from mlic.core.config import OptimConfig
    from mlic.train.optim import build_optimizer, build_scheduler

    class Estimator(torch.nn.Module):
        lr_mult = 10.0

        def __init__(self) -> None:
            super().__init__()
            self.theta = torch.nn.Parameter(torch.zeros(3, 2))

    model, estimator = torch.nn.Linear(4, 2), Estimator()
    cfg = OptimConfig(name="adam", lr=1e-3, scheduler="onecycle", weight_decay=1e-4)
    optimizer = build_optimizer(model, cfg, extra=[estimator])
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        lrs = {id(g["params"][0]): g["lr"] for g in optimizer.param_groups}
        assert lrs[id(estimator.theta)] == pytest.approx(10 * lrs[id(model.weight)])
    group = next(g for g in optimizer.param_groups if g["params"][0] is estimator.theta)
    assert group["weight_decay"] == 0.0


@pytest.mark.parametrize("total_steps", [1, 2, 5, 10])
def test_onecycle_warms_up_to_the_peak_and_anneals_for_any_number_of_steps(total_steps: int) -> None:
    """A run of 5 steps at pct_start 0.2 ends its warm-up on step 0, where torch's OneCycleLR divides by zero."""
    from mlic.core.config import OptimConfig
    from mlic.train.optim import build_optimizer, build_scheduler

    cfg = OptimConfig(name="sgd", lr=0.1, scheduler="onecycle", pct_start=0.2)
    optimizer = build_optimizer(torch.nn.Linear(2, 1), cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(lrs) <= 0.1 + 1e-12
    assert lrs[0] < 0.1 or total_steps == 1  # starts below the peak (max_lr / div_factor)
    if total_steps >= 5:
        assert max(lrs) > 0.05 and lrs[-1] < lrs[int(len(lrs) * 0.5)]  # reaches near the peak, then anneals


def test_compiled_training_forward_matches_eager(scenes_root: Path, tmp_path: Path) -> None:
    """`train.compile` wraps the training forward in `torch.compile` (the eager backend here: the check is about
    the plumbing and that the compiled graph is the same computation; inductor needs a compiler and minutes)."""
    over = {"model.freeze_backbone": True, "train.ema_decay": 0.0, "train.epochs": 2}
    eager = fit(tiny_config(scenes_root, tmp_path / "eager", **over))
    compiled = fit(tiny_config(scenes_root, tmp_path / "compiled", **over, **{"runtime.compile": "eager"}))
    for split, values in eager.metrics.items():
        assert compiled.metrics[split]["mAP"] == pytest.approx(values["mAP"], abs=1e-3)


def test_resume_refuses_a_different_number_of_epochs(tiny_cfg: RunConfig) -> None:
    fit(tiny_cfg)
    with pytest.raises(ValueError, match="planned for 2 epochs, the config asks for 3"):
        fit(tiny_cfg.updated({"train.epochs": 3, "runtime.resume": True}))


def test_feature_cache_key_changes_when_an_image_is_replaced(scenes_root: Path, tmp_path: Path) -> None:
    """Regenerating a dataset at the same paths must not serve the old images' features."""
    from mlic.data.features import backbone_fingerprint, cache_key
    from mlic.data.sources import load_split
    from mlic.models import create_model

    copy = tmp_path / "scenes"
    shutil.copytree(scenes_root, copy)
    table = load_split("scenes", copy, "val")
    backbone = backbone_fingerprint(create_model("test_efficientnet", "gap", table.num_classes,
                                                 pretrained=False).backbone)
    before = cache_key(backbone, table, {"image_size": 32})
    assert cache_key(backbone, table, {"image_size": 32}) == before
    first = Path(table.paths[0])
    shutil.copyfile(table.paths[1], first)  # another image's bytes at the same path
    os.utime(first, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert cache_key(backbone, table, {"image_size": 32}) != before


# ------------------------------------------------------------------------------------------- defects of the engine
@pytest.mark.slow
def test_ema_warmup_follows_the_global_step(tiny_cfg: RunConfig) -> None:
    """timm's warm-up decay after step t is 1 − (1 + (t − 1))^(−2/3) (capped at `ema_decay`): 0 at the first
    update, 1 − 2^(−2/3) at the second. Without warm-up the decay is `ema_decay` from the first step, as in the
    references."""
    from mlic.train import Trainer

    def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    for warmup in (True, False):
        trainer = Trainer(tiny_cfg.updated({"train.ema_warmup": warmup, "train.ema_decay": 0.999,
                                            "output_dir": tiny_cfg.output_dir + str(warmup)}))
        start = weights(trainer.ema_target)
        batches = iter(trainer.train_batches.epoch(0))
        trainer.train_step(next(batches))
        first = weights(trainer.ema_target)
        trainer.train_step(next(batches))
        second = weights(trainer.ema_target)
        ema = weights(trainer.ema.module)
        assert trainer.step == 2
        if warmup:
            d = 1 - 2 ** (-2 / 3)
            expected = {k: d * first[k] + (1 - d) * second[k] for k in ema}
        else:
            after_one = {k: 0.999 * start[k] + 0.001 * first[k] for k in ema}
            expected = {k: 0.999 * after_one[k] + 0.001 * second[k] for k in ema}
        for k in ema:
            torch.testing.assert_close(ema[k], expected[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_without_a_validation_split_the_last_epoch_is_reported_and_skips_are_counted_once(
        scenes_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "scenes"
    shutil.copytree(scenes_root, root)
    broken = sorted((root / "images" / "train").glob("*.png"))[:2]
    for path in broken:
        path.write_bytes(b"not a png")
    cfg = tiny_config(root, tmp_path / "run", **{"data.val_split": None, "train.epochs": 3,
                                                  "train.ema_decay": None})
    result = fit(cfg)
    rows = read_jsonl(Run(cfg.output_dir).history_file)
    assert all("val_mAP" not in row for row in rows)  # no number pretends to be a validation score
    assert result.best_epoch == 2 and Run(cfg.output_dir).state("best")["epoch"] == 2  # the last epoch
    assert [row["skipped_images"] for row in rows] == [2, 2, 2]  # the same two images, not 2 more each epoch
    assert sorted(Run(cfg.output_dir).final["skipped_images"]) == sorted(str(p) for p in broken)


def _voc_from_scenes(scenes_root: Path, out: Path) -> Path:
    """A VOC-layout dataset of Scenes images where the `dog` objects of every other image are marked difficult."""
    from PIL import Image

    from mlic.data.voc import VOC_CLASSES
    from tests.test_readers import _voc_object, _voc_xml

    root = out / "VOCdevkit" / "VOC2007"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split, voc_split in (("train", "trainval"), ("test", "test")):
        table = load_split("scenes", scenes_root, split)
        ids = []
        for i in range(len(table)):
            image_id = f"{split}{i:04d}"
            Image.open(table.paths[i]).convert("RGB").save(root / "JPEGImages" / f"{image_id}.jpg")
            objects = [_voc_object(VOC_CLASSES[c], int(VOC_CLASSES[c] == "dog" and i % 2 == 0), (1, 1, 20, 20))
                       for c in np.flatnonzero(table.labels[i])]
            (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, objects))
            ids.append(image_id)
        (root / "ImageSets" / "Main" / f"{voc_split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.mark.slow
def test_voc_difficult_objects_are_left_out_of_evaluation(scenes_root: Path, tmp_path: Path) -> None:
    """Under `difficult: ignore` a difficult-only class is unknown in the image: neither a positive nor a negative
    in the reported metrics, as the VOC protocol has it (the saved predictions carry the mask)."""
    from mlic.data.voc import VOC_CLASSES

    root = _voc_from_scenes(scenes_root, tmp_path)
    cfg = tiny_config(root, tmp_path / "run", **{
        "data.dataset": "voc", "data.train_split": "trainval", "data.val_split": None, "data.eval_splits": ["test"],
        "train.epochs": 1, "model.freeze_backbone": True, "train.ema_decay": None})
    result = fit(cfg)
    saved = Run(result.run_dir).predictions("test")
    table = load_split("voc", root, "test")
    dog = VOC_CLASSES.index("dog")
    assert table.observed is not None and (table.observed[:, dog] == 0).any()
    np.testing.assert_array_equal(saved["mask"], table.observed != 0)
    masked = metrics.evaluate(saved["scores"], saved["targets"], mask=saved["mask"])
    unmasked = metrics.evaluate(saved["scores"], saved["targets"])
    assert result.metrics["test"]["mAP"] == pytest.approx(masked["mAP"])
    assert masked["CF1"] != unmasked["CF1"] or masked["mAP"] != unmasked["mAP"]
