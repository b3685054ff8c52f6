"""`gat_reweight`: the AAM paper's graph branch — a GCN / graph-attention network over label embeddings and the label
graph yields one weight per feature channel; the re-weighted feature map feeds any head (pooling + linear by default,
or ML-Decoder).

Paper: Prokofiev & Sovrasov, "Combining Metric Learning and Attention Heads For Accurate and Efficient Multilabel
Image Classification", arXiv 2209.06585 (seed 002, §3.3, Fig. 1). Reference: `openvinotoolkit/deep-object-reid`
`multilabel` branches (read from the mirror `tosfaq/deep-object-reid`), `torchreid/models/gcn.py` (`Image_GCNN`).

Faithful to the reference:
- the label graph as in ML-GCN (conditional probabilities ≥ τ = 0.4, re-weighting ρ = 0.25, diagonal 1, `D Aᵀ D`),
  fixed, never trained;
- two graph layers `D_emb → hidden (= F / hidden_scale, scale 1) → F`, each followed by LeakyReLU(0.2);
  `layer_type="gcn"` (bias-free GCN, the default — and what the released config actually runs) or `"gat"` (graph
  attention masked to the graph's edges, ELU inside the layer, attention dropout 0.1 as in the reference's
  `GraphAttentionLayer`);
- channel weights `w = σ(max over labels of the graph output)` `[F]`, and `f̃ = w ⊙ f` on every spatial position.

Deliberate differences:
- the readout after re-weighting: `decoder="linear"` (default) pools globally then applies a linear layer; the
  pooling defaults to the average, the backbone's pooling in the reference's paper config (`pooling="avg+max"` is the
  sum of average and max pooling the paper's text mentions in §3.3); with the AAM loss the reference's classifier is a
  cosine one (`AngleSimpleLinear`), which belongs to the loss choice, not to this head;
  `decoder` may name any registered head instead (`"ml_decoder"`: the paper's "GAN re-weighting + MLD"), with its own
  options in `decoder_kwargs`;
- label-name vectors from `mlic.models.label_text` (`"minilm"` by default, `"glove:<path>"`, `"learned"`); the
  reference stores its word vectors as a parameter but leaves them out of its optimiser groups, so text embeddings
  are fixed by default here too (`train_embeddings=True` fine-tunes them);
- graph and embeddings come from the training split through `bind_dataset(table)` (called by the engine before the
  optimiser is built) and are stored in the state dict; until bound, the adjacency is the identity and the
  embeddings random (`mlic.models.heads.ml_gcn`);
- **precomputed at inference**: the channel weights depend on no image, so in eval mode they are computed once and
  reused until a parameter changes (the paper's argument that the branch is free at inference; the reference caches
  them only in its export mode). Training mode recomputes them every step, with gradients.

`forward_aux` returns `channel_weights` `[F]`, `adjacency` `[C, C]`, and the decoder's own tensors (e.g. ML-Decoder's
`attention`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlic.core.registry import Registry
from mlic.models.heads.ml_gcn import GRAPH_LAYERS, LabelGraphHead
from mlic.models.heads.registry import HEADS, Head, as_tokens

POOLINGS: Registry[torch.Tensor] = Registry("pooling")
POOLINGS.register("avg")(lambda tokens: tokens.mean(dim=1))
POOLINGS.register("max")(lambda tokens: tokens.amax(dim=1))
POOLINGS.register("avg+max")(lambda tokens: tokens.mean(dim=1) + tokens.amax(dim=1))


class PooledLinear(Head):
    """Global pooling (`avg`, `max` or the paper's `avg+max` sum), dropout, then `Linear(F, C)`."""

    def __init__(self, in_features: int, num_classes: int, *, pooling: str = "avg", dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = POOLINGS.get(pooling)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(as_tokens(features))))


