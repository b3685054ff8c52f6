"""mlic: a lab for multi-label image classification.

The public API, re-exported explicitly: `mlic.data`, `mlic.models`, `mlic.losses`, `mlic.metrics`, `mlic.train`,
`mlic.report`, `mlic.plots` (imported on use: it loads matplotlib), and the config `RunConfig`.
"""

__version__ = "0.1.0"

from mlic import data as data  # noqa: E402
from mlic import losses as losses  # noqa: E402
from mlic import metrics as metrics  # noqa: E402
from mlic import models as models  # noqa: E402
from mlic import report as report  # noqa: E402
from mlic import train as train  # noqa: E402
from mlic.config import RunConfig as RunConfig  # noqa: E402
