"""`ml_gcn`: ML-GCN — a GCN over label-name embeddings and the label co-occurrence graph produces one classifier per
label, applied to the globally max-pooled image feature.

Paper: Chen, Wei, Wang, Guo, "Multi-Label Image Recognition with Graph Convolutional Networks", CVPR 2019.
Reference: `Megvii-Nanjing/ML-GCN`, `models.py` (`GCNResnet`, `GraphConvolution`) and `util.py` (`gen_A`, `gen_adj`),
read at `5517d6ff`.

Faithful to the reference:
- the correlation matrix from training co-occurrence, binarised at τ = 0.4, re-weighted with p = 0.25 the way the
  released code does it (columns normalised, diagonal 1; `mlic.models.label_graph.mlgcn_adjacency`), propagated as `D
  Aᵀ D` (`mlic.models.label_graph.normalize_adjacency`); it is fixed, never trained;
- `gc1: D_emb → 1024`, LeakyReLU(0.2), `gc2: 1024 → F` with no activation after it; bias-free graph convolutions
  `Â (X W)` with W ~ U(±1/√out);
- global max pooling of the feature map, then `logits = pooled @ classifiersᵀ` with no bias.

Deliberate differences:
- label-name vectors come from `mlic.models.label_text` (`"minilm"` sentence embeddings by default, `"glove:<path>"`
  for the reference's GloVe, or `"learned"`), not from a pickled 300-d GloVe matrix;
- the graph and the embeddings are computed from the training split by `bind(labels, class_names)`, which the
  engine calls before building the optimiser; they are buffers / frozen parameters, so they travel in checkpoints
  and a loaded model needs no dataset. **Until bound** (e.g. a bare `create_model`) the adjacency is the identity
  and the embeddings are random N(0, 1/D) vectors;
- at inference (eval mode) the per-label classifiers depend on no image, so they are computed once and reused until a
  parameter changes (`GraphBranchCache`); training mode recomputes them every step, with gradients.

`forward_aux` returns `classifiers` `[C, F]`, `adjacency` (the propagation matrix `[C, C]`) and `embeddings` `[C, D]`.

This module also holds the pieces both graph heads share: the graph layers (`GRAPH_LAYERS`: `gcn`, `gat`), the
label-graph binding and the inference cache.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlic.core.registry import Registry
from mlic.models import label_graph as graph
from mlic.models import label_text
from mlic.models.heads.registry import HEADS, Head, as_tokens

log = logging.getLogger(__name__)

GRAPH_LAYERS: Registry[nn.Module] = Registry("graph layer")


@GRAPH_LAYERS.register("gcn")
class GraphConvolution(nn.Module):
    """Kipf–Welling graph convolution as in ML-GCN: `Â (X W)`, bias-free by default, W ~ U(±1/√out)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, **_: object) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(out_features)
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        out = adjacency @ (x @ self.weight)
        return out if self.bias is None else out + self.bias


@GRAPH_LAYERS.register("gat")
class GraphAttention(nn.Module):
    """Graph attention layer (Veličković et al. 2018) as in deep-object-reid's `GraphAttentionLayer`.

    `e_ij = LeakyReLU_α(a₁·Wh_i + a₂·Wh_j)`, masked to the graph's edges (`adjacency > 0`), softmax over j, dropout,
    `h'_i = Σ_j att_ij Wh_j`, then ELU (`concat=True`). W and a are xavier-uniform with gain 1.414; attention dropout
    0.1 as in the reference's layer.
    """

    def __init__(self, in_features: int, out_features: int, *, attention_dropout: float = 0.1,
                 negative_slope: float = 0.2, concat: bool = True, **_: object) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_features, out_features))
        self.a = nn.Parameter(torch.empty(2 * out_features, 1))
        nn.init.xavier_uniform_(self.W, gain=1.414)
        nn.init.xavier_uniform_(self.a, gain=1.414)
        self.out_features = out_features
        self.negative_slope = negative_slope
        self.concat = concat
        self.dropout = nn.Dropout(attention_dropout)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        wh = x @ self.W
        scores = F.leaky_relu(wh @ self.a[:self.out_features] + (wh @ self.a[self.out_features:]).T,
                              self.negative_slope)
        attention = torch.softmax(scores.masked_fill(adjacency <= 0, -9e15), dim=1)
        out = self.dropout(attention) @ wh
        return F.elu(out) if self.concat else out


