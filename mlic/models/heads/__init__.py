"""Classification heads, each registered by name in `HEADS`."""

from mlic.models.heads import gap as gap
from mlic.models.heads import gat_reweight as gat_reweight
from mlic.models.heads import ml_decoder as ml_decoder
from mlic.models.heads import ml_gcn as ml_gcn
from mlic.models.heads import moe as moe
from mlic.models.heads import query2label as query2label
from mlic.models.heads.registry import HEADS as HEADS
from mlic.models.heads.registry import Head as Head
from mlic.models.heads.registry import as_tokens as as_tokens
from mlic.models.heads.registry import create_head as create_head
from mlic.models.heads.registry import list_heads as list_heads
