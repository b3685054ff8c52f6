"""Statistics over runs: aggregation over seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlic.stats import over_seeds


def test_over_seeds_matches_numpy_and_keeps_first_appearance_order() -> None:
    frame = pd.DataFrame({"head": ["b", "a", "b", "a", "b", "c"], "mAP": [1.0, 10.0, 3.0, 14.0, 8.0, 5.0],
                          "other": [0.0, 1.0, np.nan, 2.0, np.nan, np.nan]})
    out = over_seeds(frame, "head", ["mAP", "other"]).set_index("head")
    assert list(out.index) == ["b", "a", "c"]
    assert out.loc["b", "mAP_mean"] == 4.0 and np.isclose(out.loc["b", "mAP_std"], np.std([1, 3, 8], ddof=1))
    assert out.loc["c", "mAP_std"] == 0.0 and out.loc["c", "seeds"] == 1  # one seed: std 0
    assert np.isnan(out.loc["c", "other_std"])  # no value at all: NaN, not 0
    assert out.loc["a", "mAP"] == "12.00 ± 2.83"
    assert "mAP" not in over_seeds(frame, ["head"], ["mAP"], text=False).columns
