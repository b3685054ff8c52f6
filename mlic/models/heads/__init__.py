"""Classification heads, each registered by name in `HEADS`."""

from mlic.models.heads import gap as gap
from mlic.models.heads.registry import HEADS as HEADS
from mlic.models.heads.registry import Head as Head
from mlic.models.heads.registry import as_tokens as as_tokens
from mlic.models.heads.registry import create_head as create_head
from mlic.models.heads.registry import list_heads as list_heads
