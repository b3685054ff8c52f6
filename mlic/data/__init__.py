"""Data: the `LabelledImages` table, readers of real dataset formats, the Scenes benchmark, torch datasets.

Importing this package registers every reader in `DATASETS` (scenes, coco, voc, nuswide, csv).
"""

from mlic.data import coco as coco
from mlic.data import csv as csv
from mlic.data import nuswide as nuswide
from mlic.data import partial as partial
from mlic.data import scenes as scenes
from mlic.data import subsets as subsets
from mlic.data import voc as voc
from mlic.data.coco import load_coco as load_coco
from mlic.data.csv import load_csv as load_csv
from mlic.data.nuswide import load_nuswide as load_nuswide
from mlic.data.partial import simulate_observed as simulate_observed
from mlic.data.scenes import make_scenes as make_scenes
from mlic.data.sources import DATASETS as DATASETS
from mlic.data.sources import load_split as load_split
from mlic.data.subsets import restrict_labels as restrict_labels
from mlic.data.table import LabelledImages as LabelledImages
from mlic.data.table import summary_table as summary_table
from mlic.data.voc import load_voc as load_voc
