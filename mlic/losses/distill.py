"""Knowledge distillation on logits: `kd_mse` (MSE to one teacher) and `cpsd` (CPSD's student objective).

Paper: J. Xu, S. Huang, F. Zhou, L. Huangfu, D. Zeng, B. Liu, "Boosting Multi-Label Image Classification with
Complementary Parallel Self-Distillation", IJCAI 2022 (seed 001, Eq. 6–7). Reference code: ``Robbie-Xu/CPSD``,
``dis_B_cpsd.py``.

The student of CPSD learns from the labels and from the logits of two teacher families, each merged back to the
global label order: the co-occurrence (CGP) teachers and the dis-occurrence (DGP) teachers.

Paper and reference versus `mlic`:

- Weights. Paper (Eq. 6–7): ``L = ASL + ½‖s − T_cgp‖² + ½‖s − T_dgp‖²``. Reference: ``L = 0.5·ASL + (α/2)·MSE(s,
  T_cgp) + round(0.5 − α/2, 2)·MSE(s, T_dgp)`` with α = 0.5, i.e. 0.5 / 0.25 / 0.25 — the paper's ratios, halved.
  `mlic` defaults to the reference's weights (``cls_weight=0.5, alpha=0.5``); the paper's are ``cls_weight=1,
  teacher_weights={"cgp": 0.5, "dgp": 0.5}``, the same ratios doubled. Under Adam a global factor changes next to
  nothing; the ratio is what matters. (α moves weight between the two families; their sum stays 0.5.)
- Reduction. The reference sums ASL and the squared errors over batch and classes (``MSELoss(size_average=False)``).
  `mlic` losses default to ``"mean"``: here every term is its sum divided by ``B·C`` (ASL: by its counted entries),
  so the ratio of the terms — hence the optimum — is the reference's; ``reduction="sum"`` gives its exact values.
- Teacher targets are logits (no sigmoid), as in the reference. Its ``--metric kl`` option (a softmax KL across
  classes, odd for multi-label) is not provided.
- Teacher logits come from a cache written after the teachers trained (`mlic.studies.cpsd`), computed in eval mode
  on the un-augmented (evaluation-transform) training images, and are looked up by the samples' dataset `index`. The
  reference runs its teachers online, on the student's augmented batch and — a bug — in train mode. In frozen-backbone
  mode there is no augmentation, so the two coincide apart from that bug.
- A label `mask` (partial labels) applies to the classification term only: the teachers' logits exist for every
  label.

A teacher file is an ``.npz`` with ``logits`` ``[N, C]`` (float), ``image_ids`` ``[N]`` and ``class_names`` ``[C]``;
`bind(table)` (called by the training engine with the training table) aligns its rows to the table's images by
id, so a table that is a subset or a reordering of the teacher's images works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mlic.losses.registry import LOSSES, MultiLabelLoss, check_reduction, create_loss, reduce_loss

REFERENCE_KD_WEIGHT = 0.5
"""Total weight of the distillation terms in the reference (α/2 + (0.5 − α/2))."""


def mse_logits(student: Tensor, teacher: Tensor, *, reduction: str = "mean") -> Tensor:
    """Squared error between student and teacher logits, ``[B, C]`` each, reduced (``mean`` over B·C, ``sum``,
    ``none``). KD "as MSE on logits" (seed 001, Eq. 6); the teacher is a constant target (detached)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student.shape)} vs "
                         f"{tuple(teacher.shape)}")
    dtype = torch.promote_types(student.dtype, torch.float32)
    return reduce_loss((student.to(dtype) - teacher.detach().to(dtype)).pow(2), None, check_reduction(reduction))