def build_decoder(name: str, in_features: int, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """`"linear"` → `PooledLinear`; any other name → that registered head, fed the re-weighted features."""
    if name == "linear":
        return PooledLinear(in_features, num_classes, **kwargs)
    return HEADS.create(name, in_features=in_features, num_classes=num_classes, **kwargs)


@HEADS.register("gat_reweight")
class GraphReweightHead(LabelGraphHead):
    """Graph re-weighting branch + a decoder (see the module docstring for the reference and the differences).

    Args:
        in_features: backbone channels F (the number of channel weights).
        num_classes: C.
        layer_type: `"gcn"` (reference default) or `"gat"` (the paper's graph attention), from `GRAPH_LAYERS`.
        label_embeddings: `"minilm"` (default), `"glove:<path>"` or `"learned"`.
        embedding_dim: width of learned embeddings.
        hidden_scale: hidden width = F / hidden_scale (reference `hidden_dim_scale` 1.0).
        tau: co-occurrence threshold (reference 0.4).
        p: neighbour re-weighting ρ (reference 0.25).
        train_embeddings: fine-tune text embeddings (default: fixed).
        attention_dropout: dropout on graph-attention coefficients (`gat` only; reference 0.1).
        negative_slope: LeakyReLU slope after each graph layer (reference 0.2).
        decoder: `"linear"` (pooling + linear) or a registered head name such as `"ml_decoder"`.
        decoder_kwargs: options of the decoder (`pooling`, `dropout` for `linear`; the head's own otherwise).
    """

    def __init__(self, in_features: int, num_classes: int, *, layer_type: str = "gcn", label_embeddings: str = "minilm",
                 embedding_dim: int = 300, hidden_scale: float = 1.0, tau: float = 0.4, p: float = 0.25,
                 train_embeddings: bool = False, attention_dropout: float = 0.1, negative_slope: float = 0.2,
                 decoder: str = "linear", decoder_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        dim = self._init_label_graph(num_classes, label_embeddings=label_embeddings, embedding_dim=embedding_dim,
                                     train_embeddings=train_embeddings, tau=tau, p=p)
        layer = GRAPH_LAYERS.get(layer_type)
        hidden = max(1, int(in_features / hidden_scale))
        self.layer_type = layer_type
        self.gc1 = layer(dim, hidden, attention_dropout=attention_dropout)
        self.gc2 = layer(hidden, in_features, attention_dropout=attention_dropout)
        self.negative_slope = negative_slope
        self.decoder_name = decoder
        self.decoder = build_decoder(decoder, in_features, num_classes, dict(decoder_kwargs or {}))

    def graph_parameters(self) -> list[torch.Tensor]:
        return [*self.gc1.parameters(), *self.gc2.parameters()]

    def compute_graph(self) -> torch.Tensor:
        """Channel weights `[F]` in (0, 1): sigmoid of the max over labels of the graph branch's output."""
        x = F.leaky_relu(self.gc1(self.embeddings, self.adjacency), self.negative_slope)
        x = F.leaky_relu(self.gc2(x, self.adjacency), self.negative_slope)
        return torch.sigmoid(x.amax(dim=0))

    def channel_weights(self) -> torch.Tensor:
        """The channel weights: live while training, precomputed and reused in eval mode."""
        return self.graph_output()

    @staticmethod
    def reweight(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`w ⊙ f` over channels: dim 1 of a `[B, F, H, W]` map, the last dim of `[B, N, F]` tokens."""
        weights = weights.to(features.dtype)
        if features.dim() == 4:
            return features * weights.view(1, -1, 1, 1)
        return features * weights.view(1, 1, -1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.reweight(features, self.channel_weights()))

    @property
    def explained_aux(self) -> tuple[str, ...]:  # type: ignore[override]
        """The channel weights, and whatever the decoder's own outputs are (its cross-attention)."""
        return ("channel_weights", *self.decoder.explained_aux)

    def forward_aux(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weights = self.channel_weights()
        logits, aux = self.decoder.forward_aux(self.reweight(features, weights))
        return logits, {**aux, "channel_weights": weights, "adjacency": self.adjacency}

    def bind(self, labels: np.ndarray, class_names: Sequence[str]) -> None:
        """Bind the graph branch, and the decoder (a head itself) to the training labels."""
        super().bind(labels, class_names)
        self.decoder.bind(labels, class_names)
