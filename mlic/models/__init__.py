"""Models: timm backbones, registered heads, and the classifier that joins them."""

from mlic.models.backbones import OFFLINE_WEIGHTS as OFFLINE_WEIGHTS
from mlic.models.backbones import backbone_data_config as backbone_data_config
from mlic.models.backbones import create_backbone as create_backbone
from mlic.models.checkpoints import import_checkpoint as import_checkpoint
from mlic.models.classifier import MultiLabelClassifier as MultiLabelClassifier
from mlic.models.classifier import create_model as create_model
from mlic.models.heads import HEADS as HEADS
from mlic.models.heads import Head as Head
from mlic.models.heads import create_head as create_head
from mlic.models.heads import list_heads as list_heads
