"""Co-occurrence-shift figures: drop per method and per label against CAM energy on companions (issue 9)."""

from __future__ import annotations

__all__: list[str] = []
