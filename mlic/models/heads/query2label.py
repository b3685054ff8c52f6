"""`query2label`: Query2Label — learnable label queries decode the backbone tokens with a small DETR-style transformer.

Paper: Liu, Zhang, Yang, Su, Zhu, "Query2Label: A Simple Transformer Way to Multi-Label Classification", arXiv
2107.10834 (seed 003 reproduces its COCO numbers). Reference: `SlongLiu/query2labels`, `lib/models/query2label.py`,
`transformer.py`, `position_encoding.py` (read at `55eb0506`).

Faithful to the reference:
- width `hidden_dim` = the backbone's channels by default, with the input projection replaced by the identity
  (`--keep_input_proj` off); a projection is used when asked or when the width differs;
- DETR sine positional encoding (`hidden_dim / 2` features per axis, temperature 10000, normalised, scale 2π) added to
  keys and queries of the encoder self-attention and to the keys of the decoder cross-attention;
- a post-norm encoder (default 1 layer) and decoder (default 2 layers), 4 heads, feed-forward 8192, dropout 0.1, ReLU;
  every matrix of the transformer xavier-uniform initialised;
- the decoder input is zeros, the learnable `query_embed` (`nn.Embedding(C, d)`) is the query position at every layer,
  decoder self-attention is removed by default (`rm_self_attn_dec`); when it is turned on, the first layer still has
  none (`rm_first_self_attn`); a final decoder LayerNorm;
- `GroupWiseLinear`: one d-vector and bias per class (`(W * h).sum(-1) + b`, U(±1/√d) init).

Deliberate differences:
- the positional encoding is computed for the actual feature size and cached per (H, W, device, dtype), instead of
  being precomputed once for `img_size / 32`, so any input size works (the reference required a fixed size that is a
  multiple of 32);
- ViT tokens `[B, N, C]` are taken as a square grid when N is a perfect square (otherwise a 1×N row);
- batch-first tensors; the layers are called directly, so PyTorch ≥ 2's extra keywords never reach them.

`forward_aux` returns `attention` (`[B, C, H, W]` or `[B, C, N]`: the last decoder layer's cross-attention, averaged
over heads) and `query_of_class` (the identity: one query per class).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlic.models.heads.ml_decoder import attention_maps
from mlic.models.heads.registry import HEADS, Head, as_tokens


def sine_position_encoding(height: int, width: int, dim: int, *, temperature: float = 10000.0,
                           scale: float = 2 * math.pi, device: torch.device | str | None = None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DETR's normalised sine encoding of an `height × width` grid, flattened row-major: `[H·W, dim]`.

    The first `dim / 2` channels encode the row (y), the others the column (x); within each half, sines and cosines
    of geometrically spaced frequencies alternate.
    """
    if dim % 2:
        raise ValueError(f"the positional encoding needs an even width, got {dim}")
    feats, eps = dim // 2, 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    dim_t = temperature ** (2 * torch.div(torch.arange(feats, device=device), 2, rounding_mode="floor") / feats)

    def encode(values: torch.Tensor) -> torch.Tensor:
        angles = values[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, -1)
    pos_x = encode(x)[None, :, :].expand(height, width, -1)
    return torch.cat((pos_y, pos_x), dim=-1).reshape(height * width, dim).to(dtype)


def token_grid(features: torch.Tensor) -> tuple[int, int]:
    """(H, W) of a feature map, or of N tokens taken as a square grid (a 1×N row when N is not a square)."""
    if features.dim() == 4:
        return int(features.shape[-2]), int(features.shape[-1])
    n = int(features.shape[1])
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


class _FeedForward(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """DETR post-norm encoder layer: self-attention with q = k = src + pos, v = src; then the feed-forward."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = _FeedForward(d_model, dim_feedforward, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, **_: object) -> torch.Tensor:
        q = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, q, src, need_weights=False)[0]))
        return self.norm2(src + self.dropout2(self.ffn(src)))


class DecoderLayer(nn.Module):
    """DETR post-norm decoder layer; its self-attention exists only when `self_attention` is True."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, *,
                 self_attention: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True) \
            if self_attention else None
        self.norm1 = nn.LayerNorm(d_model) if self_attention else None
        self.dropout1 = nn.Dropout(dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = _FeedForward(d_model, dim_feedforward, dropout)
        self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor, *,
                need_weights: bool = False, **_: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.self_attn is not None and self.norm1 is not None:
            q = tgt + query_pos
            tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt, need_weights=False)[0]))
        attended, weights = self.multihead_attn(tgt + query_pos, memory + pos, memory, need_weights=need_weights)
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt))), weights


