"""Early stopping, plain or against a smoothed sequence of previous bests (the AAM paper's rule, seed 002 §3.5).

Plain: stop after `patience` epochs without beating the best score. Smoothed (`smoothing=α`, 0.8 in the paper's
code): an epoch counts as an improvement only if it beats a reference that follows the bests as
`reference ← α·score + (1 − α)·reference`, so a lucky spike does not reset the patience for long.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EarlyStopping:
    """Patience counter over a validation score (higher is better); `patience=None` never stops."""

    patience: int | None = None
    smoothing: float | None = None
    reference: float = -math.inf
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.smoothing is not None and not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must lie in (0, 1], got {self.smoothing}")

    def update(self, score: float) -> bool:
        """Record one epoch's score; True when training should stop."""
        if score > self.reference:
            fresh = self.smoothing is None or not math.isfinite(self.reference)
            self.reference = score if fresh else self.smoothing * score + (1 - self.smoothing) * self.reference
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = float(state["reference"])
        self.bad_epochs = int(state["bad_epochs"])
