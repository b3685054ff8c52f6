"""The training engine: `fit(cfg)` builds data, model, loss and optimiser from a `RunConfig`, trains with EMA,
OneCycle and early stopping, keeps the better of the EMA and raw weights, and leaves a self-describing run folder.

The run folder's layout is `mlic.runs.Run`'s: config, per-epoch metrics, final metrics, predictions per split and
the best and last checkpoints. With `runtime.resume` a killed run continues from its last checkpoint (of the same
run: a changed identity is refused); each epoch's data order and augmentation draws are seeded from (seed, epoch),
and the EMA's warm-up from the global step, so the resumed run ends where an uninterrupted one would.

A run fails where its trouble starts rather than leaving a plausible-looking folder:

- the folder belongs to one process (`Run.lock`): a second run into it fails at once, naming the owner;
- a split with no readable image, or with more unreadable ones than `data.max_bad_fraction`, stops the run
  (missing files are counted before anything is built, undecodable ones as they are met);
- weights or scores that are not finite are never saved: the run stops with the divergence message, which names
  the last checkpoint only if this run wrote one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import mlic
from mlic import metrics
from mlic.core.config import RunConfig
from mlic.core.errors import BadImageError, ConfigError, TooManyBadImagesError, TrainingDivergedError
from mlic.core.io import (
    append_jsonl,
    atomic_save_npz,
    atomic_write_json,
    load_checkpoint,
    read_jsonl,
    remove_stale_temporaries,
    save_checkpoint,
)
from mlic.data.dataset import ImageDataset, build_transforms, check_readable, collate_skipping
from mlic.data.features import FeatureDataset, cached_features
from mlic.data.sources import load_split
from mlic.data.table import LabelledImages, missing_images
from mlic.losses import MultiLabelLoss, create_loss
from mlic.models import backbone_data_config, create_model
from mlic.models.classifier import MultiLabelClassifier
from mlic.runs import Run, torch_threads
from mlic.train import distributed
from mlic.train.early_stopping import EarlyStopping
from mlic.train.ema import create_ema
from mlic.train.optim import build_optimizer, build_scheduler
from mlic.train.sam import SAM

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What `fit` returns: the run folder, the final metrics per split, and how the reported weights were chosen."""

    run_dir: Path
    metrics: dict[str, dict[str, float]]
    best_epoch: int
    weights: str
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: int = 0