class Transformer(nn.Module):
    """Encoder over the image tokens, decoder of the label queries, final decoder norm (Q2L's `transformer.py`)."""

    def __init__(self, d_model: int, nhead: int, num_encoder_layers: int, num_decoder_layers: int,
                 dim_feedforward: int, dropout: float, decoder_self_attention: bool) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([EncoderLayer(d_model, nhead, dim_feedforward, dropout)
                                      for _ in range(num_encoder_layers)])
        self.decoder = nn.ModuleList([
            DecoderLayer(d_model, nhead, dim_feedforward, dropout, self_attention=decoder_self_attention and i > 0)
            for i in range(num_decoder_layers)])
        self.decoder_norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor, *, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`src [B, N, d]`, `pos [N, d]`, `query_pos [K, d]` → label embeddings `[B, K, d]` and `[B, K, N]` weights."""
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos)
        query_pos = query_pos.unsqueeze(0).expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        weights = None
        for layer in self.decoder:
            tgt, weights = layer(tgt, memory, pos, query_pos, need_weights=need_weights)
        return self.decoder_norm(tgt), weights


class GroupWiseLinear(nn.Module):
    """One linear classifier per label query: `logit_k = W_k · h_k + b_k`."""

    def __init__(self, num_classes: int, hidden_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(hidden_dim)
        self.W = nn.Parameter(torch.empty(1, num_classes, hidden_dim).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.empty(1, num_classes).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.W * x).sum(-1) + self.b


@HEADS.register("query2label")
class Query2LabelHead(Head):
    """Query2Label head (see the module docstring for the reference and the differences).

    Args:
        in_features: backbone channels F.
        num_classes: C (one query each).
        hidden_dim: transformer width d; None = F (reference: 2048 = ResNet-101's channels, identity projection).
        num_heads: attention heads (reference 4).
        enc_layers: encoder layers (reference 1).
        dec_layers: decoder layers (reference 2).
        dim_feedforward: feed-forward width (reference 8192).
        dropout: transformer dropout (reference 0.1).
        decoder_self_attention: keep self-attention among label queries (reference: removed).
        keep_input_proj: a learned `F → d` projection even when d = F (reference `--keep_input_proj`).
    """

    explained_aux = ("attention", "query_of_class")

    def __init__(self, in_features: int, num_classes: int, *, hidden_dim: int | None = None, num_heads: int = 4,
                 enc_layers: int = 1, dec_layers: int = 2, dim_feedforward: int = 8192, dropout: float = 0.1,
                 decoder_self_attention: bool = False, keep_input_proj: bool = False) -> None:
        super().__init__()
        d = hidden_dim or in_features
        self.hidden_dim = d
        self.input_proj: nn.Module = nn.Linear(in_features, d) if keep_input_proj or d != in_features \
            else nn.Identity()
        self.transformer = Transformer(d, num_heads, enc_layers, dec_layers, dim_feedforward, dropout,
                                       decoder_self_attention)
        self.query_embed = nn.Embedding(num_classes, d)
        self.fc = GroupWiseLinear(num_classes, d)
        self._pos_cache: dict[tuple[int, int, str, torch.dtype], torch.Tensor] = {}

    def position_encoding(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """The `[H·W, d]` sine encoding for this grid, computed once per (H, W, device, dtype) and cached.

        Computed outside inference mode and without gradient, so a value cached during `torch.inference_mode()` is an
        ordinary constant tensor later (never an inference tensor inside an autograd graph).
        """
        key = (height, width, str(like.device), like.dtype)
        if key not in self._pos_cache:
            with torch.inference_mode(False), torch.no_grad():
                self._pos_cache[key] = sine_position_encoding(height, width, self.hidden_dim, device=like.device,
                                                              dtype=like.dtype)
        return self._pos_cache[key]

    def decode(self, features: torch.Tensor, *, need_weights: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Label embeddings `[B, C, d]` and the last layer's cross-attention `[B, C, N]` (if asked)."""
        src = self.input_proj(as_tokens(features))
        pos = self.position_encoding(*token_grid(features), src)
        return self.transformer(src, pos, self.query_embed.weight, need_weights=need_weights)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.decode(features)[0])

    def forward_aux(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels, weights = self.decode(features, need_weights=True)
        assert weights is not None
        query_of_class = torch.arange(labels.shape[1], device=labels.device)
        return self.fc(labels), {"attention": attention_maps(weights, features), "query_of_class": query_of_class}