def load_teacher_logits(path: str | Path) -> dict[str, np.ndarray]:
    """Read a teacher-logits file: ``logits`` ``[N, C]``, ``image_ids`` ``[N]``, ``class_names`` ``[C]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher logits file {path} does not exist; train the teachers first "
                                "(mlic.studies.cpsd / `mlic cpsd`)")
    with np.load(path, allow_pickle=False) as data:
        missing = {"logits", "image_ids", "class_names"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)}")
        return {key: data[key] for key in ("logits", "image_ids", "class_names")}


def align_teacher_logits(data: Mapping[str, np.ndarray], image_ids: Sequence[Any], class_names: Sequence[str], *,
                         source: str = "teacher logits") -> np.ndarray:
    """The rows of a teacher-logits file in the order of `image_ids`, checked against `class_names`.

    Raises:
        ValueError: if the classes differ or an image has no teacher row.
    """
    names = [str(n) for n in data["class_names"]]
    if names != [str(n) for n in class_names]:
        raise ValueError(f"{source}: classes {names[:4]}... differ from the training table's "
                         f"{list(class_names)[:4]}...")
    row_of = {str(image_id): row for row, image_id in enumerate(data["image_ids"])}
    missing = [str(i) for i in image_ids if str(i) not in row_of]
    if missing:
        raise ValueError(f"{source}: no teacher logits for {len(missing)} training image(s), e.g. {missing[:3]}")
    rows = np.fromiter((row_of[str(i)] for i in image_ids), dtype=np.int64, count=len(image_ids))
    return np.asarray(data["logits"], dtype=np.float32)[rows]


class _TeacherBank:
    """Teacher logits aligned to the training table, kept off the state dict, moved to the logits' device once."""

    def __init__(self, files: Mapping[str, str]) -> None:
        self.files = {name: str(path) for name, path in files.items()}
        self.logits: Tensor | None = None  # [T, N, C]

    @property
    def names(self) -> list[str]:
        return list(self.files)

    def bind(self, table: Any) -> None:
        aligned = [align_teacher_logits(load_teacher_logits(path), table.image_ids, table.class_names,
                                        source=f"{name} teacher logits {path}")
                   for name, path in self.files.items()]
        self.logits = torch.from_numpy(np.stack(aligned)) if aligned else None

    def set(self, logits: Mapping[str, Tensor | np.ndarray]) -> None:
        if list(logits) != self.names:
            raise ValueError(f"expected teacher logits for {self.names}, got {list(logits)}")
        self.logits = torch.stack([torch.as_tensor(np.asarray(v), dtype=torch.float32) for v in logits.values()])

    def lookup(self, index: Tensor | None, device: torch.device) -> Tensor:
        """``[T, B, C]`` teacher logits of the samples `index`."""
        if self.logits is None:
            raise RuntimeError("teacher logits are not bound: the engine calls bind(train_table) before "
                               "training; call it (or set_teacher_logits) when using the loss directly")
        if index is None:
            raise ValueError("distillation needs the samples' dataset `index` to look up their teacher logits")
        if self.logits.device != device:
            self.logits = self.logits.to(device)
        return self.logits[:, index.to(device=device, dtype=torch.long)]