def resolve_device(name: str) -> torch.device:
    """`auto` → CUDA when available, else CPU; anything else is passed to `torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"runtime.device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device: {name!r} requested but CUDA is not available; use --device auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed torch (all devices) and numpy's global generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


class Batches:
    """One split fed as images (end to end), as cached backbone features (frozen backbone) or as the cached output
    of the backbone's frozen prefix (a cut, `model.train_from`).

    Augmentation acts on images only: on cached inputs (frozen backbone or a cut) training sees the evaluation
    transform of each image, every epoch.

    Batches are this process's shards of the global batches (`distributed.ShardedBatchSampler`); in a single
    process the shard is the whole batch. With a frozen backbone the images that could not be read when the
    features were cached are left out (`skipped`: their paths), as the image loader leaves them out of its batches.
    """

    def __init__(self, table: LabelledImages, *, train: bool, cfg: RunConfig, model: MultiLabelClassifier,
                 device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        data = cfg.data
        self.table = table
        self.train = train
        self.batch_size = data.batch_size if train else (data.eval_batch_size or data.batch_size)
        train_from = cfg.model.train_from
        self.frozen = cfg.model.freeze_backbone or train_from is not None  # fed from a cache
        eval_transform = build_transforms(data.image_size, train=False, mean=mean, std=std, normalize=data.normalize)
        self.skipped: list[str] = []
        if self.frozen:
            images = ImageDataset(table, eval_transform, bad_images=data.bad_images)
            settings = {"image_size": data.image_size, "normalize": data.normalize, "mean": list(mean),
                        "std": list(std)}
            unreadable: list[int] = []
            feats = cached_features(model, images, settings=settings, device=device,
                                    batch_size=data.eval_batch_size or data.batch_size,
                                    num_workers=cfg.runtime.num_workers, progress=cfg.runtime.progress,
                                    skipped=unreadable, train_from=train_from)
            self.skipped = [str(table.paths[row]) for row in unreadable]
            kept = np.setdiff1d(np.arange(len(table)), unreadable) if unreadable else None
            self.features = FeatureDataset(feats, table, rows=kept,
                                           key="features" if train_from is None else "cut")
        n = len(self.features) if self.frozen else len(table)
        drop_last = train and not self.frozen and n > self.batch_size
        self.sampler = distributed.ShardedBatchSampler(n, self.batch_size, shuffle=train, drop_last=drop_last,
                                                       rank=distributed.rank(), world=distributed.world_size(),
                                                       train=train)
        if not self.frozen:
            transform = build_transforms(data.image_size, train=train, mean=mean, std=std,
                                         randaugment=data.randaugment, cutout=data.cutout, hflip=data.hflip,
                                         normalize=data.normalize) if train else eval_transform
            self.images = ImageDataset(table, transform, bad_images=data.bad_images)
            self.generator = torch.Generator()
            self.loader = DataLoader(self.images, batch_sampler=self.sampler, num_workers=cfg.runtime.num_workers,
                                     collate_fn=collate_skipping, pin_memory=device.type == "cuda",
                                     persistent_workers=False, generator=self.generator)

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, seed: int) -> Iterable[dict[str, Any]]:
        """The batches of one pass; the order (train) is a function of `seed` alone."""
        self.sampler.set_seed(seed)
        if self.frozen:
            return self.features.batches_from(iter(self.sampler))
        self.generator.manual_seed(seed)
        return self.loader


def _model_input(batch: dict[str, Any], device: torch.device, channels_last: bool
                 ) -> tuple[torch.Tensor, dict[str, bool]]:
    """The batch's input tensor on `device` and what it is: backbone features (frozen backbone), a cut's prefix
    output (`cut`), or images."""
    if "features" in batch:
        return batch["features"].to(device, non_blocking=True), {"from_features": True}
    if "cut" in batch:
        return batch["cut"].to(device, non_blocking=True), {"from_cut": True}
    images = batch["image"].to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, {}


def _inputs(model: nn.Module, batch: dict[str, Any], device: torch.device, channels_last: bool,
            *, with_aux_loss: bool = False) -> Any:
    """Logits of `model` on a batch (and the head's auxiliary losses with `with_aux_loss`)."""
    inputs, kind = _model_input(batch, device, channels_last)
    return model(inputs, with_aux_loss=with_aux_loss, **kind)


def _aux_outputs(model: nn.Module, batch: dict[str, Any], device: torch.device, channels_last: bool,
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the head's `forward_aux` tensors on a batch."""
    inputs, kind = _model_input(batch, device, channels_last)
    if kind.get("from_features"):
        return model.head.forward_aux(inputs)
    return model.forward_aux(inputs, **kind)


def _loss_targets(batch: dict[str, Any], device: torch.device, loss_fn: MultiLabelLoss) -> dict[str, Any]:
    """Targets for the loss: observed labels for partial-label losses, else true labels masked to observed ones."""
    target = batch["target"].to(device, non_blocking=True)
    observed = batch.get("observed")
    kwargs: dict[str, Any] = {"index": batch["index"].to(device)}
    if observed is not None:
        observed = observed.to(device, non_blocking=True)
        if loss_fn.uses_observed:
            return {"targets": observed, **kwargs}
        kwargs["mask"] = observed != 0
    return {"targets": target, **kwargs}


class Trainer:
    """Holds the pieces of one run and runs its epochs; `fit(cfg)` is the front door."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.run = Run(cfg.output_dir)
        self.run_dir = self.run.path
        self.device = distributed.init_from_env(resolve_device(cfg.runtime.device))
        self.world = distributed.world_size()
        self.main = distributed.is_main()
        if cfg.data.batch_size % self.world:
            raise ValueError(f"data.batch_size is the global batch: {cfg.data.batch_size} does not split evenly over "
                             f"{self.world} processes")
        seed_everything(cfg.train.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        data = cfg.data
        opts = dict(data.options)
        self.train_table = _limit(load_split(data.dataset, data.root, data.train_split, **opts), data.max_train_images)
        self.train_eval_table = self.train_table  # evaluation on the training split uses its labels as read
        if data.partial:  # single-positive / partial-label training: observed labels simulated from the full ones
            from mlic.data.partial import simulate_observed
            self.train_table = simulate_observed(self.train_table, **data.partial)
        self.val_table = load_split(data.dataset, data.root, data.val_split, **opts) if data.val_split else None
        self.eval_tables = {s: load_split(data.dataset, data.root, s, **opts) for s in data.eval_splits}
        self.class_names = self.train_table.class_names
        for split, table in self._all_eval_tables().items():
            if table.class_names != self.class_names:
                raise ValueError(f"split {split!r} has classes {table.class_names[:5]}... which differ from the "
                                 f"training split's {self.class_names[:5]}...")
        self.skipped: set[str] = set()  # distinct unreadable images (each is met again every epoch)
        self.skipped_in: dict[str, set[str]] = {}  # the same, per split
        for split, table in {data.train_split: self.train_table, **self._all_eval_tables()}.items():
            self._check_files(split, table)

        m = cfg.model
        self.model = create_model(m.backbone, m.head, len(self.class_names), pretrained=m.pretrained,
                                  head_kwargs=m.head_kwargs, backbone_kwargs=m.backbone_kwargs,
                                  train_from=m.train_from).to(self.device)
        # graph heads: label graph and label embeddings; MoE heads: label groups (from the training split)
        self.model.head.bind(self.train_table.labels, self.train_table.class_names)
        if m.freeze_backbone:
            self.model.backbone.requires_grad_(False)
        self.cuda = self.device.type == "cuda"
        self.channels_last = self.cuda and cfg.train.channels_last and not m.freeze_backbone and not m.train_from
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        dcfg = backbone_data_config(self.model.backbone)
        mean, std = tuple(dcfg["mean"]), tuple(dcfg["std"])
        make = lambda table, train: Batches(table, train=train, cfg=cfg, model=self.model,  # noqa: E731
                                            device=self.device, mean=mean, std=std)
        with distributed.local_main_first():  # one process per machine writes the feature cache, the others read it
            self.train_batches = make(self.train_table, True)
            self.eval_batches = {s: make(t, False) for s, t in self._all_eval_tables().items()}
            tune_on = cfg.train.threshold_split
            if tune_on is not None and tune_on not in self.eval_batches:
                if tune_on != data.train_split:
                    raise ValueError(f"threshold_split {tune_on!r} is neither the training split nor an evaluated "
                                     "split")
                self.eval_batches[tune_on] = make(self.train_eval_table, False)
        for split, batches in [(data.train_split, self.train_batches), *self.eval_batches.items()]:
            if batches.frozen:  # the images the feature cache could not read
                self._count_skipped(split, batches.skipped)
                self._check_readable(split, batches.table)

        self.loss_fn = create_loss(cfg.loss.name, **cfg.loss.kwargs)
        self.loss_fn.bind(self.train_table)
        self.loss_fn.to(self.device)
        # DDP averages gradients over ranks: a loss summed over the batch needs ×world to match one process
        self.loss_scale = float(self.world) if self.loss_fn.reduction == "sum" else 1.0
        self.train_model: nn.Module = self.model
        if self.world > 1:
            if self.cuda and cfg.train.sync_batchnorm and not m.freeze_backbone:
                # batch statistics over the global batch, as one process would compute them (NCCL only)
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.cuda else None,
                find_unused_parameters=cfg.train.find_unused_parameters)
        if cfg.runtime.compile:
            backend = cfg.runtime.compile if isinstance(cfg.runtime.compile, str) else "inductor"
            self.train_model = torch.compile(self.train_model, backend=backend)
        self.optimizer = build_optimizer(self.model, cfg.optim, extra=[self.loss_fn])
        steps = len(self.train_batches)
        if cfg.train.max_steps_per_epoch:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        self.steps_per_epoch = steps
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, steps * cfg.train.epochs)
        self.amp_dtype = torch.bfloat16 if self.cuda and torch.cuda.is_bf16_supported() else torch.float16
        self.amp = self.cuda and cfg.train.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        if isinstance(self.optimizer, SAM) and self.scaler.is_enabled():
            raise ValueError("SAM with fp16 mixed precision is not supported (its two steps do not fit one grad "
                             "scaler update): use a GPU with bf16 (Ampere or newer), or train.amp=False")
        # a frozen backbone never changes: averaging only the head saves most of the EMA's cost
        self.ema_target = self.model.head if m.freeze_backbone else self.model
        self.ema = (create_ema(self.ema_target, cfg.train.ema_decay, warmup=cfg.train.ema_warmup)
                    if cfg.train.ema_decay else None)
        self.start_epoch = 0
        self.best: dict[str, Any] = {"score": -math.inf, "epoch": -1, "weights": "raw"}
        self.stopper = EarlyStopping(cfg.train.early_stopping_patience, cfg.train.early_stopping_smoothing)
        self.step = 0  # optimiser steps so far (the EMA's warm-up counts them)
        self.saved_epoch: int | None = None  # the epoch of the last `last.pt` this run wrote (or resumed from)
        self.progress = cfg.runtime.progress and self.main

    def _ema_model(self) -> nn.Module:
        """The averaged weights as a whole classifier (the shared frozen backbone plus the averaged head)."""
        if self.ema_target is self.model:
            return self.ema.module
        model = self.model
        return MultiLabelClassifier(model.backbone, self.ema.module, num_classes=model.num_classes,
                                    backbone_name=model.backbone_name, head_name=model.head_name)

    def _all_eval_tables(self) -> dict[str, LabelledImages]:
        tables = dict(self.eval_tables)
        if self.val_table is not None:
            tables = {self.cfg.data.val_split: self.val_table, **tables}
        return tables

    # ----------------------------------------------------------------- unreadable images
    def _check_files(self, split: str, table: LabelledImages) -> None:
        """Before anything is built: a split without images, or whose files are missing beyond what the policy
        allows (a wrong `data.root` is caught here, not after an epoch of nothing)."""
        missing = [str(table.paths[row]) for row in missing_images(table)]
        if missing and self.cfg.data.bad_images == "raise":
            raise BadImageError(missing[0], f"file not found ({len(missing)} of {len(table)} images of split "
                                            f"{split!r} are missing; data.bad_images is 'raise')")
        check_readable(table, missing, split=split, max_fraction=self.cfg.data.max_bad_fraction)

    def _count_skipped(self, split: str, paths: Iterable[str]) -> None:
        paths = list(paths)
        self.skipped.update(paths)
        self.skipped_in.setdefault(split, set()).update(paths)

    def _check_readable(self, split: str, table: LabelledImages) -> None:
        """Stop when `split` had no readable image or more unreadable ones than `data.max_bad_fraction`."""
        skipped = self.skipped_in.get(split, set())
        if self.world > 1:  # every rank met its own shards' images; all ranks take the same decision
            skipped = set().union(*distributed.all_gather_objects(skipped))
        check_readable(table, skipped, split=split, max_fraction=self.cfg.data.max_bad_fraction)

    # ----------------------------------------------------------------- divergence
    def _last_good(self) -> str:
        """Where the last good checkpoint of this run is, or that there is none."""
        last = self.run.checkpoint("last")
        if self.saved_epoch is not None and last.is_file():
            return f"The last good checkpoint is kept at {last} (after epoch {self.saved_epoch + 1})."
        return "No checkpoint of this run was written (it diverged in its first epoch)."

    def _check_finite(self, epoch: int) -> None:
        """Refuse to go on (and to save) when a weight or a buffer is NaN or infinite: a loss can stay finite for a
        while after the weights have overflowed."""
        modules = {"": self.model} if self.ema is None else {"": self.model, "ema ": self.ema.module}
        bad: dict[str, int] = {}
        for prefix, module in modules.items():
            for name, tensor in module.state_dict().items():
                if tensor.is_floating_point():
                    count = int((~torch.isfinite(tensor)).sum())
                    if count:
                        bad[prefix + name] = count
        if bad:
            worst = ", ".join(f"{name} ({count})" for name, count in sorted(bad.items(), key=lambda kv: -kv[1])[:3])
            raise TrainingDivergedError(
                f"training diverged in epoch {epoch + 1}: {sum(bad.values())} weight values are NaN or infinite "
                f"(in {worst}); the run stops here and saves nothing of this epoch. {self._last_good()} Lower the "
                "learning rate or set optim.grad_clip.")

    # ----------------------------------------------------------------- checkpoints
    def _payload(self, model_state: dict[str, torch.Tensor], weights: str, epoch: int) -> dict[str, Any]:
        return {"state_dict": model_state, "config": self.cfg.to_dict(), "class_names": list(self.class_names),
                "mlic_version": mlic.__version__, "weights": weights, "epoch": epoch}

    def _save_last(self, epoch: int) -> None:
        if not self.main:
            return
        payload = self._payload(self.model.state_dict(), "raw", epoch)
        payload.update({
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": None if self.ema is None else self.ema.module.state_dict(),
            "loss_state": self.loss_fn.state_dict(),
            "best": dict(self.best),
            "early_stopping": self.stopper.state_dict(),
            "step": self.step,
        })
        save_checkpoint(self.run.checkpoint("last"), payload)
        self.saved_epoch = epoch

    def _restore(self, path: Path) -> None:
        # rank 0 reads and sends: the other machines need not see the run folder
        state = distributed.broadcast_from_main(load_checkpoint(path, map_location="cpu") if self.main else None)
        planned = state["config"]["train"]["epochs"]
        if planned != self.cfg.train.epochs:
            raise ConfigError(f"{path} belongs to a run planned for {planned} epochs, the config asks for "
                              f"{self.cfg.train.epochs}: resume continues the same schedule. Start a new run "
                              "(output_dir) to train longer.")
        changed = identity_changes(RunConfig.from_dict(state["config"]), self.cfg)
        if changed:
            raise ConfigError(f"{path} belongs to another run: resume continues the same run, but the config changes "
                              f"{'; '.join(changed)}. Start a new run (another output_dir), or train this folder "
                              "afresh without resume.")
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.loss_fn.load_state_dict(state["loss_state"])
        self.best = dict(state["best"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.start_epoch = int(state["epoch"]) + 1
        self.saved_epoch = int(state["epoch"])
        self.step = int(state.get("step", self.start_epoch * self.steps_per_epoch))
        if not self.main:
            return
        history = read_jsonl(self.run.history_file)
        kept = [row for row in history if row["epoch"] < self.start_epoch]
        if len(kept) != len(history):  # epochs after the checkpoint were never saved: drop their rows
            self.run.history_file.unlink()
            for row in kept:
                append_jsonl(self.run.history_file, row)
        log.info("resumed from %s at epoch %d", path, self.start_epoch)

    # ----------------------------------------------------------------- loops
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training batches; returns the mean loss and the learning rate at the end."""
        self.model.train()
        if self.cfg.model.freeze_backbone:
            self.model.backbone.eval()
        epoch_seed = self.cfg.train.seed * 1_000_003 + epoch
        torch.manual_seed(epoch_seed + 7919 * distributed.rank())  # augmentation draws differ between ranks
        total, count = 0.0, 0
        bar = tqdm(self.train_batches.epoch(epoch_seed), total=self.steps_per_epoch, desc=f"epoch {epoch + 1}",
                   leave=False, disable=not self.progress, mininterval=1.0)
        for step, batch in enumerate(bar):
            if step >= self.steps_per_epoch:
                break
            self._count_skipped(self.cfg.data.train_split, batch["skipped"])
            if "target" not in batch:
                if self.world > 1:  # skipping the step on one rank only would hang the others in DDP's all-reduce
                    raise BadImageError(f"every image of a batch shard on rank {distributed.rank()} is unreadable "
                                        f"({batch['skipped'][:3]}...); fix or remove them, or train in one process")
                continue
            loss = self.train_step(batch)
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss is {loss} at epoch {epoch + 1}, step {step + 1}; the run stops here. {self._last_good()} "
                    "Lower the learning rate or set optim.grad_clip.")
            total += loss
            count += 1
            if count % 10 == 0:
                bar.set_postfix(loss=f"{total / count:.4f}")
        split = self.cfg.data.train_split
        self._check_readable(split, self.train_table)
        if distributed.mean_over_ranks(float(count)) == 0:
            raise TooManyBadImagesError(self.cfg.data.root, f"no training step in epoch {epoch + 1}: every batch of "
                                                            f"split {split!r} was unreadable")
        return {"train_loss": total / max(count, 1), "lr": self.optimizer.param_groups[0]["lr"]}

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            logits, aux_losses = _inputs(self.train_model, batch, self.device, self.channels_last,
                                         with_aux_loss=True)
        loss = self.loss_fn(logits.float(), **_loss_targets(batch, self.device, self.loss_fn))
        for aux in aux_losses.values():  # heads' own weighted terms, e.g. MoE load balancing
            loss = loss + aux.float()
        return loss

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss * self.loss_scale).backward()
        if self.world > 1:  # parameters outside the DDP wrapper (a loss's own, e.g. ROLE's estimator)
            distributed.average_gradients([p for p in self.loss_fn.parameters() if p.requires_grad])
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)

    def train_step(self, batch: dict[str, Any]) -> float:
        """Forward, loss, backward, optimiser and schedule step, EMA update; returns the loss value.

        With SAM the step takes two forward/backward passes on the batch: one at the weights, one at the
        perturbed weights whose gradients the base optimiser applies.
        """
        loss = self._loss(batch)
        value = distributed.mean_over_ranks(float(loss.detach()))  # every rank sees the same value (and NaN)
        if not math.isfinite(value):
            return value
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(loss)
        if isinstance(self.optimizer, SAM):
            self.optimizer.first_step()
            self.optimizer.zero_grad(set_to_none=True)
            self._backward(self._loss(batch))
            self.optimizer.second_step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:  # the step drives timm's warm-up; without it the decay is fixed, as in the papers
            self.ema.update(self.ema_target, step=self.step if self.cfg.train.ema_warmup else None)
        return value

    @torch.inference_mode()
    def predict(self, model: nn.Module, split: str, *, aux: dict[str, list[np.ndarray]] | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sigmoid scores, true labels and row indices of `split` for `model` (in eval mode).

        With `aux` (a dict to fill), the head's `recorded_aux` outputs (e.g. MoE gate weights) are collected too.
        """
        batches = self.eval_batches[split]
        keys = tuple(model.head.recorded_aux) if aux is not None else ()
        was_training = model.training
        model.eval()
        scores, targets, indices = [], [], []
        try:
            for batch in tqdm(batches.epoch(0), total=len(batches), desc=split, leave=False, disable=not self.progress):
                self._count_skipped(split, batch["skipped"])
                if "target" not in batch:
                    continue
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    if keys:
                        logits, outputs = _aux_outputs(model, batch, self.device, self.channels_last)
                        for key in keys:
                            aux.setdefault(key, []).append(outputs[key].float().cpu().numpy().astype(np.float16))
                    else:
                        logits = _inputs(model, batch, self.device, self.channels_last)
                scores.append(torch.sigmoid(logits.float()).cpu().numpy())
                targets.append(batch["target"].numpy())
                indices.append(batch["index"].numpy())
        finally:
            model.train(was_training)
        self._check_readable(split, batches.table)
        num_classes = len(self.class_names)
        local = (_stack(scores, (0, num_classes), np.float32), _stack(targets, (0, num_classes), np.float32),
                 _stack(indices, (0,), np.int64), {k: np.concatenate(v) for k, v in (aux or {}).items()})
        if self.world == 1:
            parts = [local]
        else:  # every rank gets the whole split's scores, in table order, so every rank takes the same decisions
            parts = distributed.all_gather_objects(local)
        order = np.argsort(np.concatenate([p[2] for p in parts]), kind="stable")
        if aux is not None:
            for key in list(aux):
                aux[key] = [np.concatenate([p[3][key] for p in parts if key in p[3]])[order]]
        scores = np.concatenate([p[0] for p in parts])[order]
        if not np.isfinite(scores).all():
            raise TrainingDivergedError(
                f"training diverged: {int((~np.isfinite(scores)).sum())} scores on split {split!r} are NaN or "
                f"infinite; the run stops here and saves nothing of this epoch. {self._last_good()} Lower the "
                "learning rate or set optim.grad_clip.")
        return (scores, np.concatenate([p[1] for p in parts])[order].astype(np.uint8),
                np.concatenate([p[2] for p in parts])[order])

    def mask(self, split: str, rows: np.ndarray) -> np.ndarray | None:
        """The evaluation mask of `rows` of `split` (None: every entry counts; see `LabelledImages.evaluation_mask`)."""
        mask = self.eval_batches[split].table.evaluation_mask()
        return None if mask is None else mask[rows]

    def score(self, model: nn.Module, split: str) -> dict[str, float]:
        """The selection and report metrics of `model` on `split`."""
        scores, targets, rows = self.predict(model, split)
        return metrics.evaluate(scores, targets, threshold=0.5, mask=self.mask(split, rows))

    # ----------------------------------------------------------------- the run
    def fit(self) -> RunResult:
        """Train every epoch, then evaluate (`finish`); the run folder is this process's while it runs."""
        with self.run.lock() if self.main else contextlib.nullcontext():
            return self._fit()

    def _fit(self) -> RunResult:
        cfg = self.cfg
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir)  # left by a process killed while writing
        last = self.run.checkpoint("last")
        if distributed.broadcast_from_main(cfg.runtime.resume and last.exists()):
            self._restore(last)
        elif self.main:  # a fresh start: what a previous run left must not pass for this run's results
            self.run.history_file.unlink(missing_ok=True)
            self.run.final_file.unlink(missing_ok=True)
        if self.main:
            cfg.to_yaml(self.run.config_file)
        log.info("run %s: %d train images, %d classes, device %s, %s", self.run_dir, len(self.train_table),
                 len(self.class_names), self.device, _regime(cfg))
        val_split = cfg.data.val_split
        metric = cfg.train.selection_metric
        for epoch in range(self.start_epoch, cfg.train.epochs):
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch, **self.train_one_epoch(epoch)}
            self._check_finite(epoch)
            candidates = {"raw": self.model}
            if self.ema is not None:
                candidates["ema"] = self._ema_model()
            if val_split:
                for name, model in candidates.items():
                    row[f"val_{metric}_{name}"] = self.score(model, val_split)[metric]
                chosen = max(candidates, key=lambda n: row[f"val_{metric}_{n}"])
                row[f"val_{metric}"] = row[f"val_{metric}_{chosen}"]
                improved = row[f"val_{metric}"] > self.best["score"]
            else:  # no validation split: the raw weights of the last epoch are the ones reported
                chosen, improved = "raw", True
            row["weights"] = chosen
            row["epoch_seconds"] = time.perf_counter() - started
            row["skipped_images"] = len(self.skipped)
            if improved:
                self.best = {"score": row.get(f"val_{metric}", float(epoch)), "epoch": epoch, "weights": chosen}
                if self.main:
                    save_checkpoint(self.run.checkpoint("best"),
                                    self._payload(candidates[chosen].state_dict(), chosen, epoch))
            stop = self.stopper.update(row[f"val_{metric}"]) if val_split else False
            if self.main:
                append_jsonl(self.run.history_file, row)
            self._save_last(epoch)
            log.info("epoch %d: loss %.4f, %s (%s)", epoch + 1, row["train_loss"],
                     f"val {metric} {row[f'val_{metric}']:.2f}" if val_split else "no validation split", chosen)
            if stop:
                log.info("early stopping after epoch %d: no improvement for %d epochs", epoch + 1,
                         self.stopper.bad_epochs)
                break
        return self.finish()

    def finish(self) -> RunResult:
        """Evaluate the best weights on every split, save predictions and `final.json` (rank 0 writes)."""
        # rank 0 reads best.pt and sends it: other machines need not share the run folder's disk
        best = load_checkpoint(self.run.checkpoint("best"), map_location="cpu") if self.main else None
        best = distributed.broadcast_from_main(best)
        self.model.load_state_dict(best["state_dict"])
        recorded: dict[str, dict[str, list[np.ndarray]]] = {split: {} for split in self.eval_batches}
        predictions = {split: self.predict(self.model, split, aux=recorded[split]) for split in self.eval_batches}
        skipped = sorted({path for part in distributed.all_gather_objects(self.skipped) for path in part})
        thresholds = None
        if self.cfg.train.threshold_split is not None:
            split = self.cfg.train.threshold_split
            scores, targets, rows = predictions[split]
            thresholds = metrics.tune_thresholds(scores, targets, mask=self.mask(split, rows))
        if self.main and thresholds is not None:
            atomic_write_json(self.run.thresholds_file,
                              {"split": self.cfg.train.threshold_split,
                               "thresholds": dict(zip(self.class_names, thresholds.tolist()))})
        results: dict[str, dict[str, float]] = {}
        for split, (scores, targets, idx) in predictions.items():
            mask = self.mask(split, idx)
            results[split] = split_metrics(scores, targets, thresholds, mask=mask)
            if not self.main:
                continue
            ids = np.asarray([self.eval_batches[split].table.image_ids[i] for i in idx])
            extra = {f"aux_{key}": np.concatenate(parts) for key, parts in recorded[split].items()}
            if mask is not None:
                extra["mask"] = mask
            atomic_save_npz(self.run.predictions_file(split), scores=scores, targets=targets,
                            image_ids=ids, class_names=np.asarray(self.class_names), **extra)
        history = distributed.broadcast_from_main(self.run.history if self.main else None)
        if self.main:
            final = {"metrics": results, "best_epoch": int(best["epoch"]), "weights": best["weights"],
                     "epochs_run": len(history), "skipped_images": skipped, "class_names": list(self.class_names),
                     "processes": self.world, "mlic_version": mlic.__version__,
                     "train_seconds": float(sum(row.get("epoch_seconds", 0.0) for row in history))}
            atomic_write_json(self.run.final_file, final)
            if skipped:
                log.warning("%d unreadable image(s) were skipped; listed in final.json", len(skipped))
        return RunResult(self.run_dir, results, int(best["epoch"]), best["weights"], history, len(skipped))


