"""Explanations: CAMs through pytorch-grad-cam (`cams`), head-native maps (`head_maps`), models made of runs
(`models`), scores against the objects' boxes (`scoring`), and the widget explorer (`explorer`).

Everything but the explorer is re-exported here: `from mlic import explain; explain.compute_cams(...)`.
"""

from mlic.explain.cams import CAM_METHODS as CAM_METHODS
from mlic.explain.cams import CamResult as CamResult
from mlic.explain.cams import compute_cams as compute_cams
from mlic.explain.cams import patch_grid as patch_grid
from mlic.explain.cams import resolve_target_layer as resolve_target_layer
from mlic.explain.cams import token_reshape as token_reshape
from mlic.explain.head_maps import HEAD_MAPS as HEAD_MAPS
from mlic.explain.head_maps import available_methods as available_methods
from mlic.explain.head_maps import head_maps as head_maps
from mlic.explain.head_maps import list_methods as list_methods
from mlic.explain.models import ExplainedModel as ExplainedModel
from mlic.explain.models import find_runs as find_runs
from mlic.explain.models import gather_runs as gather_runs
from mlic.explain.models import load_explained as load_explained
from mlic.explain.scoring import box_masks as box_masks
from mlic.explain.scoring import comparison_examples as comparison_examples
from mlic.explain.scoring import disagreements as disagreements
from mlic.explain.scoring import image_sizes as image_sizes
from mlic.explain.scoring import per_label_pointing as per_label_pointing
from mlic.explain.scoring import pick_figure_pairs as pick_figure_pairs
from mlic.explain.scoring import pointing_game as pointing_game
from mlic.explain.scoring import pointing_metrics as pointing_metrics
from mlic.explain.scoring import positive_pairs as positive_pairs
from mlic.explain.scoring import random_maps as random_maps
from mlic.explain.scoring import sample_rows as sample_rows
from mlic.explain.scoring import score_models as score_models
from mlic.explain.scoring import summarize_pointing as summarize_pointing