class GraphBranchCache:
    """One tensor computed from a module's own parameters, reused while none of them has changed.

    The key is each tensor's storage address and version counter: optimiser steps, EMA updates, `load_state_dict` and
    `.to()` all change one of them, so a stale value is never served (inference tensors, i.e. a model built inside
    `torch.inference_mode()`, have no version counter and cannot be updated outside it; only their address counts).
    The value is computed without gradient, outside inference mode (an ordinary constant), with autocast off.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: torch.Tensor | None = None
        self.computations = 0

    def get(self, tensors: Iterable[torch.Tensor], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        tensors = list(tensors)
        key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype) for t in tensors)
        if self.value is None or key != self.key:
            device_type = tensors[0].device.type if tensors else "cpu"
            with torch.inference_mode(False), torch.no_grad(), torch.autocast(device_type, enabled=False):
                self.value = compute()
            self.key = key
            self.computations += 1
        return self.value

    def clear(self) -> None:
        self.key, self.value = None, None


class LabelGraphHead(Head):
    """Base of the graph heads: label embeddings, the ML-GCN propagation matrix, `bind`, the inference cache.

    Subclasses implement `compute_graph()` (the image-independent graph branch) and use `graph_output()`, which
    recomputes it with gradients in training mode and serves it from the cache in eval mode.
    """

    precomputed_at_inference = True

    def _init_label_graph(self, num_classes: int, *, label_embeddings: str, embedding_dim: int,
                          train_embeddings: bool, tau: float, p: float) -> int:
        """Create the `adjacency` buffer and the `embeddings` parameter; returns the embedding width."""
        self.num_classes = num_classes
        self.label_embeddings = label_embeddings
        self.tau, self.p = tau, p
        dim = label_text.embedding_dim(label_embeddings, learned_dim=embedding_dim)
        trainable = label_embeddings == label_text.LEARNED or train_embeddings
        self.embeddings = nn.Parameter(torch.randn(num_classes, dim) / math.sqrt(dim), requires_grad=trainable)
        self.register_buffer("adjacency", torch.eye(num_classes))
        self.register_buffer("bound", torch.zeros((), dtype=torch.bool))
        self.graph_cache = GraphBranchCache()
        return dim

    def bind(self, labels: np.ndarray, class_names: Sequence[str]) -> None:
        """Compute the propagation matrix and the label-name embeddings from the training labels `[N, C]`."""
        labels = np.asarray(labels)
        if labels.shape[1] != self.num_classes:
            raise ValueError(f"the head has {self.num_classes} classes, the training labels {labels.shape[1]}")
        self.adjacency.copy_(torch.from_numpy(graph_propagation(labels, tau=self.tau, p=self.p)))
        if self.label_embeddings != label_text.LEARNED:
            vectors = label_text.label_embeddings(list(class_names), self.label_embeddings)
            with torch.no_grad():
                self.embeddings.copy_(torch.from_numpy(vectors))
        self.bound.fill_(True)
        self.graph_cache.clear()
        log.info("%s bound to %d training images: %d label edges, %s embeddings", type(self).__name__, len(labels),
                 int((self.adjacency > 0).sum()) - self.num_classes, self.label_embeddings)

    def compute_graph(self) -> torch.Tensor:
        """The image-independent output of the graph branch (classifiers or channel weights)."""
        raise NotImplementedError

    def graph_tensors(self) -> list[torch.Tensor]:
        """Every tensor the graph branch reads (the cache key)."""
        return [self.embeddings, self.adjacency, *self.graph_parameters()]

    def graph_parameters(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def graph_output(self) -> torch.Tensor:
        """`compute_graph()` — live with gradients while training, computed once and reused in eval mode."""
        if self.training:
            return self.compute_graph()
        return self.graph_cache.get(self.graph_tensors(), self.compute_graph)


def graph_propagation(labels: np.ndarray, *, tau: float = 0.4, p: float = 0.25) -> np.ndarray:
    """ML-GCN's propagation matrix `D Aᵀ D` (float32) of the re-weighted correlation graph of a label matrix."""
    M, N = graph.cooccurrence(labels)
    return graph.normalize_adjacency(graph.mlgcn_adjacency(M, N, tau=tau, p=p)).astype(np.float32)


@HEADS.register("ml_gcn")
class MLGCNHead(LabelGraphHead):
    """ML-GCN head (see the module docstring for the reference and the differences).

    Args:
        in_features: backbone channels F (the classifiers' width).
        num_classes: C.
        label_embeddings: `"minilm"` (default), `"glove:<path>"` or `"learned"`.
        embedding_dim: width of learned embeddings (text sources fix their own: 384 MiniLM, the file's for GloVe).
        hidden_dim: width of the first graph convolution (reference 1024).
        tau: co-occurrence threshold (reference 0.4).
        p: re-weighting of neighbours (reference 0.25).
        train_embeddings: fine-tune text embeddings (reference: fixed inputs).
        negative_slope: LeakyReLU slope between the two convolutions (reference 0.2).
    """

    explained_aux = ("classifiers",)

    def __init__(self, in_features: int, num_classes: int, *, label_embeddings: str = "minilm",
                 embedding_dim: int = 300, hidden_dim: int = 1024, tau: float = 0.4, p: float = 0.25,
                 train_embeddings: bool = False, negative_slope: float = 0.2) -> None:
        super().__init__()
        dim = self._init_label_graph(num_classes, label_embeddings=label_embeddings, embedding_dim=embedding_dim,
                                     train_embeddings=train_embeddings, tau=tau, p=p)
        self.gc1 = GraphConvolution(dim, hidden_dim)
        self.gc2 = GraphConvolution(hidden_dim, in_features)
        self.negative_slope = negative_slope

    def graph_parameters(self) -> list[torch.Tensor]:
        return [*self.gc1.parameters(), *self.gc2.parameters()]

    def compute_graph(self) -> torch.Tensor:
        """Per-label classifiers `[C, F]`."""
        hidden = F.leaky_relu(self.gc1(self.embeddings, self.adjacency), self.negative_slope)
        return self.gc2(hidden, self.adjacency)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = as_tokens(features).amax(dim=1)
        return pooled @ self.graph_output().to(pooled.dtype).T

    def forward_aux(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self(features), {"classifiers": self.graph_output(), "adjacency": self.adjacency,
                                "embeddings": self.embeddings.detach()}
