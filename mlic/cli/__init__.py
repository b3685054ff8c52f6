"""`mlic` on the command line, one module per command; `main` is the entry point."""

from mlic.cli.main import main as main
