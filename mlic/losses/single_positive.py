"""Losses for learning from single positive labels: AN, AN-LS, WAN, EPR and ROLE.

Paper: E. Cole, O. Mac Aodha, T. Lorieul, P. Perona, D. Morris, N. Jojic, "Multi-Label Learning from Single Positive
Labels", CVPR 2021 (arXiv:2106.09708). Reference code: ``elijahcole/single-positive-multi-label``, ``losses.py`` and
``models.py`` (``LabelEstimator``).

Each loss takes the **observed-label matrix** as ``targets`` (class attribute ``uses_observed = True``, so the training
engine passes ``LabelledImages.observed`` instead of the true labels): +1 observed positive, 0 unknown, -1 observed
negative. Reference semantics, kept here:

- the losses work on probabilities ``p = sigmoid(logits)`` with ``neglog(z) = -log(z + 1e-5)`` (not on logits, so
  a saturated logit costs at most ``-log(1e-5) ≈ 11.5`` per entry);
- ``main = Σ loss_mtx / (B·C)``, the mean over every entry of the batch (unknown entries that a loss leaves out count
  in the denominator with a 0), which is ``reduction="mean"`` here; ``total = main + reg``, the regulariser of EPR and
  ROLE **not** divided by ``B·C``;
- EPR's regulariser ``R(p) = (mean_b Σ_c p_bc − k)² / C²`` with ``k`` the expected number of positives per image.

Paper and reference versus `mlic`:

- Observed negatives (-1): the reference asserts there are none for these losses (its ``iu`` loss is the one that
  uses them). `mlic` accepts them, so that ``simulate_observed(mode="pos_neg", num_neg>0)`` can be trained: an observed
  negative gets the full negative term ``neglog(1 − p)`` in AN, WAN, EPR and ROLE (in ROLE also ``neglog(1 − est)``
  for the estimator), and the smoothed negative term in AN-LS; with no -1 in the targets every value is the
  reference's.
- ``expected_num_pos``: the reference hard-codes per-dataset constants (pascal 1.5, coco 2.9 in the commit read for
  `mlic`'s notes, 2.5 in an earlier one, nuswide 1.9, cub 31.4), which are the mean number of true labels per image.
  Given as ``None`` (the default), `bind` computes that mean from the training table's true labels; the engine
  calls it before training.
- Reductions: ``"sum"`` is ``Σ loss_mtx + reg``; ``"none"`` returns the ``[B, C]`` loss matrix without the
  regulariser. A ``mask`` (not used by the engine for these losses) drops entries as in the common contract and makes
  ``"mean"`` divide by the number of counted entries.
- ROLE's estimator is a parameter of the loss module (``estimator_logits``, ``[N, C]``) created by `bind` from
  the training table's observed labels; the engine gives it its own optimiser group at ``lr × lr_mult`` (10, the
  reference's) without weight decay, and saves it in ``checkpoints/last.pt`` (``loss_state``). The reference's
  ``linear_init`` mode carries the estimator from the linear phase into fine-tuning; a new run here starts a fresh one.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlic.data.table import LabelledImages
from mlic.losses.registry import LOSSES, MultiLabelLoss, prepare_inputs

log = logging.getLogger(__name__)

#: the reference's ``LOG_EPSILON``
LOG_EPSILON = 1e-5


def neglog(z: Tensor) -> Tensor:
    """``-log(z + 1e-5)``, the reference's bounded negative log of a probability."""
    return -torch.log(z + LOG_EPSILON)


def logit(p: float) -> float:
    """The reference's ``inverse_sigmoid``: ``log(p / (1 − p))`` with ``p`` clipped to ``[1e-5, 1 − 1e-5]``."""
    p = min(max(p, 1e-5), 1 - 1e-5)
    return math.log(p / (1 - p))


