"""CPSD — Complementary Parallel Self-Distillation: label partitions (`partition`), part teachers and their merged
logits (`teachers`), the study that trains and reuses every run (`study`)."""

from mlic.studies.cpsd.partition import Partition as Partition
from mlic.studies.cpsd.partition import make_partition as make_partition
from mlic.studies.cpsd.partition import partition_metrics as partition_metrics
from mlic.studies.cpsd.partition import partition_sweep as partition_sweep
from mlic.studies.cpsd.study import VARIANTS as VARIANTS
from mlic.studies.cpsd.study import CPSDSettings as CPSDSettings
from mlic.studies.cpsd.study import CPSDStudy as CPSDStudy
from mlic.studies.cpsd.study import VariantResult as VariantResult
from mlic.studies.cpsd.study import figure_models as figure_models
from mlic.studies.cpsd.study import method_metrics as method_metrics
from mlic.studies.cpsd.study import per_label_gain as per_label_gain
from mlic.studies.cpsd.study import run_ablation as run_ablation
from mlic.studies.cpsd.study import run_k_sweep as run_k_sweep
from mlic.studies.cpsd.study import summarize as summarize
from mlic.studies.cpsd.study import variant_costs as variant_costs
from mlic.studies.cpsd.study import variant_means as variant_means
from mlic.studies.cpsd.teachers import cache_teacher_logits as cache_teacher_logits
from mlic.studies.cpsd.teachers import merge_part_logits as merge_part_logits
from mlic.studies.cpsd.teachers import predict_logits as predict_logits
