"""Training: `fit(cfg) -> RunResult` and the engine's pieces (EMA, SAM, optimisers, distributed, recipes)."""

from mlic.train.engine import RunResult as RunResult
from mlic.train.engine import Trainer as Trainer
from mlic.train.engine import fit as fit
from mlic.train.engine import resolve_device as resolve_device
