"""`mlic run`: a suite of notebooks under papermill, and its report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mlic.cli.common import parse_set


def register(commands: Any) -> None:
    p = commands.add_parser("run", help="run a suite of notebooks with papermill and write its report",
                            description="Execute notebooks/suites/SUITE.yaml into reports/SUITE/ and write "
                                        "index.md/html.")
    p.add_argument("suite", help="suite name (notebooks/suites/<name>.yaml) or a YAML path")
    p.add_argument("--reports", default="reports", help="reports folder")
    p.add_argument("--notebooks", default="notebooks", help="notebooks folder")
    p.add_argument("--force", action="store_true", help="rerun notebooks that already succeeded")
    p.add_argument("--only", action="append", default=[], help="run only runs whose name starts with this")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    p.add_argument("--jobs", type=int, default=None,
                   help="notebooks executed at once, each in its own kernel with its share of the cores or GPUs "
                        "(default: 1 with --executor local; with dask, one per GPU slot or per 4 cores); "
                        "summaries run after the others")
    p.add_argument("--executor", choices=["local", "dask"], default="local",
                   help="local: threads on this machine; dask: every run a Dask task, on a cluster of this "
                        "machine's processes or on the one at --scheduler")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler (tcp://host:8786) for --executor dask")
    p.add_argument("--gpus-per-run", type=int, default=None, metavar="N",
                   help="GPUs each run gets (default 1 where there are GPUs; 0 runs on CPUs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="parameter given to every notebook of the suite (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlic.core.errors import ConfigError
    from mlic.report import run_suite

    suite = Path(args.suite)
    if not suite.exists():
        suite = Path(args.notebooks) / "suites" / f"{args.suite}.yaml"
    if not suite.exists():
        raise ConfigError(f"no suite {args.suite!r}: expected a YAML file or {suite}")
    if args.scheduler and args.executor != "dask":
        raise ConfigError(f"--scheduler {args.scheduler}: a scheduler needs --executor dask")
    result = run_suite(suite, reports_dir=args.reports, notebooks_dir=args.notebooks, force=args.force,
                       only=args.only or None, kernel_name=args.kernel, overrides=parse_set(args.set),
                       workers=args.jobs, executor=args.executor, scheduler=args.scheduler,
                       gpus_per_run=args.gpus_per_run)
    print(f"report: {result.suite_dir / 'index.md'} (and index.html); {len(result.succeeded)} ran, "
          f"{len(result.skipped)} already done, {len(result.failed)} failed")
    for name in result.failed:
        print(f"  FAILED: {name} (see {result.suite_dir / name / 'status.json'})")
    return 1 if result.failed else 0
