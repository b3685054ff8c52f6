"""Single-positive figures: losses compared, ROLE estimator agreement, recovered positives (issue 8)."""

from __future__ import annotations

__all__: list[str] = []
