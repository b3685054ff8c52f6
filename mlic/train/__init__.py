"""Training: `fit(cfg) -> RunResult`, the engine's pieces (EMA, optimisers, checkpoints)."""

from mlic.train.checkpoint import load_checkpoint as load_checkpoint
from mlic.train.checkpoint import save_checkpoint as save_checkpoint
from mlic.train.engine import RunResult as RunResult
from mlic.train.engine import Trainer as Trainer
from mlic.train.engine import fit as fit
from mlic.train.engine import resolve_device as resolve_device