def expected_positive_regularizer(probs: Tensor, expected_num_pos: float, *, norm: str = "2") -> Tensor:
    """``(mean_b Σ_c p_bc − k)²`` (``norm="2"``) or ``|…|`` (``"1"``): the batch's mean predicted count of positives
    against the expected count ``k``. Not divided by ``C²``; the losses do that."""
    gap = probs.sum(dim=1).mean(dim=0) - expected_num_pos
    return gap.pow(2) if norm == "2" else gap.abs()


def _observed_masks(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Boolean ``(positive, unknown, negative)`` masks of an observed-label matrix in {1, 0, -1}."""
    positive, unknown, negative = y == 1, y == 0, y == -1
    if not bool((positive | unknown | negative).all()):
        bad = y[~(positive | unknown | negative)].unique()[:5].tolist()
        raise ValueError(f"single-positive losses take observed labels in {{1, 0, -1}}; got values {bad} "
                         "(set data.partial so that the engine passes the observed matrix)")
    return positive, unknown, negative


def _mean_labels_per_image(table: LabelledImages) -> float:
    return float(table.labels.sum(axis=1).mean()) if len(table) else 0.0


class _ObservedLabelLoss(MultiLabelLoss):
    """Shared plumbing: observed targets in, probabilities, the reference's reduction, an optional regulariser."""

    uses_observed = True

    def forward(
        self, logits: Tensor, targets: Tensor, *, mask: Tensor | None = None, index: Tensor | None = None
    ) -> Tensor:
        """The loss of `logits` against the observed labels `targets` (+1, 0 unknown, -1); see the module doc."""
        x, y = prepare_inputs(logits, targets, mask)
        positive, unknown, negative = _observed_masks(y)
        probs = torch.sigmoid(x)
        matrix, reg = self.terms(probs, positive, unknown, negative, index)
        loss = self.reduce(matrix, mask)
        if reg is None or self.reduction == "none":
            return loss
        return loss + reg

    def terms(self, probs: Tensor, positive: Tensor, unknown: Tensor, negative: Tensor,
              index: Tensor | None) -> tuple[Tensor, Tensor | None]:  # pragma: no cover - abstract
        """The ``[B, C]`` loss matrix and the regulariser (or None)."""
        raise NotImplementedError


@LOSSES.register("an")
class AssumeNegativeLoss(_ObservedLabelLoss):
    """AN, "assume negative": every unobserved label is taken as a negative.

    Per entry: ``neglog(p)`` at observed positives, ``neglog(1 − p)`` everywhere else. On full labels this is BCE
    (up to the 1e-5 inside the log).

    Args:
        reduction: ``"mean"`` (the reference's ``Σ / (B·C)``, default), ``"sum"`` or ``"none"``.
    """

    def terms(self, probs: Tensor, positive: Tensor, unknown: Tensor, negative: Tensor,
              index: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return torch.where(positive, neglog(probs), neglog(1.0 - probs)), None


@LOSSES.register("an_ls")
class AssumeNegativeLabelSmoothingLoss(_ObservedLabelLoss):
    """AN-LS: AN with label smoothing ``ε`` on both sides.

    Per entry: ``(1 − ε)·neglog(p) + ε·neglog(1 − p)`` at observed positives and
    ``(1 − ε)·neglog(1 − p) + ε·neglog(p)`` everywhere else (unknown and observed negatives).

    Args:
        ls_coef: The smoothing ``ε`` in [0, 1) (the reference's 0.1).
        reduction: ``"mean"`` (the reference's, default), ``"sum"`` or ``"none"``.
    """

    def __init__(self, *, ls_coef: float = 0.1, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        if not 0.0 <= ls_coef < 1.0:
            raise ValueError(f"ls_coef must lie in [0, 1), got {ls_coef}")
        self.ls_coef = float(ls_coef)

    def terms(self, probs: Tensor, positive: Tensor, unknown: Tensor, negative: Tensor,
              index: Tensor | None) -> tuple[Tensor, Tensor | None]:
        eps = self.ls_coef
        pos, neg = neglog(probs), neglog(1.0 - probs)
        return torch.where(positive, (1 - eps) * pos + eps * neg, (1 - eps) * neg + eps * pos), None

    def extra_repr(self) -> str:
        return f"ls_coef={self.ls_coef}, reduction={self.reduction!r}"


@LOSSES.register("wan")
class WeakAssumeNegativeLoss(_ObservedLabelLoss):
    """WAN, "weak assume negative": AN with the assumed negatives down-weighted by ``γ = 1 / (C − 1)``.

    Per entry: ``neglog(p)`` at observed positives, ``γ·neglog(1 − p)`` at unknown entries, ``neglog(1 − p)`` at
    observed negatives (an extension; see the module docstring).

    Args:
        reduction: ``"mean"`` (the reference's, default), ``"sum"`` or ``"none"``.
    """

    def terms(self, probs: Tensor, positive: Tensor, unknown: Tensor, negative: Tensor,
              index: Tensor | None) -> tuple[Tensor, Tensor | None]:
        gamma = 1.0 / max(probs.shape[1] - 1, 1)
        neg = neglog(1.0 - probs)
        matrix = torch.where(positive, neglog(probs), torch.where(unknown, gamma * neg, neg))
        return matrix, None


class _ExpectedPositives:
    """Mixin: the expected number of positives per image, given or taken from the training labels."""

    expected_num_pos: float | None

    def bind(self, table: LabelledImages) -> None:
        """Set `expected_num_pos` to the training table's mean number of true labels per image, unless given."""
        if self.expected_num_pos is None:
            self.expected_num_pos = _mean_labels_per_image(table)
            log.info("%s: expected_num_pos = %.3f (mean true labels per training image)", type(self).__name__,
                     self.expected_num_pos)

    def _k(self) -> float:
        if self.expected_num_pos is None:
            raise ValueError(f"{type(self).__name__} needs expected_num_pos: pass it, or call bind(table) "
                             "(the training engine does) to take it from the training labels")
        return self.expected_num_pos


@LOSSES.register("epr")
class ExpectedPositiveRegularizedLoss(_ExpectedPositives, _ObservedLabelLoss):
    """EPR, "expected positive regularisation": the observed positives only, plus ``R(p) / C²``.

    Per entry: ``neglog(p)`` at observed positives, ``neglog(1 − p)`` at observed negatives (an extension), 0 at
    unknown entries. Regulariser: ``(mean_b Σ_c p_bc − k)² / C²`` (``norm="1"``: the absolute value).

    Args:
        expected_num_pos: ``k``; None (default) takes the training labels' mean per image in `bind`.
        norm: ``"2"`` (the reference's) or ``"1"``.
        reduction: ``"mean"`` (the reference's, default), ``"sum"`` or ``"none"``.
    """

    def __init__(self, *, expected_num_pos: float | None = None, norm: str = "2", reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        if norm not in ("1", "2"):
            raise ValueError(f"norm must be '1' or '2', got {norm!r}")
        self.expected_num_pos = None if expected_num_pos is None else float(expected_num_pos)
        self.norm = norm

    def terms(self, probs: Tensor, positive: Tensor, unknown: Tensor, negative: Tensor,
              index: Tensor | None) -> tuple[Tensor, Tensor | None]:
        zero = torch.zeros_like(probs)
        matrix = torch.where(positive, neglog(probs), torch.where(negative, neglog(1.0 - probs), zero))
        reg = expected_positive_regularizer(probs, self._k(), norm=self.norm) / probs.shape[1] ** 2
        return matrix, reg

    def extra_repr(self) -> str:
        return f"expected_num_pos={self.expected_num_pos}, norm={self.norm!r}, reduction={self.reduction!r}"


@LOSSES.register("role")
class ROLELoss(_ExpectedPositives, _ObservedLabelLoss):
    """ROLE, "regularised online label estimation": a classifier ``f`` and a per-example label estimator ``g`` teach
    each other.

    The estimator holds one logit per training example and class, ``θ ∈ R^{N×C}``, with ``est = sigmoid(θ[index])``
    for the batch. Initialisation (the reference's): unobserved entries ``U(−q, q)`` with ``q = logit(0.6)``, observed
    positives ``logit(0.995)``, observed negatives ``logit(0.005)``. With ``sg`` a stop-gradient, per entry::

        0.5 · (pos(p) + pos(est)) + 0.5 · (BCE(p; sg(est)) + BCE(est; sg(p)))

    where ``pos(z) = neglog(z)`` at observed positives (0 elsewhere) and ``BCE(z; t) = t·neglog(z) + (1 − t)·
    neglog(1 − z)``; at observed negatives ``0.5·(neglog(1 − p) + neglog(1 − est))`` is added (an extension). The
    regulariser is ``0.5 · (R(p) + R(est)) / C²`` with EPR's ``R``.

    Args:
        expected_num_pos: ``k``; None (default) takes the training labels' mean per image in `bind`.
        lr_mult: Learning-rate multiplier of the estimator's optimiser group (the reference's 10).
        init_seed: Seed of the uniform initialisation of the unobserved logits; None (default) draws from torch's
            global generator (which the engine seeds with ``train.seed``), as the reference does.
        track_truth: If True, `bind` keeps the training table's true labels (never used in the loss) and
            each training call appends the estimator's agreement with them to `history` (see `track`). For analysis.
        reduction: ``"mean"`` (the reference's, default), ``"sum"`` or ``"none"``.
    """

    estimator_logits: nn.Parameter | None
    truth: Tensor | None
    observed: Tensor | None

    def __init__(self, *, expected_num_pos: float | None = None, lr_mult: float = 10.0, init_seed: int | None = None,
                 track_truth: bool = False, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        if lr_mult <= 0:
            raise ValueError(f"lr_mult must be > 0, got {lr_mult}")
        self.expected_num_pos = None if expected_num_pos is None else float(expected_num_pos)
        self.lr_mult = float(lr_mult)
        self.init_seed = init_seed
        self.track_truth = bool(track_truth)
        self.register_parameter("estimator_logits", None)
        self.register_buffer("truth", None, persistent=False)
        self.register_buffer("observed", None, persistent=False)
        #: with `track_truth`: one dict per training call (see `track`); saved with the loss's state
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ the estimator
    def bind(self, table: LabelledImages) -> None:
        """Create the estimator for `table` (its observed labels; with none, every true label counts as observed,
        which is what the engine then passes as targets) and set `expected_num_pos` if not given."""
        super().bind(table)
        if table.observed is None:
            log.warning("ROLE: the training table has no observed-label matrix, so every true label is an observed "
                        "positive; set data.partial to simulate single positives")
            observed = table.labels.astype(np.int8)
        else:
            observed = table.observed
        self.init_estimator(observed, truth=table.labels if self.track_truth else None)

    def init_estimator(self, observed: np.ndarray | Tensor, *, truth: np.ndarray | Tensor | None = None) -> None:
        """(Re)create ``θ`` from an observed-label matrix ``[N, C]`` with the reference's initialisation.

        Args:
            observed: +1 observed positive, 0 unknown, -1 observed negative.
            truth: Optional true labels ``[N, C]`` for `track` (with `track_truth`).
        """
        obs = torch.as_tensor(np.asarray(observed), dtype=torch.int8)
        if obs.ndim != 2:
            raise ValueError(f"observed must be [N, C], got shape {tuple(obs.shape)}")
        generator = None if self.init_seed is None else torch.Generator().manual_seed(self.init_seed)
        q = logit(0.5 + 0.1)
        theta = q * (2 * torch.rand(obs.shape, generator=generator) - 1)
        theta[obs == 1] = logit(0.995)
        theta[obs == -1] = logit(0.005)
        self.estimator_logits = nn.Parameter(theta)
        self.observed = obs
        self.truth = None if truth is None else torch.as_tensor(np.asarray(truth), dtype=torch.uint8)
        self.history = []

    def estimates(self) -> Tensor:
        """``sigmoid(θ)`` for every training example, ``[N, C]`` (detached, on θ's device)."""
        if self.estimator_logits is None:
            raise RuntimeError("ROLE's label estimator does not exist yet: call bind(table) first")
        return torch.sigmoid(self.estimator_logits.detach())

    @torch.no_grad()
    def track(self, threshold: float = 0.5) -> dict[str, float]:
        """The estimator's agreement with the true labels at `threshold` over the unobserved entries (the ones it
        has to estimate): ``accuracy``, ``hidden_recall`` (hidden true positives estimated positive), ``precision``
        (estimated positives that are true) and ``mean_abs_error`` (|est − truth|). Needs ``track_truth``."""
        if self.truth is None or self.observed is None:
            raise RuntimeError("ROLE.track needs track_truth=True and a bound dataset")
        est = self.estimates()
        truth = self.truth.to(est.device).bool()
        unknown = self.observed.to(est.device) == 0
        predicted = est >= threshold
        hidden = truth & unknown
        flagged = predicted & unknown
        n_unknown = int(unknown.sum())
        return {
            "accuracy": float(((predicted == truth) & unknown).sum()) / max(n_unknown, 1),
            "hidden_recall": float((predicted & hidden).sum()) / max(int(hidden.sum()), 1),
            "precision": float((flagged & truth).sum()) / max(int(flagged.sum()), 1),
            "mean_abs_error": float(((est - truth.float()).abs() * unknown).sum()) / max(n_unknown, 1),
        }

    def get_extra_state(self) -> dict[str, Any]:
        """The tracking history travels with the estimator in checkpoints (so a resumed run keeps it)."""
        return {"history": [dict(row) for row in self.history]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.history = [dict(row) for row in state.get("history", [])]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "estimator_logits")
        if saved is not None and (self.estimator_logits is None or saved.shape != self.estimator_logits.shape):
            raise ValueError(f"ROLE estimator of shape {tuple(saved.shape)} in the state dict, but this loss is bound "
                             f"to {None if self.estimator_logits is None else tuple(self.estimator_logits.shape)}; "
                             "bind the same training table first")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ the loss
    def terms(self, probs: Tensor, positive: Tensor, unknown: Tensor, negative: Tensor,
              index: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.estimator_logits is None:
            raise RuntimeError("ROLE's label estimator does not exist yet: call bind(table) first (the "
                               "training engine does)")
        if index is None:
            raise ValueError("ROLE needs `index`, the batch's row indices in the training table")
        if self.track_truth and torch.is_grad_enabled():
            self.history.append({"step": float(len(self.history)), **self.track()})
        est = torch.sigmoid(self.estimator_logits[index.to(self.estimator_logits.device)]).to(probs.dtype)
        zero = torch.zeros_like(probs)
        pos_f = torch.where(positive, neglog(probs), zero)
        pos_g = torch.where(positive, neglog(est), zero)
        est_d, probs_d = est.detach(), probs.detach()
        cross_f = est_d * neglog(probs) + (1.0 - est_d) * neglog(1.0 - probs)
        cross_g = probs_d * neglog(est) + (1.0 - probs_d) * neglog(1.0 - est)
        matrix = 0.5 * (pos_f + pos_g) + 0.5 * (cross_f + cross_g)
        matrix = matrix + torch.where(negative, 0.5 * (neglog(1.0 - probs) + neglog(1.0 - est)), zero)
        k, c2 = self._k(), probs.shape[1] ** 2
        reg = 0.5 * (expected_positive_regularizer(probs, k) / c2 + expected_positive_regularizer(est, k) / c2)
        return matrix, reg

    def extra_repr(self) -> str:
        shape = None if self.estimator_logits is None else tuple(self.estimator_logits.shape)
        return (f"estimator={shape}, expected_num_pos={self.expected_num_pos}, lr_mult={self.lr_mult}, "
                f"track_truth={self.track_truth}, reduction={self.reduction!r}")