@LOSSES.register("kd_mse")
class LogitDistillationLoss(MultiLabelLoss):
    """Knowledge distillation as the MSE between student and teacher logits.

    With `teacher` (a teacher-logits file), the teacher's logits of each sample are looked up by `index` after
    `bind` and `targets` are ignored: a pure distillation objective. Without it, `targets` are taken to be the
    teacher's logits, so ``loss(student_logits, teacher_logits)`` works directly.

    Args:
        teacher: path of a teacher-logits ``.npz`` file, or None.
        reduction: ``"mean"`` over B·C (default), ``"sum"`` (the reference's) or ``"none"``.
    """

    def __init__(self, *, teacher: str | None = None, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        self.bank = _TeacherBank({"teacher": teacher}) if teacher else None

    def bind(self, table: Any) -> None:
        """Load the teacher's logits aligned to the rows of the training table."""
        if self.bank is not None:
            self.bank.bind(table)

    def forward(self, logits: Tensor, targets: Tensor, *, mask: Tensor | None = None,
                index: Tensor | None = None) -> Tensor:
        """MSE to the bound teacher's logits of `index`, or to `targets` when no teacher file was given."""
        teacher = targets if self.bank is None else self.bank.lookup(index, logits.device)[0]
        return mse_logits(logits, teacher, reduction=self.reduction)


@LOSSES.register("cpsd")
class DistilledStudentLoss(MultiLabelLoss):
    """CPSD's student objective: a classification loss plus weighted MSEs to merged teacher logits.

    ``L = cls_weight · base(s, y) + Σ_t w_t · MSE(s, T_t)``, each term reduced with `reduction`. The teachers are
    named; with CPSD's two families ``{"cgp", "dgp"}`` the reference weights are ``w_cgp = α/2`` and ``w_dgp =
    round(0.5 − α/2, 2)``; with one teacher (SD, CGPD, DGPD, random) it gets the reference's total distillation
    weight 0.5; with other sets each of n teachers gets 0.5/n. `teacher_weights` overrides all of this.

    Args:
        teachers: name → teacher-logits file (see the module docstring); may be empty (then this is `base`).
        alpha: the reference's CGP/DGP balance, in [0, 1] (0.5: equal).
        cls_weight: weight of the classification term (reference 0.5; the paper's 1 goes with KD weights 0.5).
        teacher_weights: explicit name → weight, replacing the defaults.
        base: the classification loss's registered name (ASL by default, as in the paper).
        base_kwargs: its kwargs (its reduction is set to `reduction`).
        reduction: ``"mean"`` (each term's sum over B·C; default) or ``"sum"`` (the reference's values).
        teacher_digest: identifies the teachers' logits (set by `mlic.studies.cpsd`); it has no effect on the loss
            but, being part of the run's config, makes a student of since-retrained teachers another run.
    """

    def __init__(self, *, teachers: Mapping[str, str] | None = None, alpha: float = 0.5, cls_weight: float = 0.5,
                 teacher_weights: Mapping[str, float] | None = None, base: str = "asl",
                 base_kwargs: Mapping[str, Any] | None = None, reduction: str = "mean",
                 teacher_digest: str | None = None) -> None:
        super().__init__(reduction=reduction)
        if reduction == "none":
            raise ValueError("the student loss sums several terms; use reduction 'mean' or 'sum'")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.bank = _TeacherBank(dict(teachers or {}))
        self.alpha = float(alpha)
        self.cls_weight = float(cls_weight)
        self.weights = dict(teacher_weights) if teacher_weights is not None else default_teacher_weights(
            self.bank.names, alpha)
        if set(self.weights) != set(self.bank.names):
            raise ValueError(f"teacher_weights {sorted(self.weights)} must name the teachers {self.bank.names}")
        self.base = create_loss(base, **{**dict(base_kwargs or {}), "reduction": reduction})
        self.teacher_digest = teacher_digest

    def bind(self, table: Any) -> None:
        """Load every teacher's logits aligned to the rows of the training table (the engine calls this)."""
        self.bank.bind(table)
        self.base.bind(table)

    def set_teacher_logits(self, logits: Mapping[str, Tensor | np.ndarray]) -> None:
        """Give the teachers' logits directly (``[N, C]`` each, rows = dataset indices), e.g. in tests."""
        self.bank.set(logits)

    def terms(self, logits: Tensor, targets: Tensor, *, mask: Tensor | None = None,
              index: Tensor | None = None) -> dict[str, Tensor]:
        """The unweighted terms: ``cls`` and one ``kd_<teacher>`` per teacher."""
        out = {"cls": self.base(logits, targets, mask=mask, index=index)}
        if self.bank.names:
            teachers = self.bank.lookup(index, logits.device)
            for name, teacher in zip(self.bank.names, teachers):
                out[f"kd_{name}"] = mse_logits(logits, teacher, reduction=self.reduction)
        return out

    def forward(self, logits: Tensor, targets: Tensor, *, mask: Tensor | None = None,
                index: Tensor | None = None) -> Tensor:
        """The weighted sum of `terms`."""
        terms = self.terms(logits, targets, mask=mask, index=index)
        total = self.cls_weight * terms["cls"]
        for name in self.bank.names:
            total = total + self.weights[name] * terms[f"kd_{name}"]
        return total

    def extra_repr(self) -> str:
        return (f"teachers={self.bank.names}, cls_weight={self.cls_weight}, weights={self.weights}, "
                f"reduction={self.reduction!r}")


def default_teacher_weights(names: Sequence[str], alpha: float = 0.5) -> dict[str, float]:
    """The reference's distillation weights for teachers `names` (see `DistilledStudentLoss`)."""
    names = list(names)
    if set(names) == {"cgp", "dgp"}:
        return {"cgp": alpha / 2, "dgp": round(REFERENCE_KD_WEIGHT - alpha / 2, 2)}
    return {name: REFERENCE_KD_WEIGHT / len(names) for name in names}
