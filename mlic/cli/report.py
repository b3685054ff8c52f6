"""`mlic report`: rewrite a suite's index from the runs already there."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    p = commands.add_parser("report", help="rewrite reports/SUITE/index.md and index.html from the runs there")
    p.add_argument("suite", help="suite name")
    p.add_argument("--reports", default="reports", help="reports folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlic.core.errors import ConfigError
    from mlic.report import write_index

    suite_dir = Path(args.reports) / args.suite
    if not suite_dir.is_dir():
        raise ConfigError(f"no results in {suite_dir}; run `mlic run {args.suite}` first")
    print(write_index(suite_dir))
    return 0
