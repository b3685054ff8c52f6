"""Data-parallel training under `torchrun`: process group set-up, batch sharding, gathering, rank-0-only writes.

`torchrun --nproc_per_node N -m mlic train ...` starts N processes with `RANK`, `LOCAL_RANK` and `WORLD_SIZE` in
their environment; `init_from_env` joins them into one group (NCCL on GPUs, gloo on CPUs). `data.batch_size` stays
the *global* batch: every optimiser step sees the same images as a single process would, split across the ranks
(`ShardedBatchSampler`), so a config means the same recipe on 1 or 8 GPUs. Evaluation is sharded the same way and
the scores gathered, so every rank computes the same metrics and takes the same decisions (best epoch, early stop);
only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def env_world_size() -> int:
    """`WORLD_SIZE` from the environment (1 outside `torchrun`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files and shows progress."""
    return rank() == 0


def init_from_env(device: torch.device, *, timeout_minutes: float = 30.0) -> torch.device:
    """Join the process group `torchrun` describes (no-op for one process); returns this rank's device.

    On CUDA each rank takes `cuda:LOCAL_RANK`; the backend is NCCL there and gloo on CPU.
    """
    if env_world_size() <= 1 or is_initialized():
        return _local_device(device)
    device = _local_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                            device_id=device if device.type == "cuda" else None)
    log.info("rank %d of %d joined (%s, %s)", rank(), world_size(), backend, device)
    if rank() != 0:  # one voice: the other ranks only report problems
        logging.getLogger("mlic").setLevel(logging.WARNING)
    return device


def _local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None and env_world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_initialized() else 0


@contextlib.contextmanager
def local_main_first() -> Iterator[None]:
    """Each machine's first process runs the block first (e.g. writing a feature cache to its disk), the machine's
    other processes after it, reading what it wrote."""
    if local_rank() != 0:
        barrier()
    try:
        yield
    finally:
        if local_rank() == 0:
            barrier()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (files rank 0 wrote need not be visible to other machines)."""
    if not is_initialized():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (a one-element list in a single process)."""
    if not is_initialized():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Average `.grad` over ranks for parameters outside the DDP wrapper (e.g. ROLE's label estimator in the loss)."""
    if not is_initialized():
        return
    for param in parameters:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)  # SUM then divide: gloo has no AVG
        param.grad /= world_size()


def mean_over_ranks(value: float) -> float:
    """The mean of a scalar over ranks (itself in a single process)."""
    if not is_initialized():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / world_size()


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


class ShardedBatchSampler:
    """Global batches of `batch_size` rows, each split into `world` contiguous shards; yields this rank's shards.

    The global batches are those a single process would see: consecutive slices of a permutation drawn from the
    epoch seed (`set_seed`), or of `0..n-1` without shuffling. Training drops a last batch too small to give every
    rank a row (and, with `drop_last`, any last partial batch); evaluation keeps every row, and a rank may then get
    an empty shard, which it skips.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, rank: int = 0,
                 world: int = 1, train: bool = True) -> None:
        if batch_size < world:
            raise ValueError(f"the global batch size {batch_size} is smaller than the {world} processes")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.rank, self.world, self.train = rank, world, train
        self.seed = 0

    def set_seed(self, seed: int) -> None:
        """The permutation of the next pass is a function of `seed` alone (resume-safe)."""
        self.seed = seed

    def global_batches(self) -> list[np.ndarray]:
        order = np.random.default_rng(self.seed).permutation(self.n) if self.shuffle else np.arange(self.n)
        batches = [order[s:s + self.batch_size] for s in range(0, self.n, self.batch_size)]
        if batches and self.train and (len(batches[-1]) < self.world
                                       or (self.drop_last and len(batches[-1]) < self.batch_size)):
            batches = batches[:-1]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            shard = np.array_split(batch, self.world)[self.rank]
            if len(shard):
                yield shard.tolist()

    def __len__(self) -> int:
        n_batches = self.n // self.batch_size if self.train and self.drop_last else -(-self.n // self.batch_size)
        if self.train and not self.drop_last and self.n % self.batch_size and self.n % self.batch_size < self.world:
            n_batches -= 1
        return n_batches
