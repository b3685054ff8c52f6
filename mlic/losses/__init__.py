"""Multi-label losses, chosen by name through `LOSSES` / `create_loss`.

Every loss shares one call, ``loss(logits, targets, *, mask=None, index=None)``, and one explicit ``reduction``
(``"mean"`` over counted entries by default); `mlic.losses.registry` documents the contract.
"""

from mlic.losses.aam import AsymmetricAngularMarginLoss as AsymmetricAngularMarginLoss
from mlic.losses.aam import aam_curves as aam_curves
from mlic.losses.asl import AsymmetricLoss as AsymmetricLoss
from mlic.losses.bce import BinaryCrossEntropy as BinaryCrossEntropy
from mlic.losses.distill import DistilledStudentLoss as DistilledStudentLoss
from mlic.losses.focal import FocalLoss as FocalLoss
from mlic.losses.registry import LOSSES as LOSSES
from mlic.losses.registry import REDUCTIONS as REDUCTIONS
from mlic.losses.registry import MultiLabelLoss as MultiLabelLoss
from mlic.losses.registry import create_loss as create_loss
from mlic.losses.registry import list_losses as list_losses
from mlic.losses.registry import reduce_loss as reduce_loss
from mlic.losses.single_positive import AssumeNegativeLabelSmoothingLoss as AssumeNegativeLabelSmoothingLoss
from mlic.losses.single_positive import AssumeNegativeLoss as AssumeNegativeLoss
from mlic.losses.single_positive import ExpectedPositiveRegularizedLoss as ExpectedPositiveRegularizedLoss
from mlic.losses.single_positive import ROLELoss as ROLELoss
from mlic.losses.single_positive import WeakAssumeNegativeLoss as WeakAssumeNegativeLoss
