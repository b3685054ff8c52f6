"""Mixture-of-experts figures: gate heatmaps, routing shares, expert utilisation (issue 6)."""

from __future__ import annotations

__all__: list[str] = []
