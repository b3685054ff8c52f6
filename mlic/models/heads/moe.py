"""`moe_static`, `moe_dynamic`: mixture-of-experts heads on Query2Label label features — HSQ-style static per-label
gates and DR-MoE input-dependent routing.

**Unofficial.** Neither paper has public code (HSQ: Yin et al., ICLR 2024, whose repository holds only a README;
DR-MoE: an ICLR 2025 submission known from its abstract and reviews; see implementations.md §9–10). This module is a
design from their descriptions; every decision that the descriptions leave open is a constructor argument.

Architecture (both heads):

1. **Label features.** The Query2Label decoder (this head *is* a `Query2LabelHead`: same transformer, sine positional
   encoding, learnable label queries) turns the backbone tokens into one feature `q_c ∈ R^d` per label.
2. **Experts.** `n_shared` shared experts (used by every label) and `n_specific` specific experts per *expert group*.
   With `expert_groups=None` every label is its own group (HSQ's task-specialised experts); an int k groups the labels
   into k parts of a `mlic.models.label_graph.label_partition` of the training labels (computed by `bind`), a list of C
   ints is an explicit assignment — so 500 labels need not mean 500 sets of experts. An expert is a two-layer FFN
   `d → expert_hidden → d` (ReLU). All experts run batched: stacked weights and one einsum per layer, the labels laid
   out as `[groups, largest group]` (padding discarded) — no Python loop over labels.
3. **Gate.** Per label c a gate `g_c` over `n_specific + n_shared` slots: its group's specific experts first, then the
   shared ones. `logits / temperature` → softmax (`routing="softmax"`, dense) or the top-k logits → softmax over them,
   the others exactly zero (`routing="topk"`, sparse). Each label has its own gate weights.
4. **Mixture.** `h_c = q_c + Σ_j g_c[j] · expert_j(q_c)` (the residual is optional), then Query2Label's per-label
   linear classifier (`GroupWiseLinear`), as the HSQ description suggests.

What the two heads differ in is the gate input (`gate_input`):

- `moe_static` — the gate never sees the image. `"query"` (default): a per-label linear map of the label's learned
  query embedding (the decoder's query position, *before* the decoder); `"learned"`: a free per-label logit vector.
  Both are equally expressive (one learned vector of E logits per label); `"query"` ties the gate to the vector the
  decoder also learns. Note: HSQ's paper feeds the decoded task feature `q_c` to its gate, which makes it depend on
  the image after all (DR-MoE's reviewers' point). That literal formula is `moe_dynamic(gate_input="label")`.
- `moe_dynamic` — DR-MoE's routing from the image. `"image+label"` (default): a per-label linear map of the global
  image feature (mean of the projected tokens, layer-normalised) concatenated with `q_c`; `"image"`: the image
  feature alone (still per-label weights); `"label"`: `q_c` alone (HSQ's formula). DR-MoE's default of one specific
  expert per label (`n_specific=1`) is the default here.

Load balancing (`balance_weight > 0`, returned by `forward_train` as `load_balance`, already multiplied by the weight):
per label over its E slots, averaged over labels, with `P` the batch mean of the full softmax probabilities and `f` the
batch mean of the routed weights (no gradient):

- `balance="importance"` (default): `E · Σ_j P_j²` — 1 exactly when the mean routing is uniform, larger otherwise
  (Cauchy–Schwarz); Shazeer et al.'s importance term in a form comparable with Switch's.
- `balance="switch"`: `E · Σ_j f_j · P_j` (Fedus et al.'s Switch loss) — aware of the top-k dispatch and 1 under
  uniform routing, but with top-k not a strict minimum there (routing every image to its argmax can score below 1).
  With dense routing f = P and the two are equal.

Cost: experts run densely on every label feature; top-k zeroes the unchosen weights, so it changes the function and
the gradients (an expert nobody routed to gets none), not the compute.

`forward_aux` returns `gates` (`[B, C, n_specific + n_shared]`, recorded in the predictions, `recorded_aux`),
`attention` and `query_of_class` (as Query2Label's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlic.models import label_graph as graph
from mlic.models.heads.ml_decoder import attention_maps
from mlic.models.heads.query2label import Query2LabelHead
from mlic.models.heads.registry import HEADS, as_tokens

ROUTINGS = ("softmax", "topk")
BALANCES = ("importance", "switch")
STATIC_GATES = ("query", "learned")
DYNAMIC_GATES = ("image+label", "image", "label")


def _uniform(shape: Sequence[int], fan_in: int) -> nn.Parameter:
    """`nn.Linear`'s default initialisation, U(±1/√fan_in), for a stacked weight."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class ExpertBank(nn.Module):
    """`banks × experts` independent FFNs `d → hidden → d` (ReLU) as stacked weights.

    `forward(x [B, banks, M, d]) -> [B, banks, M, experts, d]`: every expert of bank g on each of the M rows of bank g,
    in two einsums.
    """

    def __init__(self, banks: int, experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.banks, self.experts = banks, experts
        self.w1 = _uniform((banks, experts, dim, hidden), dim)
        self.b1 = _uniform((banks, experts, hidden), dim)
        self.w2 = _uniform((banks, experts, hidden, dim), hidden)
        self.b2 = _uniform((banks, experts, dim), hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(torch.einsum("bgmd,gedh->bgmeh", x, self.w1) + self.b1[None, :, None])
        return torch.einsum("bgmeh,gehd->bgmed", h, self.w2) + self.b2[None, :, None]


def group_layout(group_of: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels laid out per group, for batched expert banks.

    Args:
        group_of: `[C]` group index of each label, in `[0, num_groups)`.
        num_groups: G.

    Returns:
        `index [G, M]`: the labels of each group in ascending order, padded with label 0 (M = the largest group), and
        `position [C]`: each label's flat slot `g·M + m` in that layout.
    """
    group_of = np.asarray(group_of, dtype=np.int64)
    counts = np.bincount(group_of, minlength=num_groups)
    width = max(int(counts.max(initial=0)), 1)
    order = np.argsort(group_of, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(order)) - starts[group_of[order]]
    flat = group_of[order] * width + rank
    index = np.zeros(num_groups * width, dtype=np.int64)
    index[flat] = order
    position = np.empty(len(group_of), dtype=np.int64)
    position[order] = flat
    return index.reshape(num_groups, width), position


def route(logits: torch.Tensor, *, routing: str = "softmax", top_k: int = 1, temperature: float = 1.0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate weights and full probabilities from gate logits `[..., E]`.

    `softmax`: both are `softmax(logits / temperature)`. `topk`: the weights are a softmax over the `top_k` largest
    logits (divided by the temperature) and exactly zero elsewhere; the probabilities stay the full softmax (the load
    balancing term needs them).
    """
    probs = torch.softmax(logits / temperature, dim=-1)
    if routing == "softmax":
        return probs, probs
    if routing != "topk":
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    top = logits.topk(top_k, dim=-1).indices
    masked = torch.full_like(logits, float("-inf")).scatter(-1, top, logits.gather(-1, top))
    return torch.softmax(masked / temperature, dim=-1), probs


def load_balancing_loss(probs: torch.Tensor, weights: torch.Tensor, *, kind: str = "importance") -> torch.Tensor:
    """Per-label load balancing over the E gate slots, averaged over labels (see the module docstring).

    Args:
        probs: `[B, C, E]` full softmax probabilities of the gates.
        weights: `[B, C, E]` routed weights (equal to `probs` for dense routing); used without gradient.
        kind: `"importance"` (`E · Σ_j P_j²`) or `"switch"` (`E · Σ_j f_j · P_j`), P and f the batch means.

    Returns:
        A scalar, 1 for uniform routing.
    """
    experts = probs.shape[-1]
    mean_probs = probs.float().mean(dim=0)
    if kind == "importance":
        dispatch = mean_probs.detach()
    elif kind == "switch":
        dispatch = weights.detach().float().mean(dim=0)
    else:
        raise ValueError(f"balance must be one of {BALANCES}, got {kind!r}")
    return (experts * (dispatch * mean_probs).sum(dim=-1)).mean()


class MixtureOfExpertsHead(Query2LabelHead):
    """Query2Label decoder → per-label mixture of shared and label-(group-)specific experts → per-label classifier.

    Unofficial design (module docstring); use the registered `moe_static` and `moe_dynamic`, which fix the allowed
    gate inputs.

    Args:
        in_features: backbone channels F.
        num_classes: C.
        n_shared: shared experts (every label may route to them); ≥ 0.
        n_specific: specific experts per label (or per expert group); ≥ 0, and `n_shared + n_specific ≥ 1`.
        expert_hidden: hidden width of each expert FFN (parameters: `2·d·expert_hidden` per expert).
        expert_groups: None — one group per label; int k — k groups from `group_strategy` on the training labels at
            `bind` (until bound, label c is in group `c % k`); a list of C ints — an explicit assignment.
        group_strategy: `mlic.models.label_graph.label_partition` strategy for an int `expert_groups` (`cgp`:
            labels that co-occur share experts; `dgp`: labels that do not; `random`).
        group_seed: the partition's seed.
        gate_input: what the gate sees (see `STATIC_GATES`, `DYNAMIC_GATES`).
        routing: `softmax` (dense) or `topk` (sparse).
        top_k: slots kept per label with `topk`.
        temperature: gate logits are divided by it (< 1 sharpens, > 1 flattens).
        balance: `importance` or `switch` load-balancing term.
        balance_weight: its weight in the training loss; 0 turns it off.
        residual: add the mixture to `q_c` (True) or replace `q_c` by it.
        hidden_dim, num_heads, enc_layers, dec_layers, dim_feedforward, dropout, decoder_self_attention,
            keep_input_proj: the Query2Label decoder's options, with its defaults.
    """

    recorded_aux = ("gates",)
    explained_aux = ("attention", "query_of_class", "gates")
    gate_inputs: tuple[str, ...] = STATIC_GATES + DYNAMIC_GATES

    def __init__(self, in_features: int, num_classes: int, *, n_shared: int = 1, n_specific: int = 1,
                 expert_hidden: int = 256, expert_groups: int | Sequence[int] | None = None,
                 group_strategy: str = "cgp", group_seed: int = 0, gate_input: str = "query",
                 routing: str = "softmax", top_k: int = 1, temperature: float = 1.0, balance: str = "importance",
                 balance_weight: float = 0.0, residual: bool = True, hidden_dim: int | None = None,
                 num_heads: int = 4, enc_layers: int = 1, dec_layers: int = 2, dim_feedforward: int = 8192,
                 dropout: float = 0.1, decoder_self_attention: bool = False, keep_input_proj: bool = False) -> None:
        super().__init__(in_features, num_classes, hidden_dim=hidden_dim, num_heads=num_heads, enc_layers=enc_layers,
                         dec_layers=dec_layers, dim_feedforward=dim_feedforward, dropout=dropout,
                         decoder_self_attention=decoder_self_attention, keep_input_proj=keep_input_proj)
        experts = n_shared + n_specific
        if n_shared < 0 or n_specific < 0 or experts < 1:
            raise ValueError(f"need n_shared, n_specific ≥ 0 and at least one expert, got {n_shared}, {n_specific}")
        if gate_input not in self.gate_inputs:
            raise ValueError(f"gate_input must be one of {self.gate_inputs} for {type(self).__name__}, "
                             f"got {gate_input!r}")
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if routing == "topk" and not 1 <= top_k <= experts:
            raise ValueError(f"top_k must lie in [1, {experts}] (n_specific + n_shared), got {top_k}")
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        d = self.hidden_dim
        self.num_classes, self.n_shared, self.n_specific = num_classes, n_shared, n_specific
        self.num_experts = experts
        self.gate_input, self.routing, self.top_k, self.temperature = gate_input, routing, top_k, temperature
        self.balance, self.balance_weight, self.residual = balance, balance_weight, residual
        self.group_strategy, self.group_seed = group_strategy, group_seed

        assign, self.partition_k = self._initial_groups(expert_groups, num_classes)
        self.num_groups = int(assign.max()) + 1
        self.register_buffer("group_of", torch.from_numpy(assign))
        self.register_buffer("bound", torch.tensor(self.partition_k is None))
        self.specific = ExpertBank(self.num_groups, n_specific, d, expert_hidden) if n_specific else None
        self.shared = ExpertBank(1, n_shared, d, expert_hidden) if n_shared else None
        self._layout_key: tuple[Any, ...] | None = None
        self._layout: tuple[torch.Tensor, torch.Tensor] | None = None

        if gate_input == "learned":
            self.gate_logits_ = nn.Parameter(torch.randn(num_classes, experts) * 0.01)
        else:
            width = 2 * d if gate_input == "image+label" else d
            self.gate_weight = _uniform((num_classes, experts, width), width)
            self.gate_bias = nn.Parameter(torch.zeros(num_classes, experts))
        self.image_norm = nn.LayerNorm(d) if gate_input in ("image", "image+label") else None

    @staticmethod
    def _initial_groups(expert_groups: int | Sequence[int] | None, num_classes: int) -> tuple[np.ndarray, int | None]:
        """The assignment before binding, and k when the partition is to be computed from the training labels."""
        if expert_groups is None:
            return np.arange(num_classes, dtype=np.int64), None
        if isinstance(expert_groups, (int, np.integer)):
            k = int(expert_groups)
            if not 1 <= k <= num_classes:
                raise ValueError(f"expert_groups must lie in [1, {num_classes}], got {k}")
            return np.arange(num_classes, dtype=np.int64) % k, k
        assign = np.asarray(expert_groups, dtype=np.int64)
        if assign.shape != (num_classes,) or assign.min(initial=0) < 0:
            raise ValueError(f"expert_groups as an assignment needs {num_classes} non-negative group indices, "
                             f"got shape {assign.shape}")
        return assign, None

    def bind(self, labels: np.ndarray, class_names: Sequence[str]) -> None:
        """With an int `expert_groups`, partition the training labels `[N, C]` into that many groups."""
        labels = np.asarray(labels)
        if labels.shape[1] != self.num_classes:
            raise ValueError(f"the head has {self.num_classes} classes, the training labels {labels.shape[1]}")
        if self.partition_k is None:
            return
        assign = graph.label_partition(labels, self.group_strategy, self.partition_k, seed=self.group_seed)
        self.group_of.copy_(torch.from_numpy(np.asarray(assign, dtype=np.int64)))
        self.bound.fill_(True)

    def group_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`index [G, M]` and `position [C]` (see `group_layout`) for the current `group_of`, recomputed only when it
        changes (binding, loading a checkpoint, moving devices). Made outside inference mode, so a layout cached
        during evaluation can index tensors that need gradients later."""
        key = (self.group_of.data_ptr(), self.group_of._version, str(self.group_of.device))
        if self._layout is None or key != self._layout_key:
            with torch.inference_mode(False), torch.no_grad():
                index, position = group_layout(self.group_of.cpu().numpy(), self.num_groups)
                device = self.group_of.device
                self._layout = (torch.from_numpy(index).to(device), torch.from_numpy(position).to(device))
            self._layout_key = key
        return self._layout

    def gate_logits(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Gate logits `[B, C, E]` from the backbone `features` and the decoded label features `labels [B, C, d]`."""
        batch = labels.shape[0]
        if self.gate_input == "learned":
            return self.gate_logits_.unsqueeze(0).expand(batch, -1, -1)
        if self.gate_input == "query":
            static = torch.einsum("cd,ced->ce", self.query_embed.weight, self.gate_weight) + self.gate_bias
            return static.unsqueeze(0).expand(batch, -1, -1)
        d = self.hidden_dim
        logits = self.gate_bias.unsqueeze(0)
        if self.gate_input in ("image", "image+label"):
            assert self.image_norm is not None
            image = self.image_norm(self.input_proj(as_tokens(features).mean(dim=1)))  # [B, d]
            logits = logits + torch.einsum("bd,ced->bce", image, self.gate_weight[..., :d])
        if self.gate_input in ("label", "image+label"):
            logits = logits + torch.einsum("bcd,ced->bce", labels, self.gate_weight[..., -d:])
        return logits

    def expert_outputs(self, labels: torch.Tensor) -> torch.Tensor:
        """Every slot's expert applied to each label feature: `[B, C, E, d]` (specific slots first, then shared)."""
        parts = []
        if self.specific is not None:
            index, position = self.group_layout()
            per_group = self.specific(labels[:, index])  # [B, G, M, T, d]
            parts.append(per_group.flatten(1, 2)[:, position])
        if self.shared is not None:
            parts.append(self.shared(labels.unsqueeze(1)).squeeze(1))  # [B, C, S, d]
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]

    def _forward(self, features: torch.Tensor, *, need_weights: bool = False) -> dict[str, torch.Tensor]:
        labels, attention = self.decode(features, need_weights=need_weights)
        weights, probs = route(self.gate_logits(features, labels), routing=self.routing, top_k=self.top_k,
                               temperature=self.temperature)
        mixed = torch.einsum("bce,bced->bcd", weights, self.expert_outputs(labels))
        out = {"logits": self.fc(labels + mixed if self.residual else mixed), "gates": weights, "probs": probs}
        if attention is not None:
            out["attention"] = attention
        return out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self._forward(features)["logits"]

    def forward_train(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self._forward(features)
        if self.balance_weight <= 0:
            return out["logits"], {}
        loss = load_balancing_loss(out["probs"], out["gates"], kind=self.balance)
        return out["logits"], {"load_balance": self.balance_weight * loss}

    def forward_aux(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self._forward(features, need_weights=True)
        query_of_class = torch.arange(self.num_classes, device=out["logits"].device)
        return out["logits"], {"gates": out["gates"], "attention": attention_maps(out["attention"], features),
                               "query_of_class": query_of_class}


@HEADS.register("moe_static")
class StaticMoEHead(MixtureOfExpertsHead):
    """HSQ-style (unofficial): per-label gates that never see the image — `gate_input` `"query"` (default, from the
    label's learned query embedding) or `"learned"` (a free logit vector per label). Other arguments: see
    `MixtureOfExpertsHead`."""

    gate_inputs = STATIC_GATES

    def __init__(self, in_features: int, num_classes: int, *, gate_input: str = "query", **kwargs: Any) -> None:
        super().__init__(in_features, num_classes, gate_input=gate_input, **kwargs)


@HEADS.register("moe_dynamic")
class DynamicMoEHead(MixtureOfExpertsHead):
    """DR-MoE (unofficial): per-label gates from the image — `gate_input` `"image+label"` (default: pooled image
    feature with `q_c`), `"image"`, or `"label"` (`q_c` alone, HSQ's literal formula) — with load balancing on by
    default (`balance_weight=0.01`). Other arguments: see `MixtureOfExpertsHead`."""

    gate_inputs = DYNAMIC_GATES

    def __init__(self, in_features: int, num_classes: int, *, gate_input: str = "image+label",
                 balance_weight: float = 0.01, **kwargs: Any) -> None:
        super().__init__(in_features, num_classes, gate_input=gate_input, balance_weight=balance_weight, **kwargs)
