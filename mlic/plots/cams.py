"""Class activation map figures: CAM grids, pointing-game and energy tables (issue 7)."""

from __future__ import annotations

__all__: list[str] = []
