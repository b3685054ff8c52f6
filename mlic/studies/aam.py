"""The AAM paper's loss comparison (Prokofiev & Sovrasov): ASL, angular margin (AM) and asymmetric angular margin
(AAM) losses as variants of one recipe, for `mlic.runs.run_grid`."""

from __future__ import annotations

from typing import Any

LOSS_VARIANTS = ("asl", "am", "aam")


def loss_variants(names: list[str], *, s: float, m: float, k: float, gamma_neg: float,
                  gamma_pos: float) -> dict[str, dict[str, Any]]:
    """Overrides for the AAM paper's loss comparison: `asl` (ASL on a linear classifier, the ASL paper's γ), `am`
    (angular margin without focusing, γ = 0) and `aam` (with the given γ), the last two on a cosine classifier.
    All three are summed over batch and classes, as the references and the recipe's learning rate assume.
    Variant names are upper case (`ASL`, `AM`, `AAM`)."""
    angular = {"s": s, "m": m, "k": k, "reduction": "sum"}
    table = {
        "asl": {"loss.name": "asl", "loss.kwargs": {"gamma_neg": 4, "gamma_pos": 0, "clip": 0.05, "reduction": "sum"},
                "model.head_kwargs": {}},
        "am": {"loss.name": "aam", "loss.kwargs": {**angular, "gamma_neg": 0.0, "gamma_pos": 0.0},
               "model.head_kwargs": {"cosine": True, "scale": s}},
        "aam": {"loss.name": "aam", "loss.kwargs": {**angular, "gamma_neg": gamma_neg, "gamma_pos": gamma_pos},
                "model.head_kwargs": {"cosine": True, "scale": s}},
    }
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"unknown loss variant(s) {unknown}; choose from {sorted(table)}")
    return {name.upper(): table[name] for name in names}
