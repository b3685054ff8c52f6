"""Every figure the notebooks draw: one function per figure, each returning a matplotlib `Figure`.

`save(fig, output_dir, name)` writes PNG (for the report) and SVG (for papers) into `output_dir/figures/`. The
figures live in one module per topic; all of them are reachable as `mlic.plots.<name>`.
"""

from mlic.plots.cams import *  # noqa: F401,F403
from mlic.plots.claims import *  # noqa: F401,F403
from mlic.plots.context_bias import *  # noqa: F401,F403
from mlic.plots.core import *  # noqa: F401,F403
from mlic.plots.moe import *  # noqa: F401,F403
from mlic.plots.partial import *  # noqa: F401,F403
from mlic.plots.shift import *  # noqa: F401,F403
