"""`python -m mlic ...` (and `torchrun ... -m mlic train ...`): the command-line interface."""

import sys

from mlic.cli import main

sys.exit(main())
