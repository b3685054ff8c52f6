"""Load test: concurrent frozen-backbone runs sharing one cold feature cache must all succeed, agree, and leave a
clean cache.

Each repeat empties a fresh cache folder, then starts `--processes` `mlic train --freeze-backbone` runs of the same
tiny config at once, each into its own run folder, all with `MLIC_CACHE` on that folder: every run asks for the
same missing entries at the same moment. A repeat passes when every run exits 0, the runs' final metrics are equal
(they train the same run on the same features), the cache holds exactly one complete entry per split and no
temporary file, and no run folder keeps a lock. The summary counts failures; the exit status is 1 if any.

Run: `python benchmarks/load_shared_cache.py [--processes 4] [--repeats 10]` (makes a tiny Scenes set if `--data`
is not given). Before the cache had per-entry locks and unique temporary names, one of two such runs died in most
trials (`FileNotFoundError: <key>.partial.npy -> <key>.npy`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlic.core.config import DataConfig
from mlic.runs import Run

ROOT = Path(__file__).resolve().parent.parent
_DATA = DataConfig()
#: the splits a default run reads: train, val and the evaluated ones, one cache entry each
SPLITS = tuple(dict.fromkeys([_DATA.train_split, _DATA.val_split, *_DATA.eval_splits]))


def _train_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mlic", "train", "--data-root", str(data), "--image-size", "32", "--batch-size",
            "16", "--backbone", "test_efficientnet", "--no-pretrained", "--freeze-backbone", "--epochs", "2",
            "--no-progress", "--threads", "1", "--output-dir", str(out)]


def _error_line(log: str) -> str:
    """The `mlic: error:` line of a run's stderr (else its last line)."""
    lines = log.strip().splitlines()
    return next((line for line in lines if line.startswith("mlic: error:")), lines[-1] if lines else "")


def _problems(runs: list[Path], codes: list[int], logs: list[str], cache: Path) -> list[str]:
    """What went wrong in one repeat (empty: it passed)."""
    problems = [f"{run.name} exited {code}: {_error_line(log)}" for run, code, log in zip(runs, codes, logs)
                if code != 0]
    if problems:
        return problems
    finals = [json.loads((run / "final.json").read_text())["metrics"] for run in runs]
    problems += [f"{run.name}: metrics differ from {runs[0].name}" for run, final in zip(runs, finals)
                 if final != finals[0]]
    features = cache / "features"
    entries = sorted(p.stem for p in features.glob("*.npy"))
    if len(entries) != len(SPLITS) or sorted(p.stem for p in features.glob("*.json")) != entries:
        problems.append(f"cache holds {len(entries)} entries for {len(SPLITS)} splits: {entries}")
    problems += [f"temporary file left: {p}" for p in features.glob("*.tmp")]
    problems += [f"lock left: {Run(run).lock_file}" for run in runs if Run(run).lock_file.exists()]
    computed = sum(log.count("computing features") for log in logs)
    if computed != len(SPLITS):
        problems.append(f"features computed {computed} times for {len(SPLITS)} entries (each must be computed once)")
    return problems


def load_test(data: Path, work: Path, *, processes: int = 4, repeats: int = 10) -> dict[str, Any]:
    """Run the load test; returns the per-repeat problems, the failure count and timings."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    report: dict[str, Any] = {"processes": processes, "repeats": repeats, "failed_runs": 0, "failed_repeats": 0,
                              "problems": {}, "seconds": []}
    for repeat in range(repeats):
        cache = work / f"cache{repeat}"
        runs = [work / f"repeat{repeat}" / f"run{i}" for i in range(processes)]
        started = time.perf_counter()
        procs = [subprocess.Popen(_train_command(data, run), env={**env, "MLIC_CACHE": str(cache)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for run in runs]
        logs = [p.communicate(timeout=900)[1] for p in procs]
        report["seconds"].append(round(time.perf_counter() - started, 1))
        codes = [p.returncode for p in procs]
        report["failed_runs"] += sum(code != 0 for code in codes)
        problems = _problems(runs, codes, logs, cache)
        if problems:
            report["failed_repeats"] += 1
            report["problems"][repeat] = problems
        print(f"repeat {repeat + 1}/{repeats}: {processes} runs in {report['seconds'][-1]} s, "
              f"{'ok' if not problems else '; '.join(problems)}", flush=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--data", type=Path, default=None, help="a Scenes folder (default: a tiny one made here)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlic-load-") as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:
            from mlic.data.scenes import make_scenes

            data = make_scenes(work / "scenes", seed=0, image_size=32, n_train=96, n_val=48, n_test=48, n_shift=48,
                               progress=False)
        report = load_test(data, work, processes=args.processes, repeats=args.repeats)
    print(json.dumps({k: v for k, v in report.items() if k != "seconds"} | {
        "runs": args.processes * args.repeats, "seconds_per_repeat": report["seconds"]}, indent=2))
    return 1 if report["failed_repeats"] else 0


if __name__ == "__main__":
    sys.exit(main())
