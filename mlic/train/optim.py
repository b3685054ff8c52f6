"""Optimisers and schedules of the papers' recipes.

Weight decay is "true" decay on weights only: biases and every 1-D parameter (norm scales and shifts) go into a
group with no decay, as ASL's `add_weight_decay` does. OneCycle is stepped every iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from mlic.core.config import OptimConfig
from mlic.core.registry import Registry
from mlic.losses.registry import MultiLabelLoss
from mlic.train.sam import SAM

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)
OPTIMIZERS.register("sgd")(lambda params, lr, weight_decay=0.0: torch.optim.SGD(params, lr=lr, momentum=0.9,
                                                                               weight_decay=weight_decay))


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with `weight_decay`, biases and 1-D parameters without."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, cfg: OptimConfig, *, extra: Sequence[MultiLabelLoss] = ()
                    ) -> torch.optim.Optimizer:
    """The optimiser named in `cfg` over `module`'s trainable parameters (decay on weights only), wrapped in SAM
    when `cfg.sam` is set.

    `extra` losses with parameters (ROLE's label estimator) get their own group without weight decay, at
    `cfg.lr × loss.lr_mult` (declared by `MultiLabelLoss`, default 1); the schedule keeps that ratio.
    """
    groups = parameter_groups(module, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters")
    for other in extra:
        params = [p for p in other.parameters() if p.requires_grad]
        if params:
            mult = float(other.lr_mult)
            groups.append({"params": params, "weight_decay": 0.0, "lr": cfg.lr * mult, "lr_mult": mult})
    base = OPTIMIZERS.get(cfg.name)
    if cfg.sam:
        return SAM(groups, base, rho=cfg.sam_rho, adaptive=cfg.sam_adaptive, lr=cfg.lr, weight_decay=0.0)
    return base(groups, lr=cfg.lr, weight_decay=0.0)


SCHEDULERS: Registry[Callable[..., LRScheduler]] = Registry("scheduler")


@SCHEDULERS.register("onecycle")
def _onecycle(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    max_lr = [cfg.lr * group.get("lr_mult", 1.0) for group in optimizer.param_groups]
    total_steps = max(total_steps, 1)
    pct_start = cfg.pct_start
    if math.isclose(pct_start * total_steps, 1.0):
        # the warm-up would end on step 0, where OneCycleLR divides by its zero length: warm up over 1.5 steps
        pct_start = 1.5 / total_steps
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                               pct_start=pct_start, div_factor=cfg.div_factor,
                                               final_div_factor=cfg.final_div_factor)


@SCHEDULERS.register("cosine")
def _cosine(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))


@SCHEDULERS.register("constant")
def _constant(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    """The per-iteration schedule named in `cfg` over `total_steps` optimiser steps.

    Under SAM the schedule drives the base optimiser, whose `step` is the one called (the groups are shared).
    """
    target = optimizer.base_optimizer if isinstance(optimizer, SAM) else optimizer
    return SCHEDULERS.get(cfg.scheduler)(target, cfg, total_steps)