def split_metrics(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | None = None, *,
                  mask: np.ndarray | None = None) -> dict[str, float]:
    """The reported metrics of one split: at 0.5, top-3 (`top3_*`), and with tuned per-class thresholds
    (`*_adaptive`, the AAM paper's Table 6) when `thresholds` are given; `mask` leaves unknown entries out."""
    result = metrics.evaluate(scores, targets, threshold=0.5, mask=mask)
    result.update({f"top3_{k}": v for k, v in metrics.evaluate(scores, targets, top_k=3, mask=mask).items()
                   if k != "mAP"})
    if thresholds is not None:
        adaptive = metrics.evaluate(scores, targets, thresholds=thresholds, mask=mask)
        result.update({f"{k}_adaptive": adaptive[k] for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")})
    return result


def _stack(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Concatenate batch arrays; an empty array of `empty_shape` when a rank had no rows."""
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype=dtype)


def _regime(cfg: RunConfig) -> str:
    """What trains, in words (for the log)."""
    if cfg.model.freeze_backbone:
        return "frozen backbone"
    return f"trained from {cfg.model.train_from}" if cfg.model.train_from else "end to end"


def _limit(table: LabelledImages, n: int | None) -> LabelledImages:
    return table if n is None or n >= len(table) else table.subset(np.arange(n))


def identity_changes(saved: RunConfig, cfg: RunConfig) -> list[str]:
    """The identity fields (`RunConfig.identity`) that differ between `saved` and `cfg`, as ``field: old → new``."""
    old, new = _flatten(saved.identity()), _flatten(cfg.identity())
    return [f"{key}: {old.get(key)!r} → {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def fit(cfg: RunConfig) -> RunResult:
    """Train and evaluate one run described by `cfg`; see the module docstring for the run folder.

    The run folder is locked before the data and the model are built, so a second run into a folder in use fails
    at once (`FolderInUseError`).
    """
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes the folder
    # several runs at once on a small machine: each keeps to its share of the cores, and the caller's setting returns
    with torch_threads(cfg.runtime.threads), Run(cfg.output_dir).lock() if main else contextlib.nullcontext():
        return Trainer(cfg).fit()
