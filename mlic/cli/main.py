"""The `mlic` command: one module per sub-command, each with `register(commands)`; errors as one line.

Every training option is a field of `RunConfig`: give a YAML file with `--config`, set fields with the flags of the
shared table (`--data-root`, `--epochs`, ...), or any field with `--set section.field=value` (values parsed as YAML).
Importing this module loads no torch, so `mlic --help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from mlic.cli import cpsd, evaluate, export, import_checkpoint, predict, report, run, scenes, train
from mlic.core.errors import MlicError

COMMANDS = (scenes, train, evaluate, predict, export, import_checkpoint, cpsd, run, report)

#: errors that are the user's input or the machine's state (a missing file, a full disk), not a bug: shown as one
#: line unless --debug
USER_ERRORS: tuple[type[BaseException], ...] = (MlicError, ValueError, OSError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlic", description="Multi-label image classification lab.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: MLIC_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (1 with a one-line `mlic: error: ...` for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    debug = args.debug or os.environ.get("MLIC_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if debug:
            traceback.print_exc()
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"mlic: error: {message}", file=sys.stderr)
        if not debug:
            print("mlic: (run with --debug or MLIC_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        if debug:
            traceback.print_exc()
        print(f"mlic: interrupted{f'; {err}' if str(err) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
