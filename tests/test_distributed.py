"""Data-parallel training: 2 CPU processes under torchrun (gloo) reach the metrics of one process with the same
global batch; only rank 0 writes; the sharding reproduces a single process's global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlic.core.io import read_jsonl
from mlic.runs import Run
from mlic.train import fit
from mlic.train.distributed import ShardedBatchSampler
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent


def test_shards_of_all_ranks_make_up_the_single_process_batches() -> None:
    single = ShardedBatchSampler(51, 8, shuffle=True, drop_last=False, train=True)
    ranks = [ShardedBatchSampler(51, 8, shuffle=True, drop_last=False, rank=r, world=3, train=True) for r in range(3)]
    for sampler in (single, *ranks):
        sampler.set_seed(17)
    batches = list(single)
    per_rank = [list(s) for s in ranks]
    assert len(batches) == 7 and all(len(p) == 7 == len(s) for p, s in zip(per_rank, ranks))  # every rank, every step
    assert sorted(i for b in batches for i in b) == list(range(51))
    for step, batch in enumerate(batches):
        merged = [i for shards in per_rank for i in shards[step]]
        assert merged == batch and max(len(p[step]) for p in per_rank) - min(len(p[step]) for p in per_rank) <= 1
    single.set_seed(18)
    assert list(single) != batches  # a new epoch seed, a new order


def test_a_last_batch_too_small_for_every_rank_is_dropped_in_training_only() -> None:
    # 50 = 6·8 + 2: the 2-row last batch cannot feed 3 ranks
    train = [ShardedBatchSampler(50, 8, shuffle=True, drop_last=False, rank=r, world=3, train=True) for r in range(3)]
    assert [len(list(s)) for s in train] == [6, 6, 6] and [len(s) for s in train] == [6, 6, 6]
    evaluation = [ShardedBatchSampler(50, 8, shuffle=False, drop_last=False, rank=r, world=3, train=False)
                  for r in range(3)]
    assert sorted(i for s in evaluation for b in s for i in b) == list(range(50))
    with pytest.raises(ValueError, match="smaller than the 4 processes"):
        ShardedBatchSampler(50, 3, shuffle=True, drop_last=False, world=4)


def _torchrun(cfg_path: Path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "-m", "mlic", "train", "--config", str(cfg_path), "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["frozen", "end_to_end"])
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(mode: str, scenes_root: Path,
                                                                        tmp_path: Path) -> None:
    """Tolerance: 0.05 mAP points. The global batches are identical by construction, gradients are averaged in a
    different order only, so the runs agree to float rounding. End to end uses a GroupNorm backbone and no
    augmentation: BatchNorm statistics over per-rank shards (gloo has no SyncBatchNorm) and per-rank augmentation
    draws are the two things that legitimately differ, and they are switched off to make the check exact."""
    over = {"data.batch_size": 32, "train.epochs": 3, "train.ema_decay": 0.9, "loss.name": "asl"}
    if mode == "frozen":
        over["model.freeze_backbone"] = True
    else:
        over.update({"model.backbone": "test_efficientnet_gn", "data.randaugment": False, "data.cutout": 0.0,
                     "data.hflip": False})
    one = tiny_config(scenes_root, tmp_path / "one", **over)
    single = fit(one)
    two = one.updated({"output_dir": str(tmp_path / "two")})
    two.to_yaml(tmp_path / "two.yaml")
    proc = _torchrun(tmp_path / "two.yaml", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((tmp_path / "two" / "final.json").read_text())
    assert final["processes"] == 2
    for split, values in single.metrics.items():
        for metric in ("mAP", "CF1", "OF1"):
            assert final["metrics"][split][metric] == pytest.approx(values[metric], abs=0.05), (split, metric)
    # rank 0 alone wrote: one metrics row per epoch, predictions for every row of the split in table order
    assert [row["epoch"] for row in read_jsonl(tmp_path / "two" / "metrics.jsonl")] == [0, 1, 2]
    preds, ref = Run(tmp_path / "two").predictions("test"), Run(tmp_path / "one").predictions("test")
    np.testing.assert_array_equal(preds["image_ids"], ref["image_ids"])
    np.testing.assert_allclose(preds["scores"], ref["scores"], atol=2e-4)
    # the checkpoint is the usual single-process one
    state = Run(tmp_path / "two").state("best")
    assert not any(key.startswith("module.") for key in state["state_dict"])
    assert proc.stdout.count('"run_dir"') == 1  # one process prints the result
    if mode == "frozen":  # resume under torchrun reads last.pt on rank 0 and sends it: a finished run stays put
        rows = read_jsonl(tmp_path / "two" / "metrics.jsonl")
        two.updated({"runtime.resume": True}).to_yaml(tmp_path / "two.yaml")
        proc = _torchrun(tmp_path / "two.yaml", 2)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert read_jsonl(tmp_path / "two" / "metrics.jsonl") == rows
        again = json.loads((tmp_path / "two" / "final.json").read_text())
        assert again["metrics"]["test"]["mAP"] == pytest.approx(final["metrics"]["test"]["mAP"], abs=1e-6)
