"""`ml_decoder`: ML-Decoder — frozen group queries cross-attend to the spatial tokens; a group fully-connected layer.

Paper: Ridnik, Sharir, Ben-Cohen, Ben-Baruch, Noy, "ML-Decoder: Scalable and Versatile Classification Head", WACV 2023
(arXiv 2111.12933). Reference: `Alibaba-MIIL/ML_Decoder`, `src_files/ml_decoder/ml_decoder.py` (read at `8a9e984f`).

Faithful to the reference:
- tokens `[B, HW, F]` → `Linear(F, d)` + ReLU (`embed_standart` there, `input_proj` here), d = 768 by default;
- K = `min(100 if num_groups < 0 else num_groups, C)` queries from an `nn.Embedding(K, d)` that is **frozen**
  (random N(0, 1), `requires_grad=False`, but kept in the state dict);
- one decoder layer without self-attention (`TransformerDecoderLayerOptimal`): `norm1(q + dropout(q))` in place of
  self-attention (kept as in the reference, although it only rescales the queries), then cross-attention (8 heads,
  no positional encodings), then a ReLU feed-forward of width 2048, all post-norm with dropout 0.1;
- group FC: `dup = ceil(C / K)` outputs per group from a `[K, d, dup]` weight (xavier-normal) and a `[C]` bias (zeros);
  the `K·dup` outputs are cut to the first C.

Deliberate differences:
- the layer is called directly (no `nn.TransformerDecoder` wrapper), so PyTorch ≥ 2's `tgt_is_causal` keywords never
  reach it, and it returns the attention weights when asked (`forward_aux`);
- the group FC is one `einsum('bkd,kdg->bkg')` instead of a Python loop over groups (Alibaba-MIIL/ML_Decoder
  issue #83: the loop was slow); the values are identical;
- batch-first tensors; no zero-shot (word-vector queries) mode.

`forward_aux` returns `attention` (`[B, K, H, W]` for CNN maps, `[B, K, N]` for tokens; the cross-attention of the last
layer averaged over heads) and `query_of_class` (`[C]`: the group query that produces each class, `c // dup`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlic.models.heads.registry import HEADS, Head, as_tokens


class CrossAttentionLayer(nn.Module):
    """ML-Decoder's `TransformerDecoderLayerOptimal`: no self-attention, cross-attention and feed-forward, post-norm.

    Keyword arguments that `nn.TransformerDecoder` passes in PyTorch ≥ 2 (`tgt_is_causal`, masks) are accepted and
    ignored (the reference layer's TypeError there); the head calls its layers directly.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, *, need_weights: bool = False,
                **_: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`tgt [B, K, d]` queries, `memory [B, N, d]` tokens → updated queries and (optionally) `[B, K, N]` weights."""
        tgt = self.norm1(tgt + self.dropout1(tgt))  # the reference's stand-in for self-attention
        attended, weights = self.multihead_attn(tgt, memory, memory, need_weights=need_weights)
        tgt = self.norm2(tgt + self.dropout2(attended))
        tgt = self.norm3(tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))
        return tgt, weights


def num_query_groups(num_classes: int, num_groups: int = -1) -> int:
    """The reference's K: 100 groups when `num_groups < 0`, never more than the number of classes."""
    if num_groups == 0:
        raise ValueError("num_groups must be positive (or -1 for min(100, num_classes))")
    return min(100 if num_groups < 0 else num_groups, num_classes)


@HEADS.register("ml_decoder")
class MLDecoderHead(Head):
    """ML-Decoder head (see the module docstring for the reference and the differences).

    Args:
        in_features: backbone channels F.
        num_classes: C.
        num_groups: K queries; -1 (reference default) means `min(100, C)`; any value from 1 to C works.
        decoder_embedding: decoder width d (reference 768).
        num_heads: cross-attention heads (reference 8).
        dim_feedforward: feed-forward width (reference 2048).
        num_layers: decoder layers (reference 1).
        dropout: dropout inside the layer (reference 0.1).
    """

    explained_aux = ("attention", "query_of_class")

    def __init__(self, in_features: int, num_classes: int, *, num_groups: int = -1, decoder_embedding: int = 768,
                 num_heads: int = 8, dim_feedforward: int = 2048, num_layers: int = 1, dropout: float = 0.1,
                 cosine: bool = False, scale: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cosine, self.scale = cosine, float(scale)
        self.num_groups = num_query_groups(num_classes, num_groups)
        self.dup = math.ceil(num_classes / self.num_groups)
        self.input_proj = nn.Linear(in_features, decoder_embedding)
        self.query_embed = nn.Embedding(self.num_groups, decoder_embedding)
        self.query_embed.requires_grad_(False)
        self.layers = nn.ModuleList([CrossAttentionLayer(decoder_embedding, num_heads, dim_feedforward, dropout)
                                     for _ in range(num_layers)])
        self.duplicate_pooling = nn.Parameter(torch.empty(self.num_groups, decoder_embedding, self.dup))
        self.duplicate_pooling_bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.xavier_normal_(self.duplicate_pooling)

    def decode(self, features: torch.Tensor, *, need_weights: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Group embeddings `[B, K, d]` and the last layer's head-averaged attention `[B, K, N]` (if asked)."""
        projected = self.input_proj(as_tokens(features))
        memory = F.leaky_relu(projected, 0.2) if self.cosine else F.relu(projected)
        tgt = self.query_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        weights = None
        for layer in self.layers:
            tgt, weights = layer(tgt, memory, need_weights=need_weights)
        return tgt, weights

    def group_fc(self, groups: torch.Tensor) -> torch.Tensor:
        """`[B, K, d]` group embeddings → `[B, C]` logits: `dup` outputs per group, cut to C, plus the bias.

        With `cosine`, group embeddings and class vectors are L2-normalised and the logits are `scale · cosθ` with no
        bias (the AAM paper's `GroupASL` port, whose bias would move logits off the cosine range the AAM loss reads).
        """
        if self.cosine:
            weights = F.normalize(self.duplicate_pooling, dim=1)
            cos = torch.einsum("bkd,kdg->bkg", F.normalize(groups, dim=-1), weights).flatten(1)
            return self.scale * cos[:, :self.num_classes].clamp(-1.0, 1.0)
        out = torch.einsum("bkd,kdg->bkg", groups, self.duplicate_pooling).flatten(1)
        return out[:, :self.num_classes] + self.duplicate_pooling_bias

    def query_of_class(self) -> torch.Tensor:
        """`[C]` index of the group query that produces each class."""
        return torch.arange(self.num_classes, device=self.duplicate_pooling.device) // self.dup

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.group_fc(self.decode(features)[0])

    def forward_aux(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        groups, weights = self.decode(features, need_weights=True)
        assert weights is not None
        return self.group_fc(groups), {"attention": attention_maps(weights, features),
                                       "query_of_class": self.query_of_class()}


def attention_maps(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Attention `[B, Q, N]` over tokens reshaped to the feature map `[B, Q, H, W]` when the features were a map."""
    if features.dim() == 4:
        return weights.reshape(*weights.shape[:2], *features.shape[-2:])
    return weights
